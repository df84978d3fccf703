"""Collapse defences of VQ (issue 14): SimVQ, the entropy penalty and grouped (multi-head) VQ.

Known answers where one exists (brute-force nearest codes, a hand-computed entropy penalty),
the property each defence is for (every SimVQ code moves, the penalty raises usage where plain VQ
collapses), and the contracts a recipe relies on (config from a dict, save -> load, the LatentSpec
generators read).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import entropy_reference

from latentforge.config import ConfigError, from_dict, to_dict
from latentforge.quantize.base import QuantizerConfig
from latentforge.quantize.grouped_vq import GroupedVQ, GroupedVQConfig
from latentforge.quantize.rvq import ResidualVQ, RVQConfig
from latentforge.quantize.vq import VectorQuantizer, VQConfig
from latentforge.serialization import from_pretrained, save_pretrained
from latentforge.tokenizers.base import check_latents
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

# ----------------------------------------------------------------------------------------------
# SimVQ
# ----------------------------------------------------------------------------------------------


def _simvq(**kw) -> VectorQuantizer:
    cfg = {"codebook_size": 16, "dim": 4, "l2_normalize": False, "kmeans_init": False, "dead_threshold": 0.0,
           "simvq": True}
    return VectorQuantizer(VQConfig(**{**cfg, **kw}))


def test_simvq_codebook_is_frozen_and_every_code_moves_with_w():
    torch.manual_seed(0)
    vq = _simvq().train()
    assert [n for n, _ in vq.named_parameters()] == ["code_map"]
    assert "codebook" in vq.state_dict() and not vq.codebook.requires_grad
    frozen = vq.codebook.clone()
    before = vq._embeddings().detach().clone()  # [K, D] the codes in use: C W
    # a batch that picks only two codes, a little off them so the codebook loss pulls
    z = 1.2 * vq.codebook[[0, 1]].repeat(32, 1).view(8, 8, 4) + 0.01 * torch.randn(8, 8, 4)
    opt = torch.optim.SGD(vq.parameters(), lr=0.1)
    out = vq(z)
    assert len(out.codes.unique()) <= 2
    (out.z_q.square().mean() + sum(out.losses.values())).backward()
    assert vq.code_map.grad is not None and vq.code_map.grad.abs().sum() > 0
    assert vq.codebook.grad is None
    opt.step()
    after = vq._embeddings().detach()
    assert torch.equal(vq.codebook, frozen)
    assert ((after - before).norm(dim=1) > 1e-4).all(), "every code moves, used or not"
    # plain VQ, the same step: only the two codes the batch used move
    torch.manual_seed(0)
    plain = VectorQuantizer(VQConfig(codebook_size=16, dim=4, l2_normalize=False, kmeans_init=False,
                                     dead_threshold=0.0)).train()
    plain.codebook.data.copy_(frozen)
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    out = plain(z)
    (out.z_q.square().mean() + sum(out.losses.values())).backward()
    opt.step()
    moved = (plain.codebook.detach() - frozen).norm(dim=1) > 1e-6
    assert int(moved.sum()) == len(out.codes.unique())


@pytest.mark.parametrize("l2", [False, True])
def test_simvq_codes_are_nearest_neighbours_of_c_w(l2):
    vq = _simvq(l2_normalize=l2).eval()
    with torch.no_grad():
        vq.code_map.copy_(torch.randn(4, 4))
    z = torch.randn(3, 5, 4)
    out = vq(z)
    e = vq.codebook @ vq.code_map.detach()
    zz = F.normalize(z, dim=-1) if l2 else z
    e = F.normalize(e, dim=-1) if l2 else e
    brute = torch.cdist(zz.reshape(-1, 4), e).argmin(1).view(3, 5)
    assert torch.equal(out.codes, brute)
    assert torch.allclose(out.z_q, e[brute], atol=1e-5)
    assert torch.allclose(vq.lookup(out.codes), out.z_q, atol=1e-5)


def test_simvq_kmeans_init_and_revival_place_the_used_codes_c_w_on_the_data():
    torch.manual_seed(0)
    centres = torch.randn(8, 4) * 5
    data = (centres[torch.randint(8, (2048,))] + 0.01 * torch.randn(2048, 4)).view(2, 32, 32, 4)
    vq = _simvq(codebook_size=8, kmeans_init=True, kmeans_iters=20).train()
    w = torch.eye(4) + 0.5 * torch.randn(4, 4)
    with torch.no_grad():
        vq.code_map.copy_(w)  # not the identity: C must be solved through W
    q = vq(data)
    assert torch.cdist(centres, vq._embeddings().detach()).min(1).values.max() < 0.5
    assert torch.equal(vq.code_map.detach(), w), "initialising the codes leaves W alone"
    assert F.mse_loss(q.z_q, data) < 0.05
    # revival writes C W = an encoder output for a dead code
    vq = _simvq(usage_decay=0.5, dead_threshold=0.5, codebook_size=32).train()
    with torch.no_grad():
        vq.code_map.copy_(w)
        vq.codebook.copy_(torch.full((32, 4), 100.0) @ torch.linalg.inv(w))  # every code C W = 100 ...
        vq.codebook[0] = 0.0                                                   # ... but one, at 0
    z = torch.randn(1, 16, 16, 4)
    vq(z)
    vq(z)  # unused codes' usage 0.25 < 0.5: revived
    revived = vq._embeddings().detach()[1:]
    flat = z.reshape(-1, 4)
    exact = torch.cdist(revived, flat, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(1).values.max() < 1e-4, "revived codes sit on encoder outputs"


def test_simvq_options_are_checked_configured_by_name_and_reach_rvq_levels(tmp_path):
    with pytest.raises(ValueError, match="simvq"):
        VQConfig(simvq=True, codebook_update="ema")
    cfg = from_dict(QuantizerConfig, {"name": "vq", "simvq": True, "codebook_size": 8, "dim": 4})
    assert isinstance(cfg, VQConfig) and cfg.simvq and from_dict(QuantizerConfig, to_dict(cfg)) == cfg
    rvq = ResidualVQ(RVQConfig(codebook_size=8, dim=4, depth=2, simvq=True))
    assert sorted(n for n, _ in rvq.named_parameters()) == ["levels.0.code_map", "levels.1.code_map"]
    # save -> load: C (a buffer) and W travel with the weights
    vq = _simvq(kmeans_init=True).train()
    z = torch.randn(2, 6, 4)
    for _ in range(2):
        vq(z)
    with torch.no_grad():
        vq.code_map.add_(0.1 * torch.randn(4, 4))
    loaded = from_pretrained(save_pretrained(vq.eval(), tmp_path / "simvq"))
    a, b = vq(z), loaded(z)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.z_q, b.z_q)


# ----------------------------------------------------------------------------------------------
# Entropy penalty
# ----------------------------------------------------------------------------------------------


def test_entropy_penalty_matches_a_hand_computed_value():
    tau, weight = 0.5, 0.3
    vq = VectorQuantizer(VQConfig(codebook_size=3, dim=2, l2_normalize=False, kmeans_init=False, dead_threshold=0.0,
                                  entropy_weight=weight, entropy_temperature=tau)).train()
    codebook = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = np.array([[0.1, 0.2], [0.9, -0.1], [0.4, 0.5], [-0.3, 1.8]])
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor(codebook))
    out = vq(torch.tensor(z, dtype=torch.float32)[None])

    d = ((z[:, None, :] - codebook[None]) ** 2).sum(-1)       # [4, 3] squared distances
    per_vector, batch = entropy_reference(-d / tau)
    assert abs(float(out.stats["entropy_position"]) - per_vector) < 1e-5
    assert abs(float(out.stats["entropy_codebook"]) - batch) < 1e-5
    assert abs(float(out.losses["entropy"].detach()) - weight * (per_vector - batch)) < 1e-5
    assert "entropy" not in vq.eval()(torch.tensor(z, dtype=torch.float32)[None]).losses
    # off by default: no term, no stats, the losses of today
    plain = VectorQuantizer(VQConfig(codebook_size=3, dim=2)).train()
    assert set(plain(torch.randn(1, 4, 2)).losses) == {"codebook", "commitment"}


def test_entropy_penalty_is_finite_when_codes_are_far_from_every_vector():
    vq = VectorQuantizer(VQConfig(codebook_size=8, dim=2, l2_normalize=False, kmeans_init=False, dead_threshold=0.0,
                                  entropy_weight=1.0, entropy_temperature=0.01)).train()
    with torch.no_grad():
        vq.codebook.fill_(100.0)
        vq.codebook[0] = 0.0
    z = torch.randn(1, 16, 2, requires_grad=True)
    out = vq(z)
    out.losses["entropy"].backward()
    assert torch.isfinite(out.losses["entropy"]) and torch.isfinite(z.grad).all()
    assert torch.isfinite(vq.codebook.grad).all()


def _train_codebook(entropy_weight: float) -> float:
    """Fit a codebook to fixed data that one code starts nearest to; usage of the last batch."""
    torch.manual_seed(0)
    vq = VectorQuantizer(VQConfig(codebook_size=16, dim=2, l2_normalize=False, kmeans_init=False, dead_threshold=0.0,
                                  entropy_weight=entropy_weight, entropy_temperature=1.0)).train()
    with torch.no_grad():
        vq.codebook.copy_(0.3 * torch.randn(16, 2) + torch.tensor([-2.0, 0.0]))
        vq.codebook[0] = torch.tensor([0.5, 0.0])
    data = 0.3 * torch.randn(512, 2) + torch.tensor([2.0, 0.0])  # every vector is nearest to code 0
    opt = torch.optim.Adam(vq.parameters(), lr=0.05)
    for _ in range(200):
        out = vq(data[None])
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
    return float(out.stats["usage"])


def test_entropy_penalty_raises_usage_where_plain_vq_collapses():
    assert _train_codebook(0.0) == 1 / 16, "without a defence the codes no vector picked never move"
    assert _train_codebook(0.1) >= 0.75


def test_entropy_options_are_checked():
    with pytest.raises(ValueError, match="entropy_weight"):
        VQConfig(entropy_weight=-1.0)
    with pytest.raises(ValueError, match="entropy_temperature"):
        VQConfig(entropy_temperature=0.0)


# ----------------------------------------------------------------------------------------------
# Grouped VQ
# ----------------------------------------------------------------------------------------------


def _grouped(shared: bool, **kw) -> GroupedVQ:
    cfg = {"codebook_size": 8, "dim": 6, "groups": 3, "l2_normalize": False, "kmeans_init": False,
           "shared_codebook": shared}
    return GroupedVQ(GroupedVQConfig(**{**cfg, **kw}))


@pytest.mark.parametrize("shared", [False, True])
def test_grouped_codes_are_per_group_nearest_codes(shared):
    torch.manual_seed(0)
    vq = _grouped(shared).eval()
    assert len(vq.codebooks) == (1 if shared else 3)
    assert sum(p.numel() for p in vq.parameters()) == (1 if shared else 3) * 8 * 2
    z = torch.randn(2, 4, 5, 6)
    out = vq(z)
    assert out.codes.shape == (2, 4, 5, 3) and out.codes.dtype == torch.long
    for g in range(3):
        book = vq.codebooks[0 if shared else g].codebook.detach()  # [K, D/G]
        part = z[..., 2 * g:2 * g + 2]
        brute = torch.cdist(part.reshape(-1, 2), book).argmin(1).view(2, 4, 5)
        assert torch.equal(out.codes[..., g], brute)
        assert torch.allclose(out.z_q[..., 2 * g:2 * g + 2], book[brute], atol=1e-6)
    assert torch.allclose(vq.lookup(out.codes), out.z_q, atol=1e-6)


def test_grouped_one_group_is_plain_vq():
    torch.manual_seed(0)
    plain = VectorQuantizer(VQConfig(codebook_size=8, dim=4)).train()
    grouped = GroupedVQ(GroupedVQConfig(codebook_size=8, dim=4, groups=1)).train()
    grouped.codebooks[0].load_state_dict(plain.state_dict())
    z = torch.randn(2, 16, 4)
    torch.manual_seed(1)
    a = plain(z)
    torch.manual_seed(1)
    b = grouped(z)
    assert torch.equal(a.codes, b.codes[..., 0]) and torch.equal(a.z_q, b.z_q)
    assert all(torch.equal(a.losses[k], b.losses[k]) for k in a.losses)


def test_grouped_gradients_losses_and_options_reach_each_group():
    vq = _grouped(False, rotation_trick=True, entropy_weight=0.1, kmeans_init=True).train()
    z = torch.randn(2, 5, 6, requires_grad=True)
    out = vq(z)
    assert all(bool(book.initialized) for book in vq.codebooks)
    assert {"codebook", "commitment", "entropy"} <= set(out.losses)
    assert {"usage_g0", "usage_g2", "perplexity_g1", "entropy_codebook"} <= set(out.stats)
    # losses are the mean over groups: the per-channel scale of one VQ over all channels
    e = vq.lookup(out.codes).detach()
    assert torch.allclose(out.losses["commitment"], 0.25 * F.mse_loss(z.detach(), e), atol=1e-6)
    (out.z_q.square().sum() + sum(out.losses.values())).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is not None for p in vq.parameters())
    simvq = GroupedVQ(GroupedVQConfig(codebook_size=8, dim=6, groups=3, simvq=True))
    assert [tuple(p.shape) for p in simvq.parameters()] == [(2, 2)] * 3


@pytest.mark.parametrize("shared", [False, True])
def test_grouped_save_load_round_trip(shared, tmp_path):
    vq = _grouped(shared, kmeans_init=True).train()
    z = torch.randn(2, 4, 6)
    for _ in range(2):
        vq(z)  # k-means init and usage move off their initial values
    loaded = from_pretrained(save_pretrained(vq.eval(), tmp_path / "g"))
    assert isinstance(loaded, GroupedVQ) and loaded.config == vq.config
    a, b = vq(z), loaded(z)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.z_q, b.z_q)


def test_grouped_refuses_a_prefix_and_a_width_it_cannot_split():
    vq = _grouped(False).eval()
    with pytest.raises(ValueError, match="all groups=3"):
        vq.lookup(torch.zeros(2, 5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by groups=4"):
        GroupedVQConfig(dim=6, groups=4)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        GroupedVQConfig(groups=0)
    with pytest.raises(ConfigError, match="groups"):
        from_dict(QuantizerConfig, {"name": "vq", "groups": 2})  # an option of grouped_vq, not of vq


def test_grouped_tokenizer_spec_and_the_generators_that_read_it():
    from latentforge.registry import lookup

    cfg = from_dict(ConvConfig, {"image_size": 16, "channels": [8, 16],
                                 "quantizer": {"name": "grouped_vq", "groups": 2, "codebook_size": 16, "dim": 8}})
    tok = ConvTokenizer(cfg).eval()
    assert tok.spec.kind == "discrete" and tok.spec.depth == 2 and tok.spec.vocab_size == 16
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (2, 4, 4, 2)
    check_latents(tok.spec, codes)
    assert tok.decode(codes).shape == x.shape
    with pytest.raises(ValueError, match="grouped VQ"):
        tok.decode(codes[..., :1])
    # evaluation reports quality by levels decoded for residual codes only: grouped codes are
    # scored whole (before, it asked the tokenizer to decode one group and failed)
    assert not tok.quantizer.prefix_decodable and ResidualVQ.prefix_decodable
    from latentforge.eval.run_metrics import tokenizer_metrics
    from latentforge.modalities.image import ImageModality

    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    metrics, recon = tokenizer_metrics(tok, ImageModality(size=16), images, torch.device("cpu"))
    assert recon.shape == images.shape and np.isfinite(metrics["psnr"]) and not any("by_levels" in k for k in metrics)
    assert metrics["codebook_size"] == 16 and len(metrics["per_level"]) == 2
    # the hierarchical generator takes the group axis as its levels ...
    hier = lookup("generator", "hierarchical")[0]()
    assert hier.fields_for(tok.spec, "conv + grouped_vq")["levels"] == 2
    # ... generators of one code per position refuse it, naming the tokenizer
    flat = lookup("generator", "masked")[0]()
    with pytest.raises(ValueError, match=r"conv \+ grouped_vq gives 2 levels"):
        flat.fields_for(tok.spec, "conv + grouped_vq")
    assert math.prod(codes.shape[1:]) == 4 * 4 * 2
