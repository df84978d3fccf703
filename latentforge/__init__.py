"""latentforge: transformer-based latent generative models.

Two stages shared by every model in the library:
  1. a tokenizer (autoencoder) turns data into a small grid of latents,
  2. a generator (transformer) learns the distribution of those latents,
and the tokenizer's decoder turns sampled latents back into data.
"""

from latentforge.serialization import from_pretrained, save_pretrained

__version__ = "0.1.0"
__all__ = ["from_pretrained", "save_pretrained", "__version__"]
