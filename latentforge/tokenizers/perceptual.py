"""Perceptual distances for image tokenizers: LPIPS (VGG16 / AlexNet) and the offline probe distance.

Pixel losses average away texture: a blurred edge costs little L2. A perceptual distance compares
two images through a frozen convolutional network's feature maps instead (LPIPS, Zhang et al.
2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"; VQGAN's
reconstruction loss adds it to L1):

    d(x_hat, x) = sum_l  mean_{h, w}  w_l . (u_l(x_hat) - u_l(x))^2        per image
    u_l(x)      = f_l(x) / ||f_l(x)||_channels                              unit-length feature vectors

f_l is tap l of the backbone, w_l a learned non-negative 1x1 "linear head" per tap.

* kind "lpips": torchvision's VGG16 (or AlexNet) features, read from the torchvision state dict
  the user has (keys `features.N.weight`, e.g. `vgg16-397923af.pth`), after LPIPS's ScalingLayer
  (ImageNet mean / std expressed on [-1, 1] inputs); the heads from the `lpips` package's layout
  (`lin0..lin4.model.1.weight`), by default the v0.1 file the `lpips` wheel ships when it is
  installed (never required: give `head_weights`).
* kind "probe": the offline default, needing no download. The house's probe network trunk
  (`nn.conv.probe_trunk`, the conv stages of eval/probe.py; a trained probe's `model.safetensors`
  from the probe cache), its five stages as taps, every head all ones: LPIPS's "baseline"
  (lpips=False) form, the squared distance of unit feature vectors summed over channels.

Both stay frozen and in eval mode (the probe's batch norms use their running statistics, so a
distance never depends on the batch); gradients reach only the reconstruction.

Shapes: B batch, C channels, H x W image in [-1, 1]; distances are [B].
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from latentforge.nn.conv import probe_trunk
from latentforge.serialization import read_weights

KINDS: tuple[str, ...] = ("lpips", "probe")
NETS: tuple[str, ...] = ("vgg", "alex")

# LPIPS's ScalingLayer: ImageNet's per-channel mean and std, rewritten for inputs in [-1, 1]
# (shift = 2 * mean - 1, scale = 2 * std, rounded as the lpips package has them).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# Added to the feature norm (the lpips package's normalize_tensor eps).
_NORM_EPS = 1e-10


# --- backbones: torchvision's layouts index for index, so their state dicts load as they are ------

def vgg16_features() -> nn.Sequential:
    """torchvision's `vgg16().features` (13 conv-ReLU pairs, 5 max pools): [B, 3, H, W] -> [B, 512, H/32, W/32]."""
    layers: list[nn.Module] = []
    c_in = 3
    for c in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if c == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            c_in = c
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    """torchvision's `alexnet().features`: [B, 3, H, W] -> [B, 256, ~H/32, ~W/32]."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


# Index of the module after which each tap is read, and its channels. VGG: relu1_2, relu2_2,
# relu3_3, relu4_3, relu5_3; AlexNet: relu1..relu5 (LPIPS's choice); probe: the end of each
# conv-BN-SiLU stage.
TAPS: dict[str, tuple[int, ...]] = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11), "probe": (2, 5, 8, 11, 14)}


def tap_channels(net: str, probe_width: int = 32) -> tuple[int, ...]:
    if net == "probe":
        w = probe_width
        return (w, w, 2 * w, 2 * w, 2 * w)
    return {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}[net]


# --- config ------------------------------------------------------------------------------------

@dataclass
class PerceptualConfig:
    """Which perceptual distance joins an image tokenizer's reconstruction loss, and its weights.

    Attributes:
        kind: "lpips" (VGG16 / AlexNet + linear heads) or "probe" (the probe trunk, equal heads).
        weight: multiplies the batch mean distance in the tokenizer's objective.
        net: the LPIPS backbone, "vgg" or "alex" (kind "lpips" only).
        backbone_weights: kind "lpips": a torchvision vgg16 / alexnet state dict file (keys
            `features.N.weight`); kind "probe": a trained probe's model.safetensors (keys
            `body.N.*`). Read before training (`load_weights`); a saved tokenizer holds them.
        head_weights: kind "lpips": a file in the lpips package's layout (`lin0..lin4.model.1.weight`);
            empty: the lpips package's own v0.1 file for `net` when the package is installed.
        probe_width: kind "probe": the probe's first-stage channels (eval/probe.py's `width`).
    """

    kind: Literal["lpips", "probe"] = "probe"
    weight: float = 1.0
    net: Literal["vgg", "alex"] = "vgg"
    backbone_weights: str = ""
    head_weights: str = ""
    probe_width: int = 32

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PerceptualConfig.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.net not in NETS:
            raise ValueError(f"PerceptualConfig.net: {self.net!r} is not one of {', '.join(NETS)}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"PerceptualConfig.weight must be a finite number >= 0, got {self.weight!r}")
        if isinstance(self.probe_width, bool) or not isinstance(self.probe_width, int) or self.probe_width < 1:
            raise ValueError(f"PerceptualConfig.probe_width must be an integer >= 1, got {self.probe_width!r}")


def lpips_package_heads(net: str) -> Path | None:
    """The v0.1 linear heads the `lpips` wheel ships for `net`, found without importing the package
    (its import pulls in torchvision); None when it is not installed."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / f"{net}.pth"
    return path if path.is_file() else None


def unit_channels(f: Tensor) -> Tensor:
    """[B, C, h, w] -> each position's C-vector divided by its length (+ 1e-10, as LPIPS).

    `vector_norm`, not sqrt(sum f^2): at an all-zero position (every ReLU off) the latter's
    gradient is 0 * inf = NaN, the former's is 0."""
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + _NORM_EPS)


# --- the distance ------------------------------------------------------------------------------

class PerceptualLoss(nn.Module):
    """(x_hat, x) [B, 3, H, W] in [-1, 1] -> distance [B]; frozen, always in eval mode.

    `loaded` is a buffer: True once `load_weights` (or a state dict from a saved tokenizer) gave
    the network real weights, so a forgotten load fails loudly instead of training against a
    random network.
    """

    def __init__(self, config: PerceptualConfig) -> None:
        super().__init__()
        self.config = config
        self.net = config.kind if config.kind == "probe" else config.net
        if self.net == "probe":
            self.features = nn.Sequential(*probe_trunk(config.probe_width))
        else:
            self.features = vgg16_features() if self.net == "vgg" else alexnet_features()
            self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.taps = TAPS[self.net]
        # One 1x1 convolution per tap, no bias (LPIPS's NetLinLayer); the probe's are all ones:
        # equal layer weights, channels summed.
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in tap_channels(self.net, config.probe_width))
        if self.net == "probe":
            for head in self.heads:
                nn.init.ones_(head.weight)
        self.register_buffer("loaded", torch.zeros((), dtype=torch.bool))
        self._parts_loaded: set[str] = set()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # frozen: batch norms keep their running statistics

    # --- weights ---

    @torch.no_grad()
    def load_backbone(self, state: dict[str, Tensor]) -> None:
        """A torchvision vgg16 / alexnet state dict (`features.N.*`; the classifier is ignored), or
        for kind "probe" a probe network's (`body.N.*`; its pooled feature layer and heads are ignored)."""
        prefix = "body." if self.net == "probe" else "features."
        own = self.features.state_dict()
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(f"not a {self.net} backbone state dict: missing {[prefix + k for k in missing[:4]]}"
                             f" (found {list(state)[:4]})")
        self.features.load_state_dict(picked)
        self._mark_loaded("backbone")

    @torch.no_grad()
    def load_heads(self, state: dict[str, Tensor]) -> None:
        """LPIPS linear heads in the lpips package's layout: `lin{i}.model.1.weight` [1, C_i, 1, 1]."""
        if self.net == "probe":
            raise ValueError("kind 'probe' has no learned heads (all ones)")
        for i, head in enumerate(self.heads):
            key = f"lin{i}.model.1.weight"
            if key not in state or state[key].shape != head.weight.shape:
                raise ValueError(f"not {self.net} LPIPS heads: need {key} of shape {list(head.weight.shape)}, "
                                 f"found {list(state)[:6]}")
            head.weight.copy_(state[key])
        self._mark_loaded("heads")

    def _mark_loaded(self, part: str) -> None:
        self._parts_loaded.add(part)
        needed = {"backbone"} if self.net == "probe" else {"backbone", "heads"}
        self.loaded.fill_(needed <= self._parts_loaded)

    def load_weights(self) -> None:
        """Read the files the config names (see `PerceptualConfig`)."""
        cfg = self.config
        if not cfg.backbone_weights:
            hint = ("a probe's model.safetensors (the probe cache, eval/probe.py)" if self.net == "probe"
                    else f"torchvision's {'vgg16' if self.net == 'vgg' else 'alexnet'} state dict file")
            raise ValueError(f"perceptual.backbone_weights is empty: give {hint}")
        self.load_backbone(read_weights(cfg.backbone_weights))
        if self.net != "probe":
            heads = cfg.head_weights or lpips_package_heads(self.net)
            if heads is None:
                raise ValueError("perceptual.head_weights is empty and the lpips package is not installed: "
                                 f"give a file with lin0..lin4.model.1.weight for {self.net}")
            self.load_heads(read_weights(heads))

    # --- forward ---

    def layer_features(self, x: Tensor) -> list[Tensor]:
        """[B, 3, H, W] in [-1, 1] -> the taps' feature maps [B, C_l, h_l, w_l]."""
        h = x if self.net == "probe" else (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features[:self.taps[-1] + 1]):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Distance per image [B]; only x_hat carries a gradient (x is the target)."""
        if not bool(self.loaded):
            raise RuntimeError("perceptual loss without weights: call the tokenizer's before_training() or "
                               "load_weights() first")
        if x_hat.shape != x.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected two images [B, 3, H, W], got {list(x_hat.shape)} and {list(x.shape)}")
        with torch.no_grad():
            target = self.layer_features(x)
        total = x_hat.new_zeros(x_hat.shape[0], dtype=torch.float32)
        for f_hat, f, head in zip(self.layer_features(x_hat), target, self.heads):
            diff = (unit_channels(f_hat.float()) - unit_channels(f.float())).pow(2)  # [B, C_l, h_l, w_l]
            total = total + head(diff).mean(dim=(1, 2, 3))                         # spatial mean -> [B]
        return total


def build_perceptual(config: PerceptualConfig | None) -> PerceptualLoss | None:
    """The tokenizer's perceptual term (None when the config has none)."""
    return None if config is None else PerceptualLoss(config)
