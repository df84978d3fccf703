"""Generators over tokenizer latents; each family registers itself under its `name`."""

from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.axial import AxialARGenerator, AxialConfig
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.generators.hierarchical import HierarchicalConfig, HierarchicalGenerator
from latentforge.generators.mar import MARConfig, MARGenerator
from latentforge.generators.masked import MaskedConfig, MaskedGenerator

__all__ = ["ARConfig", "ARGenerator", "AxialARGenerator", "AxialConfig", "DiTConfig", "DiTGenerator", "Generator",
           "GeneratorConfig", "HierarchicalConfig", "HierarchicalGenerator", "MARConfig", "MARGenerator",
           "MaskedConfig", "MaskedGenerator"]
