import math

import torch
import torch.nn.functional as F

from latentforge.quantize.base import codebook_stats
from latentforge.quantize.vq import VectorQuantizer, VQConfig
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer


def test_codes_are_nearest_neighbours():
    for l2 in (True, False):
        vq = VectorQuantizer(VQConfig(codebook_size=16, dim=4, l2_normalize=l2, kmeans_init=False)).eval()
        z = torch.randn(3, 5, 5, 4)
        q = vq(z)
        zz = F.normalize(z, dim=-1) if l2 else z
        e = F.normalize(vq.codebook, dim=-1) if l2 else vq.codebook
        brute = torch.cdist(zz.reshape(-1, 4), e).argmin(1).view(3, 5, 5)
        assert torch.equal(q.codes, brute)
        assert torch.allclose(q.z_q, e[brute], atol=1e-6)
        assert torch.allclose(vq.lookup(q.codes), q.z_q, atol=1e-6)


def test_straight_through_gradient_reaches_the_input():
    vq = VectorQuantizer(VQConfig(codebook_size=8, dim=4, l2_normalize=False, kmeans_init=False))
    z = torch.randn(2, 3, 3, 4, requires_grad=True)
    q = vq(z)
    weights = torch.randn_like(q.z_q)
    (q.z_q * weights).sum().backward()
    # straight-through: d z_q / d z is the identity
    assert torch.allclose(z.grad, weights)
    q = vq(z)
    sum(q.losses.values()).backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_losses_match_their_formulas():
    vq = VectorQuantizer(VQConfig(codebook_size=8, dim=4, l2_normalize=False, kmeans_init=False, commitment=0.25))
    z = torch.randn(2, 3, 3, 4)
    q = vq(z)
    e = vq.codebook[q.codes]
    assert torch.allclose(q.losses["codebook"], ((e - z) ** 2).mean())
    assert torch.allclose(q.losses["commitment"], 0.25 * ((z - e) ** 2).mean())


def test_kmeans_init_puts_codes_on_the_data():
    torch.manual_seed(0)
    centres = torch.randn(8, 4) * 5
    data = (centres[torch.randint(8, (2048,))] + 0.01 * torch.randn(2048, 4)).view(2, 32, 32, 4)
    vq = VectorQuantizer(VQConfig(codebook_size=8, dim=4, l2_normalize=False, kmeans_iters=20)).train()
    assert not bool(vq.initialized)
    q = vq(data)
    assert bool(vq.initialized)
    # every true centre has a code within the noise level, and reconstruction error is tiny
    assert torch.cdist(centres, vq.codebook.detach()).min(1).values.max() < 0.5
    assert F.mse_loss(q.z_q, data) < 0.05


def test_dead_codes_are_revived_onto_data():
    cfg = VQConfig(codebook_size=32, dim=4, l2_normalize=False, kmeans_init=False, usage_decay=0.5, dead_threshold=0.5)
    vq = VectorQuantizer(cfg).train()
    with torch.no_grad():
        vq.codebook.fill_(100.0)          # all codes far away ...
        vq.codebook[0] = 0.0               # ... but one, which takes every vector
    z = torch.randn(1, 16, 16, 4)
    vq(z)                                  # usage of unused codes: 1 -> 0.5, not dead yet
    assert (vq.codebook.detach() == 100.0).all(dim=1).sum() == 31
    vq(z)                                  # 0.25 < 0.5: revived
    revived = vq.codebook.detach()[1:]
    assert (revived.abs() < 10).all(), "dead codes should move onto encoder outputs"
    assert codebook_stats(torch.bincount(vq(z).codes.flatten(), minlength=32))["codebook_usage"] > 0.25


def test_codebook_stats_known_values():
    s = codebook_stats(torch.tensor([5, 5, 0, 0]))
    assert s["codebook_usage"] == 0.5 and abs(s["perplexity"] - 2.0) < 1e-9 and s["dead_codes"] == 2
    s = codebook_stats(torch.tensor([1, 1, 1, 1]))
    assert abs(s["perplexity"] - 4.0) < 1e-9


def test_conv_tokenizer_shapes_spec_and_errors():
    cfg = ConvConfig(channels=(8, 16), quantizer=VQConfig(codebook_size=64, dim=8))
    tok = ConvTokenizer(cfg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert tok.spec.grid == (8, 8) and tok.spec.kind == "discrete" and tok.spec.vocab_size == 64
    codes = tok.encode(x)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long
    assert tok.decode(codes).shape == x.shape
    out = tok.loss({"image": x})
    assert {"loss", "l2", "codebook", "commitment", "psnr", "usage", "perplexity"} <= set(out)
    out["loss"].backward()
    assert all(p.grad is not None for n, p in tok.named_parameters()), "every parameter gets a gradient"
    import pytest
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 32, 32\]"):
        tok.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="int64 codes"):
        tok.decode(codes.float())


def test_tokenizer_learns_to_reconstruct():
    """A tiny conv VQ autoencoder must fit 8 fixed images to PSNR > 22 dB in 150 steps."""
    torch.manual_seed(0)
    from latentforge.data.shapes import ShapesConfig, render_batch
    from latentforge.modalities.image import ImageModality

    x = ImageModality(32).to_model(render_batch(ShapesConfig(), "train", range(8)))
    tok = ConvTokenizer(ConvConfig(channels=(32, 64), quantizer=VQConfig(codebook_size=64, dim=16)))
    opt = torch.optim.Adam(tok.parameters(), 2e-3)
    for _ in range(150):
        out = tok.loss({"image": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    tok.eval()
    mse = F.mse_loss(tok(x).clamp(-1, 1), x) / 4  # in [0, 1] units
    assert 10 * math.log10(1 / float(mse)) > 22


# ----------------------------------------------------------------------------------------------
# Options: EMA codebook updates, rotation trick
# ----------------------------------------------------------------------------------------------


def test_defaults_are_a_learned_codebook_with_straight_through():
    cfg = VQConfig()
    assert cfg.codebook_update == "learned" and not cfg.rotation_trick
    vq = VectorQuantizer(VQConfig(codebook_size=8, dim=4))
    assert [n for n, _ in vq.named_parameters()] == ["codebook"]
    assert set(vq(torch.randn(2, 3, 4)).losses) == {"codebook", "commitment"}


def _ema_vq(**kw):
    cfg = {"codebook_size": 8, "dim": 3, "l2_normalize": False, "kmeans_init": False, "codebook_update": "ema",
           "dead_threshold": 0.0}
    return VectorQuantizer(VQConfig(**{**cfg, **kw})).train()


def test_ema_with_decay_zero_moves_codes_to_the_mean_of_their_vectors():
    vq = _ema_vq(ema_decay=0.0)
    assert "codebook" not in dict(vq.named_parameters()) and "codebook" in vq.state_dict()
    before = vq.codebook.clone()
    z = torch.randn(4, 16, 3)
    q = vq(z)
    assert set(q.losses) == {"commitment"}
    flat, codes = z.reshape(-1, 3), q.codes.reshape(-1)
    for k in range(8):
        if (codes == k).any():
            assert torch.allclose(vq.codebook[k], flat[codes == k].mean(0), atol=1e-4)
        else:
            assert torch.equal(vq.codebook[k], before[k]), "a code nothing was assigned to stays put"
    assert len(codes.unique()) >= 2


def test_ema_laplace_smoothing_formula():
    eps, decay = 0.1, 0.5
    vq = _ema_vq(ema_decay=decay, ema_epsilon=eps)
    z = torch.randn(1, 40, 3)
    codes = vq(z).codes.reshape(-1)
    n = torch.bincount(codes, minlength=8).float()
    s = torch.zeros(8, 3).index_add_(0, codes, z.reshape(-1, 3))
    count, total = (1 - decay) * n, (1 - decay) * n.sum()   # EMAs start at zero
    smoothed = (count + eps) / (total + 8 * eps) * total
    used = n > 0
    assert torch.allclose(vq.codebook[used], ((1 - decay) * s / smoothed[:, None])[used], atol=1e-5)


def test_ema_tracks_cluster_means_with_kmeans_init_l2_and_revival():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 4), dim=-1)
    data = (centres[torch.randint(4, (512,))] + 0.05 * torch.randn(512, 4)).view(2, 256, 4)
    vq = VectorQuantizer(VQConfig(codebook_size=4, dim=4, codebook_update="ema", ema_decay=0.5)).train()
    for _ in range(5):
        vq(data)
    codes = F.normalize(vq.codebook, dim=-1)
    # with l2_normalize, codes are the mean directions of their clusters
    assert (codes @ centres.t()).max(0).values.min() > 0.99
    # revival resets a dead code's averages, so the next update does not pull it back
    vq = _ema_vq(usage_decay=0.5, dead_threshold=0.5, codebook_size=32)
    with torch.no_grad():
        vq.codebook.fill_(100.0)
        vq.codebook[0] = 0.0
        vq.ema_count[1:] = 1.0     # as if codes 1.. had a cluster far away, at 100
        vq.ema_sum[1:] = 100.0
    z = torch.randn(1, 64, 3)
    vq(z)
    assert (vq.codebook[1:] > 90).all()  # unused: still at their old cluster
    vq(z)  # their usage 0.25 < 0.5: revived onto encoder outputs
    assert (vq.codebook[1:].abs() < 10).all() and (vq.ema_count[1:] == 0).all()
    vq(z)
    assert (vq.codebook.abs() < 10).all()


def test_rotation_matrix_is_a_rotation_taking_z_to_e():
    from latentforge.quantize.vq import rotation_matrix

    z, e = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    e[0] = -2 * z[0]  # antipodal: the case where r = 0
    R = rotation_matrix(z, e)  # [6, 5, 5]
    eye = torch.eye(5, dtype=torch.float64).expand(6, 5, 5)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-10)
    # a proper rotation, except antipodal pairs, where it degenerates to a reflection
    assert torch.allclose(torch.linalg.det(R[1:]), torch.ones(5, dtype=torch.float64))
    u, q = F.normalize(z, dim=-1), F.normalize(e, dim=-1)
    assert torch.allclose((R @ u[..., None])[..., 0], q, atol=1e-10)


def test_rotation_trick_same_forward_rotated_gradient():
    from latentforge.quantize.vq import rotation_matrix

    cfg = {"codebook_size": 8, "dim": 4, "l2_normalize": False, "kmeans_init": False}
    st = VectorQuantizer(VQConfig(**cfg))
    rot = VectorQuantizer(VQConfig(**cfg, rotation_trick=True))
    rot.load_state_dict(st.state_dict())
    z = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.randn(2, 3, 4)
    a, b = st(z), rot(z)
    assert torch.equal(a.codes, b.codes) and torch.allclose(a.z_q, b.z_q, atol=1e-6)
    (g_st,) = torch.autograd.grad((a.z_q * w).sum(), z)
    (g_rot,) = torch.autograd.grad((b.z_q * w).sum(), z)
    assert torch.allclose(g_st, w)
    assert not torch.allclose(g_rot, w, atol=1e-3)
    # known answer: the gradient is (|e| / |z|) R^T w at each position
    e = rot.codebook[b.codes].detach()
    zd = z.detach()
    R = rotation_matrix(zd, e)  # [2, 3, 4, 4]
    scale = e.norm(dim=-1, keepdim=True) / zd.norm(dim=-1, keepdim=True)
    expected = scale * (R.transpose(-1, -2) @ w[..., None])[..., 0]
    assert torch.allclose(g_rot, expected, atol=1e-5)
    # losses are untouched by the option
    assert all(torch.allclose(a.losses[k], b.losses[k]) for k in a.losses)


def test_vq_config_errors_name_the_bad_option():
    import pytest

    with pytest.raises(ValueError, match="codebook_update"):
        VQConfig(codebook_update="kmeans")
    with pytest.raises(ValueError, match="ema_decay"):
        VQConfig(ema_decay=1.0)


def test_kmeans_usage_starts_usage_from_the_kmeans_counts_so_a_high_threshold_keeps_the_codes():
    torch.manual_seed(0)
    centres = torch.randn(16, 4) * 5
    data = (centres.repeat_interleave(5, 0) + 0.01 * torch.randn(80, 4)).view(1, 80, 4)  # 5 vectors each
    cfg = dict(codebook_size=16, dim=4, l2_normalize=False, kmeans_iters=20, usage_decay=0.8, dead_threshold=2.0)
    for update in ("learned", "ema"):
        vq = VectorQuantizer(VQConfig(**cfg, codebook_update=update, kmeans_usage=True)).train()
        q = vq(data)
        assert torch.allclose(vq.usage, torch.full((16,), 5.0)), "usage 0.8 * 5 + 0.2 * 5: none below 2"
        assert torch.cdist(centres, vq.codebook.detach()).min(1).values.max() < 0.1
        assert len(q.codes.unique()) == 16
        if update == "ema":
            # the EMA statistics start from the k-means clusters too: one update keeps each code there
            assert torch.allclose(vq.ema_count, torch.full((16,), 5.0))
    # the old prior, 1 per code: 0.8 * 1 + 0.2 * 5 = 1.8 < 2, so every k-means code is "dead" at step 1
    vq = VectorQuantizer(VQConfig(**cfg)).train()
    vq(data)
    assert torch.equal(vq.usage, torch.full((16,), 4.0)), "all revived at step 1, each given the grace of 4"
    import pytest
    with pytest.raises(ValueError, match="kmeans_usage"):
        VQConfig(kmeans_init=False, kmeans_usage=True)
