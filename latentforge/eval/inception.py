"""Inception-v3 pool features for standard FID, from a weights file the user gives. Never downloads.

    feats = InceptionFeatures.from_file("pt_inception-2015-12-05-6726825d.pth")(images)  # [N, 2048]

The network is written here with torchvision's module names, so both usual weight files load
as they are:
* pytorch-fid's `pt_inception-2015-12-05-*.pth` (the TensorFlow FID network ported): a 1008-way
  classifier, and four blocks that differ from torchvision's. Its average pools leave the zero
  padding out of the mean (`count_include_pad=False`), and the last block pools its pooling
  branch with a max instead of an average. A file whose classifier has 1008 outputs gets that
  variant.
* torchvision's `inception_v3_google-*.pth` (1000 classes, with or without the auxiliary head).
Either may also come as `.safetensors`, inside a {"state_dict": ...} wrapper or with the
"module." prefix DataParallel adds. `torch.load` runs with `weights_only=True`: a file that
needs pickle is refused.

Images are resized to 299x299 (bilinear, as pytorch-fid does) and scaled to [-1, 1], the
input range both weight files were trained with; the features are the 2048 channels after
global average pooling of the last block.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURES = 2048
FID_CLASSES = 1008  # pytorch-fid's port of the TensorFlow graph


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, as the TensorFlow original) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor, fid: bool) -> Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=not fid)


class BlockA(nn.Module):  # 35x35: 1x1 | 5x5 | double 3x3 | pool
    def __init__(self, c_in: int, pool_features: int, fid: bool = False) -> None:
        super().__init__()
        self.fid = fid
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x, self.fid)),
        ], 1)


class BlockB(nn.Module):  # 35x35 -> 17x17
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, 2),
        ], 1)


class BlockC(nn.Module):  # 17x17: factorised 7x7 convolutions
    def __init__(self, c_in: int, c7: int, fid: bool = False) -> None:
        super().__init__()
        self.fid = fid
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        double = x
        for i in range(1, 6):
            double = getattr(self, f"branch7x7dbl_{i}")(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_avg3(x, self.fid)),
        ], 1)


class BlockD(nn.Module):  # 17x17 -> 8x8
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, 2)], 1)


class BlockE(nn.Module):  # 8x8: expanded filter bank; pool = "avg", "avg_fid" or "max" (FID's last block)
    def __init__(self, c_in: int, pool: str = "avg") -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.pool == "max" else _avg3(x, self.pool == "avg_fid")
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], 1)


class AuxHead(nn.Module):
    """torchvision's auxiliary classifier (a training aid): here so its weights load; features
    never pass through it."""

    def __init__(self, c_in: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = ConvBN(c_in, 128, 1)
        self.conv1 = ConvBN(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, 768, 17, 17] -> [B, classes]
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, 3)))
        return self.fc(x.mean((2, 3)))


class InceptionV3(nn.Module):
    """Inception-v3 up to its pool features (and classifier), torchvision's parameter names."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, fid: bool = False) -> None:
        super().__init__()
        self.fid = fid
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32, fid)
        self.Mixed_5c = BlockA(256, 64, fid)
        self.Mixed_5d = BlockA(288, 64, fid)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128, fid)
        self.Mixed_6c = BlockC(768, 160, fid)
        self.Mixed_6d = BlockC(768, 160, fid)
        self.Mixed_6e = BlockC(768, 192, fid)
        self.AuxLogits = AuxHead(768, num_classes) if aux_logits else None
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, "avg_fid" if fid else "avg")
        self.Mixed_7c = BlockE(2048, "max" if fid else "avg")
        self.fc = nn.Linear(FEATURES, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """x: [B, 3, 299, 299] in [-1, 1] -> [B, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle of arbitrary objects, or not a torch file at all
        raise ValueError(f"{path}: not a plain state dict that loads with weights_only=True ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_inception(path: str | os.PathLike) -> InceptionV3:
    """Build the variant the file was saved from (pytorch-fid's FID network or torchvision's)
    and load it strictly: a missing or unexpected key is an error that names it."""
    path = Path(path)
    state = _read_state_dict(path)
    if "fc.weight" not in state:
        raise ValueError(f"{path}: no 'fc.weight' key; not an Inception-v3 state dict "
                         f"(first keys: {', '.join(list(state)[:3])})")
    classes = state["fc.weight"].shape[0]
    model = InceptionV3(num_classes=classes, aux_logits=any(k.startswith("AuxLogits.") for k in state),
                        fid=classes == FID_CLASSES)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{path}: not an Inception-v3 state dict: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}")
    wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: tensors of the wrong shape: {'; '.join(wrong[:3])}")
    model.load_state_dict(state)
    return model.eval()


class InceptionFeatures:
    """uint8 images [N, H, W, 3] -> Inception pool features float64 [N, 2048]."""

    def __init__(self, model: InceptionV3, device: str | torch.device = "cpu", batch_size: int = 50) -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "InceptionFeatures":
        return cls(load_inception(path), device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Tensor:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[i:i + self.batch_size]).to(self.device).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(self.model.features(2 * x - 1).double().cpu())
        return torch.cat(out)
