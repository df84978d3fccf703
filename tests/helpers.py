"""Small fixtures the generator tests share (imported as `from helpers import ...`)."""

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
