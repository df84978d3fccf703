"""FIT (P23): sub-image grouping, group isolation of local layers, information flow through the
latents, chunk-causal latents, and a cross-group copy task that only the global layers can solve."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentforge.nn.fit import FIT, FITConfig, grid_to_groups, groups_to_grid, parse_layer_spec, sub_image_order


def tiny(layers: str, chunk_causal: bool = False) -> FIT:
    return FIT(FITConfig(dim=16, heads=2, groups=4, group_size=6, latents=2, latent_dim=24, latent_heads=2,
                         layers=layers, chunk_causal=chunk_causal)).eval()


def group_change(model: FIT, group: int) -> torch.Tensor:
    """Largest output change per group [t] when the tokens of `group` are perturbed."""
    cfg = model.cfg
    x = torch.randn(2, cfg.tokens, cfg.dim)
    y = x.clone()
    n = cfg.group_size
    y[:, group * n:(group + 1) * n] += torch.randn(2, n, cfg.dim)
    with torch.no_grad():
        diff = (model(x) - model(y)).abs()                              # [B, L, D]
    return diff.view(2, cfg.groups, n, cfg.dim).amax(dim=(0, 2, 3))    # [t]


def test_layer_spec():
    assert parse_layer_spec("(2)2(2)") == ((2, 2), (2, 0))
    assert parse_layer_spec("2(1)") == ((0, 2), (1, 0))
    for bad in ("(2)2", "", "(x)", "2 ("):
        with pytest.raises(ValueError):
            parse_layer_spec(bad)


def test_grid_groups_round_trip_and_contiguous_sub_images():
    H, W, gh, gw = 6, 8, 3, 2
    coords = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij"), -1)  # [H, W, 2]
    grid = coords[None].float()                                                              # [1, H, W, 2]
    tokens = grid_to_groups(grid, (gh, gw))                                                  # [1, L, 2]
    assert torch.equal(groups_to_grid(tokens, (H, W), (gh, gw)), grid)
    assert sorted(tokens[0].tolist()) == sorted(grid[0].reshape(-1, 2).tolist())  # a bijection
    for g, group in enumerate(tokens[0].view(-1, gh * gw, 2)):
        row, col = divmod(g, W // gw)
        assert set(group[:, 0].long().tolist()) == set(range(row * gh, (row + 1) * gh))
        assert set(group[:, 1].long().tolist()) == set(range(col * gw, (col + 1) * gw))
    order = sub_image_order((H, W), (gh, gw))
    assert torch.equal(grid.view(1, H * W, 2)[:, order], tokens)


def test_local_layers_never_mix_groups():
    change = group_change(tiny("(2)(1)"), group=1)
    assert change[1] > 1e-2
    assert change[[0, 2, 3]].max() < 1e-6


def test_global_layers_carry_information_between_groups():
    change = group_change(tiny("(1)1(1)"), group=0)
    assert change.min() > 1e-4


def test_chunk_causal_latents():
    change = group_change(tiny("(1)2(1)", chunk_causal=True), group=2)
    assert change[:2].max() < 1e-6           # earlier groups never see group 2
    assert change[2:].min() > 1e-4           # group 2 itself and the later group do


def copy_task_loss(layers: str, steps: int = 150, t: int = 4, lr: float = 3e-3) -> float:
    """Each of the first t/2 groups is filled with one random symbol, the others are blank and must
    repeat it (group g + t/2 copies group g's symbol): cross-entropy on the blank half. Positions are
    within-group, shared by all groups (as in the paper): only the latents tell groups apart."""
    torch.manual_seed(0)
    n, vocab, dim = 4, 4, 32
    body = FIT(FITConfig(dim=dim, heads=2, groups=t, group_size=n, latents=4, latent_dim=32, latent_heads=2,
                         layers=layers))
    embed, positions, head = nn.Embedding(vocab + 1, dim), nn.Parameter(torch.randn(n, dim) * 0.5), nn.Linear(dim, vocab)
    params = [*body.parameters(), *embed.parameters(), positions, *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    half = t * n // 2
    for _ in range(steps):
        symbols = torch.randint(vocab, (32, t // 2)).repeat_interleave(n, dim=1)  # [B, L/2]
        tokens = torch.cat([symbols, torch.full_like(symbols, vocab)], 1)  # blank = symbol `vocab`
        logits = head(body(embed(tokens) + positions.repeat(t, 1)))[:, half:]          # [B, L/2, V]
        loss = F.cross_entropy(logits.reshape(-1, vocab), symbols.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return loss.item()


def test_fit_learns_cross_group_copy_and_local_only_cannot():
    chance = math.log(4)
    assert copy_task_loss("(1)2(1)") < 0.1 * chance
    assert copy_task_loss("(1)(1)") > 0.9 * chance
