"""Bottlenecks between encoder and decoder. One file each, one interface:
`forward(z [B, *grid, C]) -> Quantized(z_q, codes, losses, stats)`; a recipe picks one by name."""

from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig, codebook_stats, usage_stats
from latentforge.quantize.fsq import FSQ, FSQConfig
from latentforge.quantize.gaussian import GaussianBottleneck, GaussianConfig
from latentforge.quantize.grouped_vq import GroupedVQ, GroupedVQConfig
from latentforge.quantize.gumbel import GumbelConfig, GumbelQuantizer
from latentforge.quantize.lfq import LFQ, LFQConfig
from latentforge.quantize.rvq import ResidualVQ, RVQConfig
from latentforge.quantize.topk import TopKBottleneck, TopKConfig
from latentforge.quantize.vq import VectorQuantizer, VQConfig

__all__ = [
    "Quantized", "Quantizer", "QuantizerConfig", "codebook_stats", "usage_stats",
    "VectorQuantizer", "VQConfig", "ResidualVQ", "RVQConfig", "GroupedVQ", "GroupedVQConfig",
    "FSQ", "FSQConfig", "LFQ", "LFQConfig",
    "GumbelQuantizer", "GumbelConfig", "GaussianBottleneck", "GaussianConfig", "TopKBottleneck", "TopKConfig",
]
