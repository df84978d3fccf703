"""Autoencoders that turn data into latent grids and back."""

from latentforge.tokenizers.base import LatentSpec, Tokenizer, TokenizerConfig
from latentforge.tokenizers.conv_vq import ConvVQConfig, ConvVQTokenizer

__all__ = ["LatentSpec", "Tokenizer", "TokenizerConfig", "ConvVQConfig", "ConvVQTokenizer"]
