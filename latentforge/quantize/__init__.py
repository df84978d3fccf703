"""Bottlenecks between encoder and decoder. One file each, one interface:
`forward(z [B, *grid, C]) -> Quantized(z_q, codes, losses, stats)`."""

from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig, codebook_stats
from latentforge.quantize.vq import VectorQuantizer, VQConfig

__all__ = ["Quantized", "Quantizer", "QuantizerConfig", "codebook_stats", "VectorQuantizer", "VQConfig"]
