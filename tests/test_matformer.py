"""MatFormer (P25): nested MLP slices, per-layer widths, extraction, and joint training of every width."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import randomize

from latentforge import from_pretrained, save_pretrained
from latentforge.config import identity
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.heads import code_nll
from latentforge.nn.matformer import extract, get_widths, nested_mlps, nested_units, set_widths, use_widths
from latentforge.nn.transformer import MLP, Transformer

NESTED = (0.25, 0.5, 1.0)


def test_width_m_is_the_mlp_of_the_first_m_hidden_units():
    torch.manual_seed(0)
    mlp = MLP(8, 16, NESTED)
    assert mlp.units == (4, 8, 16) and mlp.width == 16
    x = torch.randn(3, 5, 8)
    full = mlp(x)
    W1, b1, W2, b2 = mlp.fc.weight, mlp.fc.bias, mlp.proj.weight, mlp.proj.bias
    for f, m in zip(NESTED, mlp.units):
        set_widths(mlp, f)
        hand = F.gelu(x @ W1[:m].T + b1[:m], approximate="tanh") @ W2[:, :m].T + b2  # built by hand
        assert torch.allclose(mlp(x), hand, atol=1e-6)
    set_widths(mlp, 1.0)
    assert torch.equal(mlp(x), full)  # full width is the plain MLP, bit for bit


def test_gradient_reaches_only_the_first_m_units():
    torch.manual_seed(0)
    mlp = MLP(8, 16, NESTED)
    set_widths(mlp, 0.25)
    mlp(torch.randn(4, 8)).square().sum().backward()
    assert mlp.fc.weight.grad[:4].abs().sum() > 0 and mlp.fc.bias.grad[:4].abs().sum() > 0
    assert (mlp.fc.weight.grad[4:] == 0).all() and (mlp.fc.bias.grad[4:] == 0).all()
    assert mlp.proj.weight.grad[:, :4].abs().sum() > 0 and (mlp.proj.weight.grad[:, 4:] == 0).all()
    assert mlp.proj.bias.grad.abs().sum() > 0  # the output bias belongs to every width


def test_mix_and_match_widths_and_extraction_are_exact():
    torch.manual_seed(0)
    net = randomize(Transformer(32, depth=3, heads=2, nested_widths=NESTED))
    x = torch.randn(2, 7, 32)
    full = net(x, causal=True)
    with use_widths(net, [1.0, 0.5, 0.25]):  # Mix'n'Match: one width per layer
        assert get_widths(net) == [1.0, 0.5, 0.25]
        mixed = net(x, causal=True)
        small = extract(net)
    assert get_widths(net) == [1.0, 1.0, 1.0] and torch.equal(net(x, causal=True), full)  # restored
    assert not torch.allclose(mixed, full, atol=1e-3)
    # the extracted model: plain MLPs of 128, 64, 32 units, the same outputs, fewer parameters
    assert nested_mlps(small) == [] and [b.mlp.fc.out_features for b in small.blocks] == [128, 64, 32]
    assert torch.allclose(small(x, causal=True), mixed, atol=1e-6)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())


def test_width_errors():
    net = Transformer(32, depth=2, heads=2, nested_widths=NESTED)
    with pytest.raises(ValueError, match="not one of the nested widths"):
        set_widths(net, 0.3)
    with pytest.raises(ValueError, match="3 widths for 2 nested MLPs"):
        set_widths(net, [1.0, 0.5, 0.25])
    with pytest.raises(ValueError, match="no nested MLP"):
        set_widths(Transformer(32, depth=2, heads=2), 0.5)
    with pytest.raises(ValueError, match="ending with 1.0"):
        nested_units(16, (0.25, 0.5))
    with pytest.raises(ValueError, match="at least one unit"):
        nested_units(16, (0.01, 1.0))
    with pytest.raises(ValueError, match="ending with 1.0"):
        ARConfig(nested_widths=(0.5, 0.25, 1.0))


def _nested_ar(**changes) -> ARGenerator:
    return ARGenerator(ARConfig(grid=(4, 4), vocab_size=16, dim=32, depth=2, heads=2, nested_widths=NESTED, **changes))


def test_ar_submodel_equals_the_nested_model_at_its_width(tmp_path):
    torch.manual_seed(0)
    model = randomize(_nested_ar())
    codes = torch.randint(16, (3, 16))
    with use_widths(model.transformer, 0.5):
        nested = model.logits(codes, None)
    half = model.submodel(0.5)
    assert half.config.mlp_ratio == 2.0 and half.config.nested_widths == ()
    assert torch.allclose(half.logits(codes, None), nested, atol=1e-6)
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in model.parameters())
    save_pretrained(half, tmp_path / "half")  # a plain model: saves and loads as any other
    assert torch.allclose(from_pretrained(tmp_path / "half").logits(codes, None), nested, atol=1e-6)


def test_nested_widths_is_added_later_and_the_loss_trains_every_width():
    plain = ARConfig(grid=(4, 4), vocab_size=16, dim=32, depth=2, heads=2)
    assert "nested_widths" not in identity(plain)  # old runs keep their fingerprints
    assert identity(dataclasses.replace(plain, nested_widths=[0.5, 1]))["nested_widths"] == [0.5, 1.0]
    model = randomize(_nested_ar())  # randomize: the zero-initialised head would block every gradient
    out = model.loss(torch.randint(16, (2, 4, 4)))
    assert set(out) >= {"loss", "nll_width_0.25", "nll_width_0.5", "nll_width_1"}
    out["loss"].backward()
    # the units only the full width uses get gradients too: every width was run
    assert model.transformer.blocks[0].mlp.fc.weight.grad[64:].abs().sum() > 0


def _train(model: ARGenerator, patterns: torch.Tensor, steps: int, full_only: bool = False) -> None:
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    model.train()
    for _ in range(steps):
        z = patterns.repeat(4, 1, 1)
        # full_only: the plain objective, the nested MLPs run at full width only
        loss = code_nll(model.logits(model.flat_codes(z), None), model.flat_codes(z)) if full_only else model.loss(z)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_tiny_nested_model_learns_at_every_width():
    """Two fixed 4x4 patterns of 8 codes (floor log(2)/16 = 0.043 nats/token): trained with nesting,
    every width's eval loss falls below 0.15, Mix'n'Match too; the same model trained at full width
    only is worse at half width than the nested one (its first half of the units was never a model)."""
    torch.manual_seed(0)
    a = torch.randint(8, (1, 4, 4))
    patterns = torch.cat([a, (a + torch.randint(1, 8, a.shape)) % 8])
    config = ARConfig(grid=(4, 4), vocab_size=8, dim=32, depth=2, heads=2, nested_widths=NESTED)
    torch.manual_seed(1)
    nested = ARGenerator(config)
    torch.manual_seed(1)
    full_only = ARGenerator(config)
    _train(nested, patterns, 150)
    _train(full_only, patterns, 150, full_only=True)
    z = patterns.repeat(8, 1, 1)
    terms = nested.loss(z)  # runs every width: one term each
    for f in NESTED:
        assert terms[f"nll_width_{f:g}"].item() < 0.15, terms
    with use_widths(nested.transformer, [0.25, 1.0]):
        codes = nested.flat_codes(z)
        assert code_nll(nested.logits(codes, None), codes).item() < 0.15
    with use_widths(full_only.transformer, 0.5):
        codes = full_only.flat_codes(z)
        unnested_half = code_nll(full_only.logits(codes, None), codes).item()
    assert unnested_half > terms["nll_width_0.5"].item() + 0.1, (unnested_half, terms)
