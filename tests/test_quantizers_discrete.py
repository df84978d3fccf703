"""FSQ, LFQ, residual VQ, grouped VQ and the Gumbel-softmax bottleneck: known answers, invariants,
contracts (grouped VQ's own checks: test_vq_defences.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import entropy_reference

from latentforge.config import ConfigError, from_dict, to_dict
from latentforge.quantize.base import QuantizerConfig
from latentforge.quantize.fsq import FSQ, FSQConfig
from latentforge.quantize.grouped_vq import GroupedVQConfig
from latentforge.quantize.gumbel import GumbelConfig, GumbelQuantizer
from latentforge.quantize.lfq import LFQ, LFQConfig
from latentforge.quantize.rvq import ResidualVQ, RVQConfig
from latentforge.registry import lookup
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

# Tiny configs, one per bottleneck, with dim != the quantized width so projections are exercised.
TINY = {
    "fsq": FSQConfig(dim=6, levels=(5, 4, 3)),
    "lfq": LFQConfig(dim=6, bits=4, temperature=0.5),
    "rvq": RVQConfig(dim=6, codebook_size=8, depth=3),
    "gumbel": GumbelConfig(dim=6, codebook_size=8, anneal_steps=10),
    "grouped_vq": GroupedVQConfig(dim=6, codebook_size=8, groups=3),
}
GRIDS = [(5,), (3, 4), (2, 3, 2)]


def build(name):
    config_cls, model_cls = lookup("quantizer", name)
    cfg = TINY[name]
    assert isinstance(cfg, config_cls)
    return model_cls(cfg)


# ----------------------------------------------------------------------------------------------
# The shared contract
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", sorted(TINY))
def test_contract_shapes_lookup_stats_and_gradients(name, grid):
    q = build(name).train()
    z = torch.randn(2, *grid, 6, requires_grad=True)
    out = q(z)
    assert out.z_q.shape == z.shape and out.z_q.dtype == z.dtype
    code_shape = (2, *grid, q.depth) if q.depth > 1 else (2, *grid)
    assert out.codes.shape == code_shape and out.codes.dtype == torch.long
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < q.vocab_size
    assert {"usage", "perplexity"} <= set(out.stats)
    assert all(v.numel() == 1 and not v.requires_grad for v in out.stats.values())
    assert all(v.numel() == 1 and v.dtype == torch.float32 for v in out.losses.values())
    loss = (out.z_q * torch.randn_like(out.z_q)).sum() + sum(out.losses.values())
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is not None for p in q.parameters()), "every parameter gets a gradient"
    # In eval the decoder input is exactly what lookup rebuilds from the codes.
    q.eval()
    with torch.no_grad():
        out = q(z)
        assert torch.allclose(q.lookup(out.codes), out.z_q, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_bf16_autocast_keeps_quantization_in_fp32(name):
    q = build(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(torch.randn(2, 4, 4, 6))
    assert all(v.dtype == torch.float32 for v in out.losses.values())
    assert all(v.dtype == torch.float32 for v in out.stats.values())
    assert torch.isfinite(out.z_q.float()).all()


@pytest.mark.parametrize("name", sorted(TINY))
def test_conv_tokenizer_takes_each_bottleneck(name):
    cfg = ConvConfig(image_size=16, channels=(8, 16), quantizer=TINY[name])
    tok = ConvTokenizer(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert tok.spec.vocab_size == tok.quantizer.vocab_size and tok.spec.depth == tok.quantizer.depth
    out = tok.loss({"image": x})
    out["loss"].backward()
    assert all(p.grad is not None for p in tok.parameters())
    tok.eval()
    codes = tok.encode(x)
    assert tok.decode(codes).shape == x.shape


@pytest.mark.parametrize("name", sorted(TINY))
def test_save_load_gives_identical_outputs(name, tmp_path):
    from latentforge.serialization import from_pretrained, save_pretrained

    q = build(name).train()
    z = torch.randn(2, 4, 6)
    for _ in range(2):
        q(z)  # move data-dependent state (k-means init, usage, the Gumbel step) off its initial value
    save_pretrained(q.eval(), tmp_path / name)
    loaded = from_pretrained(tmp_path / name)
    a, b = q(z), loaded(z)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.z_q, b.z_q)
    if name == "gumbel":
        assert int(loaded.step) == 2


def test_configs_from_dicts_round_trip_and_name_bad_values():
    cfg = from_dict(QuantizerConfig, {"name": "fsq", "dim": 4, "levels": [8, 5]})
    assert isinstance(cfg, FSQConfig) and cfg.levels == (8, 5)
    for c in TINY.values():
        assert from_dict(QuantizerConfig, to_dict(c)) == c
    with pytest.raises(ConfigError, match="depht"):
        from_dict(QuantizerConfig, {"name": "rvq", "depht": 3})
    with pytest.raises(ConfigError, match="bits"):
        from_dict(QuantizerConfig, {"name": "lfq", "bits": 20})
    with pytest.raises(ValueError, match=r"levels .*\(8, 1\)"):
        FSQConfig(levels=(8, 1))
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        RVQConfig(depth=0)
    with pytest.raises(ValueError, match="l2_normalize"):
        RVQConfig(l2_normalize=True)
    with pytest.raises(ValueError, match="tau_end"):
        GumbelConfig(tau_end=0.0)
    with pytest.raises(ValueError, match="temperature"):
        LFQConfig(temperature=0.0)


# ----------------------------------------------------------------------------------------------
# FSQ
# ----------------------------------------------------------------------------------------------


def _grid_points(level: int) -> torch.Tensor:
    half = level // 2
    return torch.arange(-half, level - half).float() / half


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (3, 4, 2), (2,), (7, 6)])
def test_fsq_index_code_round_trip_over_every_index(levels):
    fsq = FSQ(FSQConfig(dim=len(levels), levels=levels))
    assert fsq.vocab_size == math.prod(levels)
    index = torch.arange(fsq.vocab_size)
    codes = fsq.index_to_codes(index)  # [V, n]
    assert torch.equal(fsq.codes_to_index(codes), index)
    assert torch.unique(codes, dim=0).shape[0] == fsq.vocab_size  # a bijection onto the grid
    for i, level in enumerate(levels):
        assert set(codes[:, i].tolist()) == set(_grid_points(level).tolist())
    # mixed radix, channel 0 least significant: index 1 moves channel 0 one level up
    assert torch.equal(codes[1] - codes[0] != 0, torch.tensor([True] + [False] * (len(levels) - 1)))


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (3, 4, 2)])
def test_fsq_quantized_values_are_grid_points_and_codes_match(levels):
    fsq = FSQ(FSQConfig(dim=len(levels), levels=levels)).train()
    z = 3 * torch.randn(4, 16, 16, len(levels))
    out = fsq(z)
    for i, level in enumerate(levels):
        # every value is one of the L points, and all L are reached (the ends included)
        assert set(out.z_q[..., i].unique().tolist()) == set(_grid_points(level).tolist())
    assert torch.equal(out.codes, fsq.codes_to_index(out.z_q))
    assert out.losses == {}
    # z = 0 sits on the grid point 0 for even L too (the half-step shift of the tanh)
    assert torch.allclose(fsq.bound(torch.zeros(len(levels))), torch.zeros(len(levels)), atol=1e-6)


def test_fsq_straight_through_gradient_is_the_bound_derivative():
    levels = (8, 5, 4)
    fsq = FSQ(FSQConfig(dim=3, levels=levels))
    z = torch.randn(2, 7, 3, requires_grad=True)
    w = torch.randn(2, 7, 3)
    (fsq(z).z_q * w).sum().backward()
    lv = torch.tensor(levels).float()
    half = (lv - 1) * (1 + 1e-3) / 2
    shift = torch.atanh(torch.where(lv % 2 == 0, 0.5, 0.0) / half)
    expected = w * (1 - torch.tanh(z.detach() + shift) ** 2) * half / (lv // 2)
    assert torch.allclose(z.grad, expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# LFQ
# ----------------------------------------------------------------------------------------------


def test_lfq_index_bits_round_trip_and_known_index():
    lfq = LFQ(LFQConfig(dim=5, bits=5))
    index = torch.arange(32)
    codes = lfq.index_to_codes(index)  # [32, 5] of ±1
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(lfq.codes_to_index(codes), index)
    assert int(lfq.codes_to_index(torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0]))) == 0b00101


def test_lfq_signs_straight_through_and_ties():
    lfq = LFQ(LFQConfig(dim=3, bits=3)).eval()
    z = torch.tensor([[[0.3, -2.0, 0.0], [-0.1, 0.5, 4.0]]], requires_grad=True)  # [1, 2, 3]
    out = lfq(z)
    assert torch.equal(out.z_q, torch.tensor([[[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]]]))
    assert out.codes.tolist() == [[0b101, 0b110]]
    w = torch.randn_like(z)
    (out.z_q * w).sum().backward()
    assert torch.allclose(z.grad, w)
    assert torch.allclose(out.losses["commitment"], 0.25 * ((z.detach() - out.z_q.detach()) ** 2).mean())


def test_lfq_entropy_term_matches_numpy():
    bits, tau, gamma, weight = 3, 0.7, 0.6, 0.3
    lfq = LFQ(LFQConfig(dim=bits, bits=bits, temperature=tau, diversity=gamma, entropy_weight=weight)).train()
    z = torch.randn(2, 3, bits)
    out = lfq(z)

    h = z.reshape(-1, bits).double().numpy()
    corners = np.array([[1.0 if (k >> i) & 1 else -1.0 for i in range(bits)] for k in range(2**bits)])
    dist = ((h[:, None, :] - corners[None]) ** 2).sum(-1)  # [N, K] squared distances
    per_position, codebook = entropy_reference(-dist / tau)
    assert abs(float(out.stats["entropy_position"]) - per_position) < 1e-5
    assert abs(float(out.stats["entropy_codebook"]) - codebook) < 1e-5
    assert abs(float(out.losses["entropy"]) - weight * (per_position - gamma * codebook)) < 1e-5
    # the penalty is a training device: eval skips the 2^bits softmax
    assert "entropy" not in lfq.eval()(z).losses


def test_lfq_usage_and_perplexity_known_values():
    lfq = LFQ(LFQConfig(dim=2, bits=2)).eval()
    # codes 0, 0, 1, 3 (channel 0 is bit 0): counts [2, 1, 0, 1]
    z = torch.tensor([[[-1.0, -1.0], [-0.5, -2.0], [1.0, -1.0], [1.0, 1.0]]])
    out = lfq(z)
    assert out.codes.tolist() == [[0, 0, 1, 3]]
    assert float(out.stats["usage"]) == 0.75
    p = np.array([0.5, 0.25, 0.25])
    assert abs(float(out.stats["perplexity"]) - math.exp(-(p * np.log(p)).sum())) < 1e-5


def test_lfq_entropy_gradient_spreads_codes():
    """Descending the entropy penalty alone raises the batch entropy of codes that start collapsed."""
    torch.manual_seed(0)
    lfq = LFQ(LFQConfig(dim=3, bits=3, temperature=1.0, entropy_weight=1.0)).train()
    h = (0.1 * torch.randn(64, 3) + 0.5).requires_grad_(True)  # nearly all on one corner
    opt = torch.optim.SGD([h], lr=5.0)
    first = None
    for _ in range(30):
        loss = lfq(h[None]).losses["entropy"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first - 1.0
    with torch.no_grad():
        assert float(lfq.eval()(h[None]).stats["usage"]) >= 0.75


# ----------------------------------------------------------------------------------------------
# Residual VQ
# ----------------------------------------------------------------------------------------------


def test_rvq_error_falls_with_each_level_after_kmeans_init():
    rvq = ResidualVQ(RVQConfig(dim=4, codebook_size=16, depth=3, quantizer_dropout=False)).train()
    z = torch.randn(4, 16, 16, 4)
    rvq(z)  # first training forward: k-means on each level's residuals in turn
    assert all(bool(level.initialized) for level in rvq.levels)
    rvq.eval()
    with torch.no_grad():
        out = rvq(z)
        errors = [float(F.mse_loss(rvq.lookup(out.codes[..., :k]), z)) for k in (1, 2, 3)]
    assert errors[0] < float(z.pow(2).mean()) and errors[1] < errors[0] * 0.9 and errors[2] < errors[1] * 0.9
    assert torch.allclose(out.z_q, rvq.lookup(out.codes), atol=1e-5)
    for k in range(3):
        assert abs(float(out.stats[f"residual_l{k}"]) - errors[k]) < 1e-5


def test_rvq_prefix_decodes_level_by_level_and_rejects_bad_depth():
    rvq = ResidualVQ(RVQConfig(dim=4, codebook_size=8, depth=3, kmeans_init=False)).eval()
    codes = torch.randint(8, (2, 5, 3))
    first = rvq.lookup(codes[..., :1])
    assert torch.allclose(first, rvq.levels[0].codebook[codes[..., 0]])
    two = rvq.lookup(codes[..., :2])
    assert torch.allclose(two - first, rvq.levels[1].codebook[codes[..., 1]], atol=1e-6)
    with pytest.raises(ValueError, match="depth=3"):
        rvq.lookup(codes[..., :0])
    with pytest.raises(ValueError, match="depth=3"):
        rvq.lookup(torch.zeros(2, 5, 4, dtype=torch.long))


def test_rvq_commitment_measures_the_partial_sums_and_gradient_is_straight_through():
    rvq = ResidualVQ(RVQConfig(dim=4, codebook_size=8, depth=3, kmeans_init=False, quantizer_dropout=False,
                               commitment=0.25))
    z = torch.randn(2, 3, 3, 4, requires_grad=True)
    out = rvq(z)
    expected, partial = 0.0, torch.zeros_like(z)
    for k in range(3):
        e = rvq.levels[k].codebook[out.codes[..., k]].detach()
        expected += 0.25 * F.mse_loss(z.detach() - partial, e)
        partial = partial + e
    assert torch.allclose(out.losses["commitment"], expected, atol=1e-6)
    w = torch.randn_like(z)
    (out.z_q * w).sum().backward()
    assert torch.allclose(z.grad, w, atol=1e-6)


def test_rvq_dropout_varies_depth_in_training_and_uses_all_levels_in_eval():
    rvq = ResidualVQ(RVQConfig(dim=4, codebook_size=8, depth=4, kmeans_init=False)).train()
    z = torch.randn(64, 2, 4)

    def depths(out):
        used = []
        for b in range(z.shape[0]):
            match = [k for k in range(1, 5) if torch.allclose(rvq.lookup(out.codes[b:b + 1, ..., :k]),
                                                              out.z_q[b:b + 1], atol=1e-5)]
            assert len(match) == 1, "each example's z_q is exactly one prefix sum"
            used.append(match[0])
        return used

    with torch.no_grad():
        train_depths = depths(rvq(z))
        assert set(train_depths) == {1, 2, 3, 4}
        assert depths(rvq.eval()(z)) == [4] * 64
        # DAC's rate: half the examples keep every level, the rest draw 1..4 as before
        rvq.config.dropout_rate = 0.5
        torch.manual_seed(0)
        half = depths(rvq.train()(torch.randn(64, 2, 4)))
        assert 0.55 < sum(d == 4 for d in half) / 64 < 0.8 and {1, 2, 3} <= set(half)


def test_rvq_shared_codebook_ema_and_rotation_options_reach_the_levels():
    shared = ResidualVQ(RVQConfig(dim=4, codebook_size=8, depth=3, shared_codebook=True))
    assert len(shared.levels) == 1 and sum(p.numel() for p in shared.parameters()) == 8 * 4
    out = shared.train()(torch.randn(2, 5, 4))
    assert out.codes.shape == (2, 5, 3)
    ema = ResidualVQ(RVQConfig(dim=4, codebook_size=8, depth=2, codebook_update="ema"))
    assert list(ema.parameters()) == [] and "codebook" not in ema(torch.randn(2, 5, 4)).losses
    # The rotation trick acts on the summed code vector: same forward, a different encoder gradient.
    plain = ResidualVQ(RVQConfig(dim=4, codebook_size=8, depth=2, kmeans_init=False, quantizer_dropout=False))
    rotated = ResidualVQ(RVQConfig(dim=4, codebook_size=8, depth=2, kmeans_init=False, quantizer_dropout=False,
                                   rotation_trick=True))
    rotated.load_state_dict(plain.state_dict())
    z = torch.randn(2, 5, 4, requires_grad=True)
    a, b = plain(z), rotated(z)
    assert torch.allclose(a.z_q, b.z_q, atol=1e-5)
    (ga,) = torch.autograd.grad(a.z_q.sum(), z)
    (gb,) = torch.autograd.grad(b.z_q.sum(), z)
    assert not torch.allclose(ga, gb, atol=1e-3)
    assert not any(level.config.rotation_trick for level in rotated.levels)


def test_rvq_gradient_through_levels_sums_each_levels_straight_through_or_rotation():
    from latentforge.quantize.vq import rotation_matrix

    base = {"dim": 4, "codebook_size": 8, "depth": 3, "kmeans_init": False, "quantizer_dropout": False}
    plain = ResidualVQ(RVQConfig(**base))
    z = torch.randn(2, 5, 4, requires_grad=True)
    w = torch.randn(2, 5, 4)
    ref = plain(z)
    for rotation in (False, True):
        levels = ResidualVQ(RVQConfig(**base, gradient="levels", rotation_trick=rotation))
        levels.load_state_dict(plain.state_dict())
        assert all(level.config.rotation_trick == rotation for level in levels.levels)
        out = levels(z)
        assert torch.equal(out.codes, ref.codes) and torch.allclose(out.z_q, ref.z_q, atol=1e-6)
        assert all(torch.allclose(out.losses[k], ref.losses[k]) for k in ref.losses)
        (grad,) = torch.autograd.grad((out.z_q * w).sum(), z)
        # each level hands the decoder gradient to its residual, which passes it to z unchanged
        expected, residual = torch.zeros_like(w), z.detach()
        for k in range(3):
            e = levels.levels[k].codebook[out.codes[..., k]].detach()
            if rotation:
                scale = e.norm(dim=-1, keepdim=True) / residual.norm(dim=-1, keepdim=True)
                expected += scale * (rotation_matrix(residual, e).transpose(-1, -2) @ w[..., None])[..., 0]
            else:
                expected += w
            residual = residual - e
        assert torch.allclose(grad, expected, atol=1e-5)
    with pytest.raises(ValueError, match="gradient"):
        RVQConfig(gradient="each")


# ----------------------------------------------------------------------------------------------
# Gumbel-softmax
# ----------------------------------------------------------------------------------------------


def test_gumbel_temperature_schedule_known_values_and_checkpointed_counter():
    cfg = GumbelConfig(dim=4, codebook_size=8, tau_start=1.0, tau_end=1 / 16, anneal_steps=100)
    q = GumbelQuantizer(cfg)
    for step, tau in [(0, 1.0), (25, 0.5), (50, 0.25), (75, 0.125), (100, 1 / 16), (1000, 1 / 16)]:
        assert abs(float(q.temperature(step)) - tau) < 1e-6
    z = torch.randn(2, 3, 4)
    q.train()
    for _ in range(3):
        q(z)
    q.eval()(z)  # eval does not advance the schedule
    assert int(q.step) == 3 and abs(float(q.temperature()) - 16 ** (-3 / 100)) < 1e-6
    resumed = GumbelQuantizer(cfg)
    resumed.load_state_dict(q.state_dict())
    assert int(resumed.step) == 3
    assert float(GumbelQuantizer(GumbelConfig(anneal_steps=0)).temperature()) == 1 / 16


def test_gumbel_kl_is_log_k_minus_entropy():
    q = GumbelQuantizer(GumbelConfig(dim=4, codebook_size=8, kl_weight=0.5)).train()
    z = torch.randn(2, 3, 3, 4)
    out = q(z)
    logits = q.to_logits(z).detach().double()
    p = logits.softmax(-1)
    entropy = -(p * p.log()).sum(-1).mean()
    assert abs(float(out.losses["kl"].detach()) - 0.5 * (math.log(8) - float(entropy))) < 1e-5
    with torch.no_grad():
        q.to_logits.weight.zero_()
        q.to_logits.bias.zero_()
    assert abs(float(q(z).losses["kl"].detach())) < 1e-6  # uniform q: no divergence


def test_gumbel_hard_is_one_hot_forward_with_the_soft_gradient():
    soft = GumbelQuantizer(GumbelConfig(dim=4, codebook_size=8, hard=False)).train()
    hard = GumbelQuantizer(GumbelConfig(dim=4, codebook_size=8, hard=True)).train()
    hard.load_state_dict(soft.state_dict())
    z = torch.randn(2, 5, 4, requires_grad=True)
    w = torch.randn(2, 5, 4)

    def run(q):
        torch.manual_seed(1)  # the same Gumbel noise for both
        out = q(z)
        (grad,) = torch.autograd.grad((out.z_q * w).sum(), z)
        return out, grad

    soft_out, soft_grad = run(soft)
    hard_out, hard_grad = run(hard)
    assert torch.equal(soft_out.codes, hard_out.codes)
    assert torch.allclose(hard_out.z_q, hard.codebook[hard_out.codes], atol=1e-6)  # exactly a code vector
    assert not torch.allclose(soft_out.z_q, hard_out.z_q, atol=1e-3)
    assert hard_grad.abs().sum() > 0 and torch.allclose(hard_grad, soft_grad, atol=1e-6)


def test_gumbel_eval_is_deterministic_argmax_and_training_samples():
    q = GumbelQuantizer(GumbelConfig(dim=4, codebook_size=8)).eval()
    z = torch.randn(8, 16, 4)
    a, b = q(z), q(z)
    argmax = q.to_logits(z).argmax(-1)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.codes, argmax)
    assert torch.equal(a.z_q, q.codebook[a.codes].detach())
    # at tau = 1 the Gumbel noise changes some codes, and the relaxed sample mixes code vectors
    out = q.train()(z)
    assert (out.codes != argmax).any()
    assert not torch.allclose(out.z_q, q.codebook[out.codes].detach(), atol=1e-3)
