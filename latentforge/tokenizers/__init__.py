"""Autoencoders that turn data into latent grids and back."""

from latentforge.tokenizers.base import LatentSpec, Tokenizer, TokenizerConfig
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

__all__ = ["LatentSpec", "Tokenizer", "TokenizerConfig", "ConvConfig", "ConvTokenizer"]
