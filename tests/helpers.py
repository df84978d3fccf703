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
