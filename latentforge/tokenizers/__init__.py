"""Autoencoders that turn data into latent grids and back."""

from latentforge.tokenizers.base import LatentSpec, Tokenizer, TokenizerConfig
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer
from latentforge.tokenizers.conv1d import Conv1dConfig, Conv1dTokenizer
from latentforge.tokenizers.vit import ViTConfig, ViTTokenizer

__all__ = ["LatentSpec", "Tokenizer", "TokenizerConfig", "ConvConfig", "ConvTokenizer",
           "Conv1dConfig", "Conv1dTokenizer", "ViTConfig", "ViTTokenizer"]
