"""Transformers that learn the distribution of latents: one file per family."""

from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.base import Generator, GeneratorConfig

__all__ = ["Generator", "GeneratorConfig", "ARConfig", "ARGenerator"]
