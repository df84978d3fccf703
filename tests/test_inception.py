"""Inception-v3 for standard FID: torchvision's architecture and names, both usual weight-file
formats, loaded with weights_only=True from a path the user gives (never downloaded)."""

import datetime

import numpy as np
import pytest
import torch

from latentforge.eval.features import inception_features
from latentforge.eval.inception import FID_CLASSES, InceptionV3, load_inception


def _random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            # positive variances, so batch norm stays finite
            r = torch.rand(v.shape, generator=gen) if k.endswith("running_var") else torch.randn(v.shape, generator=gen)
            state[k] = r * 0.05 + (1.0 if k.endswith(("running_var", "bn.weight")) else 0.0)
        else:
            state[k] = v
    return state


def test_architecture_matches_torchvision():
    # torchvision's inception_v3 (1000 classes, auxiliary head) has 27,161,264 parameters
    assert sum(p.numel() for p in InceptionV3(1000, aux_logits=True).parameters()) == 27_161_264
    names = InceptionV3(1000).state_dict()
    for key, shape in {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                       "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1), "fc.weight": (1000, 2048)}.items():
        assert tuple(names[key].shape) == shape


@pytest.mark.slow
def test_random_pytorch_fid_weights_load_from_a_file_and_give_2048_features(tmp_path):
    model = InceptionV3(FID_CLASSES, fid=True)
    path = tmp_path / "pt_inception.pth"
    torch.save(_random_state(model), path)
    loaded = load_inception(path)
    assert loaded.fid and loaded.AuxLogits is None  # 1008 classes: pytorch-fid's variant
    torch.testing.assert_close(loaded.state_dict()["Mixed_7c.branch_pool.conv.weight"],
                               _random_state(model)["Mixed_7c.branch_pool.conv.weight"])
    features = inception_features(path)
    assert features.info["variant"] == "pytorch-fid" and len(features.hash) == 16
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    f = features(images)
    assert f.shape == (3, 2048) and f.dtype == torch.float64 and torch.isfinite(f).all()
    # one image's features do not depend on its batch
    torch.testing.assert_close(features(images[:1]), f[:1])


def test_torchvision_format_with_aux_head_and_prefix(tmp_path):
    model = InceptionV3(1000, aux_logits=True)
    state = {f"module.{k}": v for k, v in _random_state(model).items()}
    path = tmp_path / "inception_v3_google.pth"
    torch.save({"state_dict": state}, path)
    loaded = load_inception(path)
    assert not loaded.fid and loaded.AuxLogits is not None


def test_bad_files_are_refused_with_the_key_named(tmp_path):
    state = _random_state(InceptionV3(FID_CLASSES, fid=True))
    del state["Mixed_6b.branch1x1.conv.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['Mixed_6b.branch1x1.conv.weight'\]"):
        load_inception(path)
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="no 'fc.weight' key"):
        load_inception(path)

    torch.save({"fc.weight": datetime.timedelta(1)}, path)  # an object only pickle can rebuild
    with pytest.raises(ValueError, match="weights_only=True"):
        load_inception(path)
    with pytest.raises(FileNotFoundError, match="Inception weights file not found"):
        load_inception(tmp_path / "absent.pth")
