"""Transformers that learn the distribution of latents: one file per family."""

from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.hierarchical import HierarchicalConfig, HierarchicalGenerator

__all__ = ["ARConfig", "ARGenerator", "Generator", "GeneratorConfig", "HierarchicalConfig", "HierarchicalGenerator"]
