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

Images are uint8 [N, H, W, 3] (generated images are quantised before anything: latentforge
rounds, `round((x + 1) * 127.5)`; ADM's sampler truncates, `uint8((x + 1) * 127.5)`), resized
to 299x299 and scaled for the network by one of three conventions (`resize=`), each the one a
reference tool uses, so its numbers can be matched exactly:

| resize          | used by                                    | resize                                   | scale           |
|-----------------|--------------------------------------------|------------------------------------------|-----------------|
| "pytorch-fid"   | pytorch-fid, clean-fid "legacy_pytorch"    | torch bilinear, half-pixel centres, on   | x/127.5 - 1     |
|   (default)     |                                            |   floats, no antialias                   |                 |
| "tf1"           | TF FID / ADM evaluator (the TF graph's own | TensorFlow 1 bilinear: source = out *    | (x - 128) / 128 |
|                 |   ResizeBilinear), torch-fidelity          |   in/out, no half-pixel offset           |                 |
| "clean-fid"     | clean-fid "clean"                          | PIL bicubic per channel on float32       | (x - 128) / 128 |
|                 |                                            |   (antialiased when shrinking), clip     |                 |

Outputs (`InceptionFeatures.outputs`), all float64:
* pool [N, 2048]: global average of the last block, FID's features (TF: `pool_3`).
* spatial [N, 2023]: sFID's features (Nash et al. 2021, ADM's evaluator): the first 7 channels of
  TF's `mixed_6/conv`, flattened in TF's (H, W, C) order, 17 x 17 x 7. `mixed_6` is the seventh
  mixed block, torchvision's `Mixed_6d` (torch-fidelity's weight converter maps
  `mixed_6/conv` -> `Mixed_6d.branch1x1`), and `mixed_6/conv` its 1x1 branch after batch norm
  and ReLU, which is the first 192 channels of `Mixed_6d`'s output.
* logits [N, classes] and logits_unbiased (pool @ fc.weight.T, no bias): the Inception Score's
  classifier. ADM and the original improved-GAN code feed the softmax `pool_3 @ W` without the
  bias; torch-fidelity calls that `logits_unbiased`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURES = 2048
FID_CLASSES = 1008  # pytorch-fid's port of the TensorFlow graph
SIZE = 299
SPATIAL_CHANNELS = 7  # ADM's evaluator keeps mixed_6/conv[..., :7]
SPATIAL = SPATIAL_CHANNELS * 17 * 17  # 2023
RESIZES = ("pytorch-fid", "tf1", "clean-fid")


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

    def taps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, 3, 299, 299] in [-1, 1] -> pool [B, 2048], spatial [B, 17, 17, 7] (TF's
        mixed_6/conv[..., :7]: Mixed_6d's first channels are its 1x1 branch, concatenated first)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
            if name == "6d":
                spatial = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # [B, 17, 17, 7], TF's NHWC
        return x.mean((2, 3)), spatial

    def features(self, x: Tensor) -> Tensor:
        """x: [B, 3, 299, 299] in [-1, 1] -> [B, 2048]."""
        return self.taps(x)[0]

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


def resize_tf1_bilinear(x: Tensor, size: int = SIZE) -> Tensor:
    """TensorFlow 1's ResizeBilinear (align_corners=False): output pixel i samples the input at
    i * in/out, with no half-pixel offset, so the image shifts by up to half a pixel against
    torch's bilinear. x: float [B, C, H, W] -> [B, C, size, size]. Rows are blended first, then
    columns, in float32 coordinates, as TF and torch-fidelity do (so the result matches bit for bit)."""
    def axis(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        src = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = src.long()
        return lo, (lo + 1).clamp_max(n_in - 1), src - lo.to(src.dtype)
    lo_x, hi_x, dx = axis(x.shape[3])
    lo_y, hi_y, dy = axis(x.shape[2])
    rows = x[..., lo_x] + (x[..., hi_x] - x[..., lo_x]) * dx  # [B, C, H, size]
    top, bottom = rows[:, :, lo_y], rows[:, :, hi_y]
    return top + (bottom - top) * dy[:, None]  # [B, C, size, size]


def resize_pil_bicubic(images: np.ndarray, size: int = SIZE) -> Tensor:
    """clean-fid's "clean" resize: each channel as a float32 PIL image, bicubic (PIL filters
    with a support widened by the scale when shrinking, i.e. antialiased), clipped to [0, 255].
    uint8 [B, H, W, 3] -> float32 [B, 3, size, size] in [0, 255]."""
    from PIL import Image

    out = np.empty((len(images), 3, size, size), np.float32)
    for i, image in enumerate(images):
        for c in range(3):
            channel = Image.fromarray(image[:, :, c].astype(np.float32))  # mode "F"
            out[i, c] = np.asarray(channel.resize((size, size), resample=Image.BICUBIC))
    return torch.from_numpy(out.clip(0, 255))


def prepare(images: np.ndarray, resize: str = "pytorch-fid", device: str | torch.device = "cpu") -> Tensor:
    """uint8 [B, H, W, 3] -> the network's input [B, 3, 299, 299], by a reference's convention
    (the table in the module docstring)."""
    if resize == "clean-fid":
        return (resize_pil_bicubic(images).to(device) - 128) / 128
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()  # [B, 3, H, W] in [0, 255]
    if resize == "tf1":
        return (resize_tf1_bilinear(x) - 128) / 128
    if resize == "pytorch-fid":
        x = F.interpolate(x / 255, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1
    raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")


@dataclass
class InceptionOutputs:
    """What the paper metrics read from one pass of the network, float64 on the CPU."""
    pool: Tensor              # [N, 2048]  FID, KID, precision/recall
    spatial: Tensor           # [N, 2023]  sFID: mixed_6/conv[..., :7], (H, W, C) order
    logits: Tensor            # [N, classes]  fc with its bias
    logits_unbiased: Tensor   # [N, classes]  pool @ fc.weight.T: the Inception Score's (ADM, torch-fidelity)


class InceptionFeatures:
    """uint8 images [N, H, W, 3] -> Inception pool features float64 [N, 2048] (call), or every
    output the paper metrics need (`outputs`). `resize`: "pytorch-fid" (default), "tf1" or
    "clean-fid", the convention of the reference to match (module docstring)."""

    def __init__(self, model: InceptionV3, device: str | torch.device = "cpu", batch_size: int = 50,
                 resize: str = "pytorch-fid") -> None:
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.resize = resize

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                  resize: str = "pytorch-fid") -> "InceptionFeatures":
        return cls(load_inception(path), device, resize=resize)

    @torch.no_grad()
    def outputs(self, images: np.ndarray) -> InceptionOutputs:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
        pools, spatials = [], []
        for i in range(0, len(images), self.batch_size):
            pool, spatial = self.model.taps(prepare(images[i:i + self.batch_size], self.resize, self.device))
            pools.append(pool.double().cpu())
            spatials.append(spatial.reshape(len(spatial), -1).double().cpu())  # [B, 2023]
        pool = torch.cat(pools)
        # the classifier in float64: the softmax of IS is sensitive to rounding in its logits
        weight, bias = self.model.fc.weight.detach().double().cpu(), self.model.fc.bias.detach().double().cpu()
        unbiased = pool @ weight.T
        return InceptionOutputs(pool, torch.cat(spatials), unbiased + bias, unbiased)

    def __call__(self, images: np.ndarray) -> Tensor:
        return self.outputs(images).pool
