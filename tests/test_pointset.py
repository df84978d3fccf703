"""The point-set tokenizer (3DShape2VecSet-style): farthest point sampling known answers, queries that
do not see each other, a set latent spec, and a model that must learn occupancy."""

import dataclasses

import numpy as np
import pytest
import torch

from latentforge.nn.geometry import farthest_point_sample, level_set_points
from latentforge.quantize.gaussian import GaussianConfig
from latentforge.tokenizers.pointset import PointSetConfig, PointSetTokenizer


def test_farthest_point_sampling_known_answer():
    pts = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [1, 0, 0], [0.5, 0, 0], [0.9, 0, 0]]])
    # from point 0 the farthest is 2 (x = 1), then the point farthest from both: 3 (x = 0.5)
    assert farthest_point_sample(pts, 3).tolist() == [[0, 2, 3]]
    with pytest.raises(ValueError, match="1 <= m <= 5"):
        farthest_point_sample(pts, 6)


def test_level_set_of_a_sphere_field():
    axis = torch.linspace(-1, 1, 33)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    inside = (0.6 - grid.norm(dim=-1)).numpy()                               # > 0 inside a sphere of radius 0.6
    pts = level_set_points(inside, 0.0, 500, np.random.default_rng(0))
    assert pts.shape == (500, 3) and np.abs(np.linalg.norm(pts, axis=-1) - 0.6).max() < 0.02
    assert level_set_points(np.ones((8, 8, 8)), 0.5, 10, np.random.default_rng(0)) is None   # nothing crosses


def test_occupancy_of_a_query_does_not_depend_on_the_other_queries():
    tok = PointSetTokenizer(PointSetConfig.tiny()).eval()
    x = torch.rand(2, 64, 3) * 2 - 1
    with torch.no_grad():
        tokens = tok.latent_field(tok.quantize(x).z_q)
        q = torch.rand(2, 10, 3) * 2 - 1
        alone = tok.occupancy_logits(tokens, q[:, :3])
        together = tok.occupancy_logits(tokens, q)
    assert torch.allclose(alone, together[:, :3], atol=1e-5)
    assert tok.spec.grid == (8,) and tok.spec.ordered is False and tok.spec.kind == "continuous"
    with pytest.raises(ValueError, match=r"\[B, 64, 3\]"):
        tok.encode(torch.zeros(2, 32, 3))
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(bad)
    with pytest.raises(ValueError, match="no 'queries'"):
        tok.loss({"points": x})


def test_the_tokenizer_learns_the_occupancy_of_primitives():
    """24 primitives, 120 steps: occupancy IoU on their queries rises from ~0.2 (measured at init)
    to above 0.6 (measured 0.28 -> 0.76), and the decoded surfaces land near the true ones (Chamfer-L2
    0.042, against 0.12 at 200 steps of a model that had not learnt yet)."""
    from latentforge.data.primitives import PrimitivesConfig, PrimitivesData
    from latentforge.modalities.point_metrics import chamfer_l2

    data = PrimitivesData(PrimitivesConfig(points=128, queries=256, train_size=24, val_size=4)).split("train")
    batch = {k: torch.as_tensor(np.asarray(data[k])) for k in ("points", "queries", "occupancy")}
    torch.manual_seed(0)
    tok = PointSetTokenizer(PointSetConfig(points=128, latents=8, dim=48, heads=4, depth=1, bands=6, decode_grid=24,
                                           quantizer=GaussianConfig(dim=16, latent_channels=8, kl_weight=1e-5)))
    opt = torch.optim.AdamW(tok.parameters(), 2e-3)
    first = None
    for _ in range(120):
        out = tok.loss(batch)
        first = first if first is not None else float(out["occupancy_iou"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        final = tok.loss(batch)
        recon = tok(batch["points"])
    assert first < 0.35 and float(final["occupancy_iou"]) > 0.6
    assert float(chamfer_l2(recon, batch["points"]).mean()) < 0.05


def test_multi_resolution_training_draws_the_token_count_per_step():
    """MAR-3D's pyramid: with train_latents, training steps encode with M drawn from {latents} and the
    listed counts (all of them show up), evaluation and `quantize` default to `latents`, and any M
    up to the point count can be asked for."""
    cfg = PointSetConfig.tiny()
    tok = PointSetTokenizer(dataclasses.replace(cfg, train_latents=(2, 5)))
    seen = []
    tok.to_bottleneck.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    batch = {"points": torch.rand(2, 64, 3) * 2 - 1, "queries": torch.rand(2, 16, 3) * 2 - 1,
             "occupancy": torch.rand(2, 16) > 0.5}
    torch.manual_seed(0)
    for _ in range(30):
        tok.loss(batch)
    assert set(seen) == {2, 5, cfg.latents}
    seen.clear()
    tok.eval().loss(batch)
    assert seen == [cfg.latents]
    assert tok.quantize(batch["points"], 3).z_q.shape[:2] == (2, 3)
    with pytest.raises(ValueError, match="latents must be in 1..64"):
        tok.quantize(batch["points"], 65)
    with pytest.raises(ValueError, match=r"train_latents must be in 1..points \(64\)"):
        PointSetConfig(points=64, latents=8, train_latents=(0,))
