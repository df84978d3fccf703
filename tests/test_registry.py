"""Contracts that follow the registries: every registered quantizer, tokenizer, conditioner, data
set and probe is built from its `tiny()` preset and checked here, so a new entry is tested the
day it is registered (generators: tests/test_generator_contract.py).

For each model: gradients reach every parameter, save -> load gives identical outputs, outputs
have the promised shapes and dtypes. For each data set: splits are deterministic and hold the
modality's layout, captions and conditions line up, and a condition a user writes parses.
"""

from __future__ import annotations

import ast
import dataclasses
import json

import numpy as np
import pytest
import torch
from test_import_layers import PACKAGE

from latentforge import registry
from latentforge.data.base import build_dataset
from latentforge.pipeline import condition_tensors
from latentforge.serialization import from_pretrained, save_pretrained
from latentforge.tokenizers.base import check_latents

KINDS = ("quantizer", "tokenizer", "conditioner", "dataset", "probe", "generator")


def entries(kind: str) -> list[str]:
    return registry.names(kind)


def build(kind: str, name: str):
    config_cls, model_cls = registry.lookup(kind, name)
    torch.manual_seed(0)
    return model_cls(config_cls.tiny())


def missing_grads(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> list[str]:
    return [n for n, p in model.named_parameters()
            if p.requires_grad and not n.startswith(skip) and (p.grad is None or not torch.isfinite(p.grad).all())]


# ------------------------------------------------------------------------------- the tables

def test_every_module_that_registers_is_listed():
    """registry.MODULES is the explicit list a lookup imports: a file that registers and is not
    listed would never be found by name."""
    listed = {m for modules in registry.MODULES.values() for m in modules}
    registering = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register":
                registering.add(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    assert registering - listed == set(), "registered but missing from registry.MODULES"
    assert listed - registering == set(), "listed in registry.MODULES but registers nothing"


@pytest.mark.parametrize("kind", KINDS)
def test_every_registered_config_has_a_tiny_preset(kind):
    for name in entries(kind):
        config_cls = registry.lookup(kind, name)[0]
        assert callable(getattr(config_cls, "tiny", None)), f"{kind} {name!r}: {config_cls.__name__} has no tiny()"
        cfg = config_cls.tiny()
        assert isinstance(cfg, config_cls) and cfg.name == name


def test_lookup_loads_only_the_kind_it_is_asked_for():
    """Parsing a config that names a quantizer does not import the generators (a fresh process)."""
    import subprocess
    import sys

    code = ("import sys; from latentforge import registry; registry.lookup('quantizer', 'vq'); "
            "print(any(m.startswith('latentforge.generators') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------- quantizers

@pytest.mark.parametrize("name", entries("quantizer"))
def test_quantizer_contract(name, tmp_path):
    q = build("quantizer", name).train()
    # [B, *grid, dim] channels-last: a 4 x 5 grid, or the grid a multi-scale quantizer's scales end on
    grid = (4, 5) if not hasattr(q.config, "scales") else (q.config.scales[-1],) * q.config.rank
    z = torch.randn(3, *grid, q.config.dim, requires_grad=True)
    out = q(z)
    assert out.z_q.shape[:-1] == (3, *grid)
    loss = out.z_q.square().mean() + sum(out.losses.values(), torch.zeros(()))
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all(), "no gradient reaches the encoder output"
    assert not missing_grads(q), f"parameters without a gradient: {missing_grads(q)}"
    q.eval()
    with torch.no_grad():
        first = q(z.detach())
    if q.discrete:
        code_grid = q.code_grid(grid)
        want = (3, *code_grid) if q.depth == 1 else (3, *code_grid, q.depth)
        assert first.codes.dtype == torch.long and tuple(first.codes.shape) == want
        assert int(first.codes.min()) >= 0 and int(first.codes.max()) < q.vocab_size
        assert q.lookup(first.codes).shape == first.z_q.shape        # codes decode back to the latents' grid
    again = from_pretrained(save_pretrained(q, tmp_path / name))
    with torch.no_grad():
        second = again(z.detach())
        assert torch.equal(first.codes, second.codes) and torch.allclose(first.z_q, second.z_q)
        assert torch.allclose(q.lookup(first.codes), again.lookup(first.codes))


# ------------------------------------------------------------------------------- tokenizers

def tokenizer_input(tok) -> torch.Tensor:
    cfg = tok.config
    torch.manual_seed(1)
    if cfg.layout == "image":
        return torch.rand(2, cfg.in_channels, cfg.image_size, cfg.image_size) * 2 - 1
    if cfg.layout == "sequence":
        return torch.randn(2, cfg.seq_len, cfg.in_channels)
    if cfg.layout == "video":
        return torch.rand(2, cfg.in_channels, cfg.frames, cfg.image_size, cfg.image_size) * 2 - 1
    if cfg.layout == "audio":
        return torch.rand(2, cfg.seq_len, 1) * 2 - 1
    if cfg.layout == "points":
        return torch.rand(2, cfg.points, 3) * 2 - 1
    raise AssertionError(f"tokenizer {cfg.name!r}: no test input for layout {cfg.layout!r}; add one here")


# the split entries a tokenizer may read beside its examples (TokenizerConfig.batch_keys)
BATCH_EXTRAS = {"queries": lambda: torch.rand(2, 32, 3) * 2 - 1, "occupancy": lambda: torch.rand(2, 32) > 0.5}


@pytest.mark.parametrize("name", entries("tokenizer"))
def test_tokenizer_contract(name, tmp_path):
    tok = build("tokenizer", name).train()
    x = tokenizer_input(tok)
    missing = [k for k in type(tok.config).batch_keys if k not in BATCH_EXTRAS]
    assert not missing, f"tokenizer {name!r} reads {missing}: add test inputs to BATCH_EXTRAS"
    out = tok.loss({tok.config.layout: x, **{k: BATCH_EXTRAS[k]() for k in type(tok.config).batch_keys}})
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert not missing_grads(tok, skip=("discriminator",)), f"parameters without a gradient: {missing_grads(tok)}"
    tok.eval()
    with torch.no_grad():
        z = tok.encode(x)
        check_latents(tok.spec, z)                         # codes / latents fit the LatentSpec
        recon = tok.decode(z)
        assert recon.shape == x.shape and recon.dtype == x.dtype
        again = from_pretrained(save_pretrained(tok, tmp_path / name))
        assert torch.equal(again.encode(x), z) and torch.allclose(again.decode(z), recon)


# ------------------------------------------------------------------------------- conditioners

def feeding_dataset(conditioner: str):
    """A registered data set that feeds this conditioner (its natural one, or its captions)."""
    for name in entries("dataset"):
        if name == "imagefolder":
            continue  # conditions only when a user's folder has them
        data = build_dataset(registry.lookup("dataset", name)[0].tiny())
        if data.natural_conditioner == conditioner or (conditioner == "caption" and data.caption_key):
            return data
    raise AssertionError(f"no registered data set feeds conditioner {conditioner!r}")


# conditioners no data set feeds: their condition comes from another model (a cascade's first stage)
MODEL_CONDITIONS = {"latents": lambda cfg: {"low_latents": torch.randn(5, 6, cfg.channels)}}


@pytest.mark.parametrize("name", entries("conditioner"))
def test_conditioner_contract(name, tmp_path):
    cond = build("conditioner", name).train()
    if name in MODEL_CONDITIONS:
        cfg = cond.config
        batch = MODEL_CONDITIONS[name](cfg)
        n = len(next(iter(batch.values())))
    else:
        data = feeding_dataset(name)
        cfg = data.link_conditioner(cond.config)
        if name == "caption":
            from latentforge.conditioning.caption import build_vocab

            cfg = dataclasses.replace(cfg, vocab=build_vocab(data.training_captions()))

        class Holder(torch.nn.Module):       # condition_tensors reads the conditioner config of a generator
            def __init__(self):
                super().__init__()
                self.config = type("C", (), {"conditioner": cfg})()

        batch = condition_tensors(data, data.conditions(data.split("val")), Holder())
        n = len(data.examples(data.split("val")))
    torch.manual_seed(0)
    cond = type(cond)(cfg).train()
    ctx = cond(cond.select(batch), generator=torch.Generator().manual_seed(0))
    assert ctx.tokens.shape[0] == n and ctx.tokens.shape[-1] == cfg.dim and ctx.mask.shape == ctx.tokens.shape[:2]
    null = cond.null(n)
    loss = ctx.tokens.square().mean() + null.tokens.square().mean() + sum(ctx.losses.values(), torch.zeros(()))
    if ctx.spatial is not None:
        loss = loss + ctx.spatial.square().mean()
    loss.backward()
    assert not missing_grads(cond), f"parameters without a gradient: {missing_grads(cond)}"
    cond.eval()
    again = from_pretrained(save_pretrained(cond, tmp_path / name))
    with torch.no_grad():
        a = cond(cond.select(batch), generator=torch.Generator().manual_seed(3))
        b = again(again.select(batch), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)


# ------------------------------------------------------------------------------- data sets

@pytest.mark.parametrize("name", entries("dataset"))
def test_dataset_contract(name):
    data = build_dataset(registry.lookup("dataset", name)[0].tiny())
    first, second = data.split("val"), data.split("val")
    assert first.keys() == second.keys()
    for key in first:
        same = np.array_equal(first[key], second[key], equal_nan=first[key].dtype.kind == "f")
        assert same, f"{name}: split 'val' entry {key!r} is not deterministic"
    examples = data.examples(first)
    data.modality.check(examples, f"{name} val")
    if data.judge is not None:
        from latentforge.eval.judges import JUDGES

        assert data.judge in JUDGES, f"{name} names judge {data.judge!r}, which eval/judges.py does not define"
    n = len(examples)
    assert all(len(v) == n for v in first.values()), "every entry has one row per example"
    if data.conditions(first):
        assert len(data.captions(data.conditions(first))) == n
    if data.condition_keys:
        assert set(data.condition_keys) <= set(data.numeric(first)), "the condition entries are in the split"
    for head, (labels, classes) in data.probe_targets(first).items():
        assert labels.shape[0] == n and labels.min() >= 0 and labels.max() < classes, head
    # the model tensor and back gives the stored layout again
    back = data.modality.from_model(data.modality.to_model(examples))
    assert back.shape == examples.shape and back.dtype == examples.dtype
    assert np.allclose(back.astype(np.float64), examples.astype(np.float64), atol=1e-3)


@pytest.mark.parametrize("name", entries("dataset"))
def test_dataset_reads_the_conditions_a_user_writes(name):
    data = build_dataset(registry.lookup("dataset", name)[0].tiny())
    val = data.split("val")
    if "graphs" in val:
        raw = [json.loads(str(g)) for g in val["graphs"][:2]]
    elif data.class_names:
        raw = [{"class": data.class_names[-1]}, 0]
    else:
        with pytest.raises(ValueError, match="takes no condition|no class labels"):
            data.parse_conditions({"label": 0}, "c.json")
        return
    rows = data.parse_conditions(raw, "c.json")
    assert all(len(v) == 2 for v in rows.values())
    if "label" in rows:
        assert rows["label"].tolist() == [len(data.class_names) - 1, 0]
    with pytest.raises(ValueError, match="c.json"):
        data.parse_conditions([{"colour": "red"}] if "graphs" not in val else [{"objects": 3}], "c.json")


# ------------------------------------------------------------------------------- probes

def probe_batch(probe) -> tuple[dict, object]:
    """A training batch and the examples features() reads, for each registered probe."""
    cfg, g = probe.config, torch.Generator().manual_seed(0)
    if cfg.name == "cnn":
        images = torch.randint(0, 256, (4, cfg.size, cfg.size, 3), generator=g, dtype=torch.uint8)
        batch = {"image": images.permute(0, 3, 1, 2).float() / 127.5 - 1,
                 **{h: torch.randint(0, c, (4, s), generator=g) for h, s, c in zip(cfg.heads, cfg.slots, cfg.classes)}}
        return batch, images.numpy()
    if cfg.name == "motion":
        motion = torch.randn(4, 12, cfg.num_joints, 3, generator=g)
        return {"motion": motion, "label": torch.randint(0, cfg.num_classes, (4,), generator=g)}, motion
    if cfg.name == "vivit":
        clips = torch.randint(0, 256, (4, cfg.frames, cfg.size, cfg.size, 3), generator=g, dtype=torch.uint8)
        batch = {"video": clips.permute(0, 4, 1, 2, 3).float() / 127.5 - 1,
                 **{h: torch.randint(0, c, (4, s), generator=g) for h, s, c in zip(cfg.heads, cfg.slots, cfg.classes)}}
        return batch, clips.numpy()
    if cfg.name == "mert":
        audio = torch.rand(4, 2 * cfg.hop * 4, generator=g) * 2 - 1
        codes = torch.randint(0, cfg.code_vocab, (4, 8, cfg.code_levels), generator=g)
        return {"audio": audio, "codes": codes}, audio.numpy()
    if cfg.name == "point_mae":
        points = torch.rand(4, 4 * cfg.groups, 3, generator=g) * 2 - 1
        return {"points": points}, points.numpy()
    raise AssertionError(f"probe {cfg.name!r}: no test batch; add one here")


@pytest.mark.parametrize("name", entries("probe"))
def test_probe_contract(name, tmp_path):
    probe = build("probe", name).train()
    batch, examples = probe_batch(probe)
    out = probe.loss(batch)
    out["loss"].backward()
    assert not missing_grads(probe), f"parameters without a gradient: {missing_grads(probe)}"
    probe.eval()
    feats = probe.features(examples)
    assert feats.shape == (4, probe.config.feature_dim)
    again = from_pretrained(save_pretrained(probe, tmp_path / name))
    assert torch.allclose(again.features(examples), feats)
