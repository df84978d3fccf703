"""Generators over tokenizer latents; each family registers itself under its `name`.

A family file composes shared pieces: base.py (the contract, the sampling template, latent
statistics), guidance.py (classifier-free guidance batched once), heads.py (code cross-entropy,
per-token diffusion), samplers.py (causal decoding with a KV cache), masking.py (the masking
schedule of MaskGIT and MAR), noise.py (flow matching and DDPM with their ODE / DDIM samplers),
sampling.py (drawing a token from logits).
"""

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
