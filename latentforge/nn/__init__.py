"""Building blocks shared by every tokenizer and generator."""

from latentforge.nn.attention import Attention, KVCache
from latentforge.nn.conv import Downsample, ResBlock, Upsample
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import MLP, Transformer, TransformerBlock, init_transformer_weights

__all__ = [
    "Attention", "KVCache", "ResBlock", "Downsample", "Upsample", "GridPositionEmbedding",
    "MLP", "Transformer", "TransformerBlock", "init_transformer_weights",
]
