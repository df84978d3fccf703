"""Point-MAE (P17): grouping known answers, the encoder sees visible groups only, and a model that
must learn (masked-group Chamfer below the predict-the-mean-group baseline)."""

import dataclasses

import numpy as np
import pytest
import torch

from latentforge.pretraining.point_mae import PointMAE, PointMAEConfig, group_points


def test_groups_are_centred_neighbourhoods():
    pts = torch.rand(2, 64, 3) * 2 - 1
    centres, patches = group_points(pts, 8, 4)
    assert centres.shape == (2, 8, 3) and patches.shape == (2, 8, 4, 3)
    # each centre is one of the points and its own nearest neighbour: the first offset is zero
    assert torch.allclose(patches[:, :, 0], torch.zeros(2, 8, 3))
    assert PointMAEConfig(groups=10, mask_ratio=0.6).masked == 6
    with pytest.raises(ValueError, match=r"P >= 8"):
        group_points(torch.zeros(1, 5, 3), 8, 4)


def test_the_encoder_never_sees_masked_groups():
    """Changing a masked group's points leaves the encoder's input unchanged, so the loss changes only
    through the target: the visible tokens' encodings are equal."""
    torch.manual_seed(0)
    model = PointMAE(PointMAEConfig.tiny()).eval()
    pts = torch.rand(1, 32, 3) * 2 - 1
    centres, patches = group_points(pts, 8, 4)
    mask = model.random_mask(1, pts.device, torch.Generator().manual_seed(0))
    vis = (~mask).nonzero()[:, 1]
    tokens = model.embed(patches)
    moved = patches.clone()
    moved[0, mask[0]] += 0.3                                   # move every masked group's points
    a = model.encode(tokens[:, vis], centres[:, vis])
    b = model.encode(model.embed(moved)[:, vis], centres[:, vis])
    assert torch.allclose(a, b)


@pytest.mark.parametrize("in_encoder", [False, True])
def test_mask_tokens_enter_the_encoder_only_in_the_ablation(in_encoder):
    """Point-MAE's design puts the mask tokens in the decoder only (the encoder runs on the V visible
    groups); the ablation runs the encoder on all G, with the masked groups' tokens replaced by
    the shared mask token."""
    torch.manual_seed(0)
    model = PointMAE(dataclasses.replace(PointMAEConfig.tiny(), mask_tokens_in_encoder=in_encoder))
    seen = []
    model.encoder[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    pts = torch.rand(2, 32, 3) * 2 - 1
    model.loss({"points": pts}, generator=torch.Generator().manual_seed(0))
    G, M = model.config.groups, model.config.masked
    assert seen == [G if in_encoder else G - M]


@pytest.mark.parametrize("in_encoder", [False, True])
def test_point_mae_learns_to_fill_masked_groups(in_encoder):
    """Primitives, 256 points, 16 groups of 16, 150 steps: the masked groups' Chamfer falls well
    below the mean-group baseline, with the mask tokens in the decoder (Point-MAE) or in the
    encoder (its ablation); features are [N, 2D]."""
    from latentforge.data.primitives import PrimitivesConfig, PrimitivesData

    pts = torch.from_numpy(PrimitivesData(PrimitivesConfig(points=256, queries=2, train_size=64, val_size=2))
                           .split("train")["points"])
    torch.manual_seed(0)
    model = PointMAE(PointMAEConfig(groups=16, group_size=16, dim=64, depth=2, decoder_depth=1, heads=4,
                                    mask_tokens_in_encoder=in_encoder))
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        out = model.loss({"points": pts[torch.randint(0, 64, (16,), generator=g)]}, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = model.loss({"points": pts}, generator=torch.Generator().manual_seed(1))
    # measured 0.024 against 0.056
    assert float(final["chamfer"]) < 0.6 * float(final["mean_group_chamfer"])
    assert model.features(pts[:5].numpy()).shape == (5, 128)
    assert np.isfinite(model.features(pts[:5]).numpy()).all()


def test_probe_fpd_is_cached_and_ranks_real_shapes_first(tmp_path, monkeypatch):
    from latentforge.data.primitives import PrimitivesConfig, PrimitivesData
    from latentforge.eval import point_fpd
    from latentforge.eval.distribution import fid
    from latentforge.eval.features import FEATURES, points_features

    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path))
    data = PrimitivesData(PrimitivesConfig(points=128, queries=2, train_size=48, val_size=40))
    features = point_fpd.dataset_features(data, None, "cpu", progress=False, steps=5, train_shapes=48)
    assert features.name == "point-mae-probe" and features.info["comparable_with_published_fpd"] is False
    again = point_fpd.dataset_features(data.resized(train_size=8), None, "cpu", progress=False, steps=5, train_shapes=48)
    assert again.hash == features.hash and FEATURES["points"] is points_features
    val, test = data.split("val")["points"], data.split("test")["points"]
    a = features(val)
    base = data.modality.baselines(data.split("train")["points"], 40, seed=0)
    real = fid(a, features(test))
    assert real < fid(a, features(base["uniform in the cube"])) and real < fid(a, features(base["mean-radius sphere"]))
    # MMD / COV / 1-NNA under Chamfer beside the features (the modality's sample_set_metrics): real
    # test shapes cover the val set better than the trivial baselines, and sit closer to it
    sets = {name: data.modality.sample_set_metrics(fake, val) for name, fake in
            (("real", test), ("cube", base["uniform in the cube"]), ("sphere", base["mean-radius sphere"]))}
    assert sets["real"]["mmd_cd"] < min(sets["cube"]["mmd_cd"], sets["sphere"]["mmd_cd"])
    assert sets["real"]["cov_cd"] > max(sets["cube"]["cov_cd"], sets["sphere"]["cov_cd"])
    assert sets["cube"]["1nna_cd"] == 1.0 and sets["real"]["1nna_cd"] < 0.9
