"""Continuous bottlenecks: the Gaussian KL/ARD bottleneck (P11) and the sparse TopK / vSAE (P29)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from latentforge.config import ConfigError, from_dict
from latentforge.quantize.gaussian import GaussianBottleneck, GaussianConfig
from latentforge.quantize.topk import TopKBottleneck, TopKConfig
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

GRIDS = [(), (3,), (3, 4), (2, 3, 4)]  # sequence-free vectors, sequences, images, video


@pytest.fixture(autouse=True)
def _one_thread():
    # Every tensor here has a few thousand elements: thread hand-offs cost more than they save,
    # and on a busy 2-core machine a second spinning thread made these tests 5-10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gaussian_moments(gb: GaussianBottleneck, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference mean and log-variance, straight from the linear map."""
    h = z @ gb.to_moments.weight.T + gb.to_moments.bias
    c = gb.config.latent_channels
    return h[..., :c], h[..., c:]


def _topk_pre(tk: TopKBottleneck, z: torch.Tensor) -> torch.Tensor:
    return z @ tk.encoder.weight.T + tk.encoder.bias


def _bottlenecks() -> list[nn.Module]:
    return [
        GaussianBottleneck(GaussianConfig(dim=6, latent_channels=3, prior="standard")),
        GaussianBottleneck(GaussianConfig(dim=6, latent_channels=3, prior="ard")),
        TopKBottleneck(TopKConfig(dim=6, features=16, k=3, variational=False)),
        TopKBottleneck(TopKConfig(dim=6, features=16, k=3, variational=True)),
    ]


# ---------------------------------------------------------------------------- shared contract

@pytest.mark.parametrize("grid", GRIDS)
def test_shapes_on_any_grid_and_lookup_inverts_codes(grid):
    for q_mod in _bottlenecks():
        assert q_mod.discrete is False
        z = torch.randn(2, *grid, 6)
        for train in (True, False):
            q_mod.train(train)
            q = q_mod(z)
            assert q.z_q.shape == z.shape
            assert q.codes.shape == (2, *grid, q_mod.latent_channels) and q.codes.is_floating_point()
            # the decoder reads exactly the decoded codes, in training and in eval
            torch.testing.assert_close(q_mod.lookup(q.codes), q.z_q, rtol=1e-5, atol=1e-5)
            assert all(not v.requires_grad for v in q.stats.values())


def test_fp32_numerics_under_bf16_autocast():
    z = torch.randn(2, 4, 4, 6)
    for q_mod in _bottlenecks():
        q_mod.eval()
        ref = q_mod(z.bfloat16().float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q = q_mod(z.bfloat16())
        assert q.z_q.dtype == torch.bfloat16
        for name, loss in q.losses.items():
            assert loss.dtype == torch.float32, name
            torch.testing.assert_close(loss, ref.losses[name])  # same fp32 arithmetic, not bf16
        torch.testing.assert_close(q.codes, ref.codes)


def test_conv_tokenizer_runs_with_continuous_bottlenecks():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for qcfg in (GaussianConfig(dim=8, latent_channels=4, prior="ard"), TopKConfig(dim=8, features=32, k=4)):
        tok = ConvTokenizer(ConvConfig(image_size=16, channels=(8, 16), quantizer=qcfg))
        channels = 4 if isinstance(qcfg, GaussianConfig) else 32
        assert tok.spec.kind == "continuous" and tok.spec.channels == channels and tok.spec.grid == (4, 4)
        out = tok.loss({"image": x})
        assert "kl" in out and torch.isfinite(out["loss"])
        out["loss"].backward()
        missing = [n for n, p in tok.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"parameters without gradient: {missing}"
        tok.eval()
        latents = tok.encode(x)
        assert latents.shape == (2, 4, 4, channels)
        assert torch.equal(latents, tok.encode(x)), "eval encoding is deterministic"
        assert tok.decode(latents).shape == x.shape


def test_registry_names_and_config_errors():
    cfg = from_dict(ConvConfig, {"image_size": 16, "quantizer": {"name": "gaussian", "prior": "ard", "dim": 8}})
    assert isinstance(cfg.quantizer, GaussianConfig) and cfg.quantizer.prior == "ard"
    cfg = from_dict(ConvConfig, {"image_size": 16, "quantizer": {"name": "topk", "k": 4, "variational": False}})
    assert isinstance(cfg.quantizer, TopKConfig) and cfg.quantizer.variational is False
    with pytest.raises(ConfigError, match=r"quantizer\.prior.*'gauss'"):
        from_dict(ConvConfig, {"quantizer": {"name": "gaussian", "prior": "gauss"}})
    with pytest.raises(ConfigError, match=r"quantizer.*k must be in \[1, features=8\], got 9"):
        from_dict(ConvConfig, {"quantizer": {"name": "topk", "features": 8, "k": 9}})
    with pytest.raises(ValueError, match="latent_channels must be >= 1, got 0"):
        GaussianConfig(latent_channels=0)
    with pytest.raises(ValueError, match="kl_weight must be >= 0"):
        TopKConfig(kl_weight=-1.0)
    with pytest.raises(ValueError, match="logvar_init 3.0 lies outside"):
        TopKConfig(logvar_init=3.0)
    gb = GaussianBottleneck(GaussianConfig(dim=6, latent_channels=3))
    with pytest.raises(ValueError, match=r"encoder outputs \[B, \*grid, 6\], got \[2, 5, 4\]"):
        gb(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"latents \[B, \*grid, 3\], got \[2, 5, 4\]"):
        gb.lookup(torch.randn(2, 5, 4))
    tk = TopKBottleneck(TopKConfig(dim=6, features=16, k=3))
    with pytest.raises(ValueError, match=r"feature codes \[B, \*grid, 16\], got \[2, 6\]"):
        tk.lookup(torch.randn(2, 6))


# ---------------------------------------------------------------------------- Gaussian / ARD

@pytest.mark.parametrize("prior", ["standard", "ard"])
def test_gaussian_kl_matches_torch_distributions(prior):
    gb = GaussianBottleneck(GaussianConfig(dim=6, latent_channels=3, prior=prior, kl_weight=0.1)).eval()
    alpha = torch.tensor([0.3, 1.7, 4.0])
    with torch.no_grad():
        gb.alpha.copy_(alpha)  # the standard prior must ignore it
        gb.to_moments.weight.mul_(3)  # spread log-variances well away from 0
    z = torch.randn(2, 5, 4, 6)
    q = gb(z)
    mean, logvar = _gaussian_moments(gb, z)
    prior_std = alpha.sqrt() if prior == "ard" else torch.ones(3)
    ref = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros(3), prior_std))  # [2, 5, 4, 3]
    torch.testing.assert_close(q.stats["kl_per_dim"], ref.mean((0, 1, 2)))
    torch.testing.assert_close(q.stats["kl_nats"], ref.sum(-1).mean())
    torch.testing.assert_close(q.losses["kl"], 0.1 * ref.sum(-1).mean())


def test_gaussian_eval_is_the_mean_and_training_samples_with_the_generator():
    gb = GaussianBottleneck(GaussianConfig(dim=6, latent_channels=3))
    z = torch.randn(4, 7, 6)
    mean, logvar = _gaussian_moments(gb, z)
    gb.eval()
    q1, q2 = gb(z), gb(z)
    assert torch.equal(q1.codes, q2.codes) and torch.equal(q1.z_q, q2.z_q)
    torch.testing.assert_close(q1.codes, mean)
    torch.testing.assert_close(q1.z_q, gb.lookup(mean))  # the decoder reads the mean too
    gb.train()
    q = gb(z, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(q.codes, mean + (0.5 * logvar).exp() * eps)
    assert not torch.allclose(q.codes, mean)


def test_ard_prior_update_is_the_running_second_moment():
    gb = GaussianBottleneck(GaussianConfig(dim=6, latent_channels=3, prior="ard", ard_decay=0.9))
    z = torch.randn(8, 5, 6)
    mean, logvar = _gaussian_moments(gb, z)
    q = gb.train()(z)
    # the step's KL is scored against the prior before the update (alpha = 1: a standard VAE)
    ref = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean((0, 1))
    torch.testing.assert_close(q.stats["kl_per_dim"], ref)
    flat_mean, flat_logvar = mean.reshape(-1, 3), logvar.reshape(-1, 3)
    second = (flat_mean.square() + flat_logvar.exp()).mean(0)
    torch.testing.assert_close(gb.alpha, 0.9 + 0.1 * second)
    torch.testing.assert_close(gb.mean_spread, 0.1 * flat_mean.var(0, correction=0))
    before = gb.alpha.clone()
    gb.eval()(z)
    assert torch.equal(gb.alpha, before), "eval must not move the prior"
    with torch.no_grad():
        gb.alpha.fill_(1e-9)
    assert torch.equal(gb.prior_variance(), torch.full((3,), 1e-4)), "floor"


def test_relevance_and_active_dims_known_values():
    cfg = GaussianConfig(dim=3, latent_channels=3, prior="ard", active_threshold=0.01)
    gb = GaussianBottleneck(cfg).eval()
    with torch.no_grad():
        gb.alpha.copy_(torch.tensor([1.0, 1.0, 4.0]))
        gb.mean_spread.copy_(torch.tensor([0.9, 0.1, 3.0]))
        # mean_c = s_c * z_c with s = (1, 0.05, 0): batch variances 1, 0.0025, 0
        gb.to_moments.weight.zero_()
        gb.to_moments.bias.zero_()
        gb.to_moments.weight[:3].copy_(torch.diag(torch.tensor([1.0, 0.05, 0.0])))
    torch.testing.assert_close(gb.relevance(), torch.tensor([0.9, 0.1, 0.75]))
    assert gb.relevant_dims().tolist() == [True, False, True]
    q = gb(torch.randn(4096, 3))
    assert q.stats["relevant_dims"] == 2 and q.stats["active_dims"] == 1
    torch.testing.assert_close(q.stats["alpha"], gb.alpha)


def _train_factor_vae(prior: str, steps: int = 300) -> tuple[GaussianBottleneck, float, torch.Tensor]:
    """A tiny MLP VAE (8 latent channels) on 16-d data made from k = 3 linear factors + noise.

    The loss is the ELBO of a Gaussian decoder with noise std s = 0.2 (per-element MSE +
    kl_weight * KL with kl_weight = 2 s^2 / 16). By the linear-VAE / probabilistic-PCA analysis, a
    direction is worth a latent dimension only when the data vary along it more than s^2 = 0.04:
    the 3 factor directions (variance 1) do, the 13 noise directions (variance 0.0025) do not.
    """
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(16, 3, generator=gen))  # [16, 3] orthonormal columns
    torch.manual_seed(1)
    enc = nn.Sequential(nn.Linear(16, 64), nn.SiLU(), nn.Linear(64, 32))
    bottleneck = GaussianBottleneck(GaussianConfig(dim=32, latent_channels=8, prior=prior, kl_weight=2 * 0.2**2 / 16))
    dec = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 16))
    model = nn.ModuleList([enc, bottleneck, dec])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(n: int) -> torch.Tensor:
        factors = torch.randn(n, 3, generator=gen)
        return factors @ basis.T + 0.05 * torch.randn(n, 16, generator=gen)  # [n, 16]

    for _ in range(steps):
        x = batch(256)
        q = bottleneck(enc(x), generator=gen)
        loss = F.mse_loss(dec(q.z_q), x) + q.losses["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x = batch(2048)
        q = bottleneck(enc(x))
        mse = float(F.mse_loss(dec(q.z_q), x))
    return bottleneck, mse, q.stats["kl_per_dim"]


def test_ard_finds_the_number_of_factors():
    """P11's claim: with the ARD prior about k latent dimensions come out relevant (k = 3 of 8)."""
    ard, ard_mse, ard_kl = _train_factor_vae("ard")
    std, std_mse, std_kl = _train_factor_vae("standard")
    n_ard, n_std = int(ard.relevant_dims().sum()), int(std.relevant_dims().sum())
    print(f"\nrelevant dims (k = 3): ard {n_ard}, standard {n_std}")
    for name, b, mse, kl in (("ard", ard, ard_mse, ard_kl), ("standard", std, std_mse, std_kl)):
        print(f"  {name:8s} relevance {b.relevance().numpy().round(2)}  kl/dim {kl.numpy().round(2)}  "
              f"alpha {b.alpha.numpy().round(3)}  mse {mse:.4f}")
    assert abs(n_ard - 3) <= 1
    assert ard_mse < 0.04, "the relevant dimensions must carry the factors, not just exist"
    # unused dimensions match the prior and cost (almost) no KL; used ones carry nats
    relevant = ard.relevant_dims()
    assert ard_kl[~relevant].max() < 0.05 and ard_kl[relevant].min() > 0.5


# ---------------------------------------------------------------------------- TopK / vSAE

def test_topk_keeps_exactly_k_largest_and_relu_can_leave_fewer():
    tk = TopKBottleneck(TopKConfig(dim=8, features=32, k=5, variational=False)).eval()
    z = torch.randn(3, 4, 5, 8)
    with torch.no_grad():
        tk.encoder.bias.fill_(20.0)  # every pre-activation positive: ReLU removes nothing
    q = tk(z)
    pre = _topk_pre(tk, z)
    assert ((q.codes != 0).sum(-1) == 5).all()
    expected = torch.zeros_like(pre).scatter(-1, pre.topk(5, -1).indices, pre.topk(5, -1).values)
    torch.testing.assert_close(q.codes, expected)
    assert q.stats["l0"] == 5
    with torch.no_grad():
        tk.encoder.bias.fill_(-1.5)  # now many positions have fewer than k positive entries
    q = tk(z)
    pre = _topk_pre(tk, z)
    nnz = (q.codes != 0).sum(-1)
    assert torch.equal(nnz, (pre > 0).sum(-1).clamp(max=5))
    assert (nnz < 5).any() and (q.codes >= 0).all()


def test_plain_topk_is_deterministic_and_has_no_loss():
    tk = TopKBottleneck(TopKConfig(dim=6, features=16, k=3, variational=False)).train()
    z = torch.randn(2, 3, 4, 6)
    q1, q2 = tk(z), tk(z)
    assert torch.equal(q1.codes, q2.codes) and torch.equal(q1.z_q, q2.z_q) and q1.losses == {}
    assert not hasattr(tk, "to_logvar")


def test_decoder_columns_are_unit_norm():
    tk = TopKBottleneck(TopKConfig(dim=6, features=16, k=3))
    with torch.no_grad():
        tk.decoder.weight.mul_(torch.linspace(0.1, 5.0, 16))  # scaling a column must not matter
        tk.decoder.bias.normal_()
    atoms = tk.lookup(torch.eye(16)) - tk.decoder.bias  # [16, 6]: one dictionary atom per row
    torch.testing.assert_close(atoms.norm(dim=-1), torch.ones(16))


def test_vsae_samples_on_the_kept_features_and_kl_matches_reference():
    cfg = TopKConfig(dim=6, features=16, k=4, variational=True, kl_weight=0.3)
    tk = TopKBottleneck(cfg)
    with torch.no_grad():
        tk.to_logvar.weight.normal_(0, 0.5)  # log-variances that differ per feature and position
    z = torch.randn(2, 5, 3, 6)
    pre = _topk_pre(tk, z)
    kept = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, pre.topk(4, -1).indices, True) & (pre > 0)
    mean = torch.where(kept, pre, 0.0)
    logvar = (z @ tk.to_logvar.weight.T + tk.to_logvar.bias).clamp(-6, 2)
    q_eval = tk.eval()(z)
    torch.testing.assert_close(q_eval.codes, mean)  # eval: the means, deterministic
    q = tk.train()(z, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(pre.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(q.codes, torch.where(kept, mean + (0.5 * logvar).exp() * eps, 0.0))
    assert torch.equal(q.codes != 0, kept), "sampling never adds features"
    std = (0.5 * logvar[kept]).exp()
    ref = kl_divergence(Normal(mean[kept], std), Normal(0.0, 1.0)).sum() / kept.shape[:-1].numel()
    torch.testing.assert_close(q.stats["kl_nats"], ref)
    torch.testing.assert_close(q.losses["kl"], 0.3 * ref)
    for qq in (q, q_eval):
        torch.testing.assert_close(qq.losses["kl"], q.losses["kl"])  # KL uses means, not samples


def test_dead_feature_accounting_when_some_features_can_never_win():
    tk = TopKBottleneck(TopKConfig(dim=4, features=8, k=2, variational=False, dead_window=3)).train()
    with torch.no_grad():
        # features 0-3 read one input coordinate each; features 4-7 are stuck at -10 and can
        # never enter the top 2, since a position always has coordinates above -10
        tk.encoder.weight.zero_()
        tk.encoder.weight[:4].copy_(torch.eye(4))
        tk.encoder.bias.copy_(torch.tensor([0.0] * 4 + [-10.0] * 4))
    z = torch.randn(64, 4)
    for step in range(1, 4):
        q = tk(z)
        assert q.stats["feature_usage"] == 0.5
        assert q.stats["dead_features"] == (4 if step >= 3 else 0), f"step {step}"
        assert q.stats["living_features"] == 8 - q.stats["dead_features"]
    assert tk.dead_features().tolist() == [False] * 4 + [True] * 4
    assert tk.eval()(z).stats["dead_features"] == 4
    tk.eval()(z)  # eval passes do not count
    assert tk.idle_steps.tolist() == [0] * 4 + [3] * 4
    # the gradient never reaches a feature that is never kept
    tk.train()
    tk(z).z_q.square().sum().backward()
    assert (tk.encoder.weight.grad[4:] == 0).all() and (tk.encoder.weight.grad[:4] != 0).any()
    # one step where feature 4 wins brings it back to life
    with torch.no_grad():
        tk.encoder.bias[4] = 100.0
    q = tk(z)
    assert q.stats["dead_features"] == 3 and tk.idle_steps[4] == 0
    assert tk.dead_features().tolist() == [False] * 5 + [True] * 3
