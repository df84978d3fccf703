"""Small fixtures the generator tests share (imported as `from helpers import ...`)."""

import contextlib
import sys
import types
from collections.abc import Iterator

import numpy as np
import torch

from latentforge.data.shapes import ShapesConfig, encode_graphs, sample_scene


def graphs(n: int, split: str = "train") -> dict[str, torch.Tensor]:
    """The first n Shapes scene graphs of a split, encoded for a conditioner with 3 object slots."""
    return encode_graphs([sample_scene(ShapesConfig(), split, i) for i in range(n)], 3)


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter: zero-initialised heads, gates and adaLN outputs would otherwise make
    a fresh model trivial (uniform logits, zero velocity), hiding every dependence a test probes."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def build_generator(name: str, **changes):
    """The registered generator `name` built from its config's tiny() preset with `changes` applied."""
    import dataclasses

    from latentforge import registry

    config_cls, model_cls = registry.lookup("generator", name)
    return model_cls(dataclasses.replace(config_cls.tiny(), **changes))


def latents_for(config, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random latents a generator config models, [n, *grid] codes, [n, *grid, levels] residual codes
    or [n, *grid, channels] vectors (read off the config, as a tokenizer's LatentSpec would give them)."""
    grid = tuple(config.grid)
    if hasattr(config, "channels"):
        return torch.randn(n, *grid, config.channels, generator=generator)
    levels = getattr(config, "levels", 1)
    return torch.randint(config.vocab_size, (n, *grid) + ((levels,) if levels > 1 else ()), generator=generator)


def few_steps(model) -> dict:
    """Sampling options that keep a tiny model's sampling fast: a few steps where the family takes steps."""
    options = model.sampling_options()
    return {k: 3 for k in ("steps", "head_steps") if k in options}


def pooled_shapes(n: int, split: str, grid: int = 4) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """n Shapes scenes: their encoded graphs (3 object slots, with centres) and their images
    average-pooled to a grid x grid x RGB array in [-1, 1] — a stand-in for a tokenizer's latents that
    keeps every object's colour and rough shape, and costs nothing to "train"."""
    from latentforge.data.shapes import sample_and_render

    scenes, images = sample_and_render(ShapesConfig(), split, range(n), workers=1)
    x = torch.as_tensor(images).float().div(127.5).sub(1)                    # [n, 32, 32, 3]
    side = x.shape[1] // grid
    pooled = x.view(n, grid, side, grid, side, 3).mean((2, 4))               # [n, grid, grid, 3]
    return {k: torch.as_tensor(v) for k, v in encode_graphs(scenes, 3).items()}, pooled


def quantized(pooled: torch.Tensor, levels: int = 4, lo: float = -1.0, hi: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform colour quantisation of [..., 3] values: code r * L^2 + g * L + b (L^3 codes) and each
    value's bin centre (what level 0 of a residual code reconstructs)."""
    index = ((pooled - lo) / (hi - lo) * levels).long().clamp(0, levels - 1)
    centre = lo + (index.float() + 0.5) * (hi - lo) / levels
    return (index * torch.tensor([levels * levels, levels, 1])).sum(-1), centre


def latents_of(config, pooled: torch.Tensor) -> torch.Tensor:
    """The latents a generator config models, made from pooled images [n, g, g, 3]: the values
    themselves (continuous families, channels 3), 64 colour codes, or 2 levels of 64 residual codes."""
    if getattr(config, "latents", "discrete") == "continuous":
        return pooled
    coarse, centre = quantized(pooled)
    if not getattr(config, "residual", False):
        return coarse
    fine, _ = quantized(pooled - centre, lo=-0.25, hi=0.25)
    return torch.stack([coarse, fine], -1)


def entropy_reference(logits: np.ndarray) -> tuple[float, float]:
    """NumPy reference of the entropy penalty's two terms for soft assignments softmax(logits [N, K])
    (float64): the mean per-vector entropy and the entropy of the batch-mean assignment."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mean_p = p.mean(0)
    return float(-(p * np.log(p)).sum(1).mean()), float(-(mean_p * np.log(mean_p)).sum())


TORCHVISION_MODULES = ("torchvision", "torchvision.models", "torchvision.models.inception", "torchvision.datasets",
                       "torchvision.transforms", "torchvision.transforms.functional")


@contextlib.contextmanager
def torchvision_stand_in() -> Iterator[types.ModuleType]:
    """Empty `torchvision` modules in sys.modules while a reference library is imported, removed after.

    torchvision from PyPI cannot import beside the CPU torch, yet torch-fidelity, clean-fid, lpips
    (and torchmetrics' FID, through torch-fidelity) import it at module level for parts the tests
    never use (data sets, VGG downloads). The stand-in lets them import; a test that needs one of
    torchvision's pieces puts the piece on the yielded module, so what is compared stays visible.
    """
    stand_in = {name: types.ModuleType(name) for name in TORCHVISION_MODULES}
    tv = stand_in["torchvision"]
    tv.__version__ = "0.0"
    tv.models, tv.datasets, tv.transforms = (stand_in[f"torchvision.{k}"] for k in ("models", "datasets", "transforms"))
    tv.models.inception = stand_in["torchvision.models.inception"]
    tv.transforms.functional = stand_in["torchvision.transforms.functional"]
    for name in ("CIFAR10", "CIFAR100", "STL10"):  # subclassed by torch-fidelity's data sets
        setattr(tv.datasets, name, type(name, (), {}))
    saved = {k: sys.modules.get(k) for k in stand_in}
    sys.modules.update(stand_in)
    try:
        yield tv
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
