"""Causal, factorised (2D + 1D) convolution blocks for video.

Legend: B batch, C channels, T frames, H x W frame size. Every module here reads and writes
channels-first clips [B, C, T, H, W] (Conv3d's layout); 2D pieces run on each frame alone
through `to_frames` / `from_frames` ([B, C, T, H, W] <-> [B*T, C, H, W]).

Causality in time: output frame t depends on input frames <= t only. The temporal convolutions
pad the *front* of the clip (by replicating frame 0: a still image looks like a clip that has
been still forever, so an image and a static clip give the same features), and every spatial
layer, GroupNorm included, works on one frame at a time. A GroupNorm over (C, T, H, W), the
usual choice of 3D VAEs, would let later frames shift the statistics that normalise earlier
ones (and make a clip's first frame encode differently from the same image alone); per-frame
normalisation is what makes the causality exact.

Time resampling keeps the first frame alone (MAGVIT-v2, CogVideoX, Step-Video: the "1 + k f"
frame rule):
  TimeDownsample  1 + 2m -> 1 + m frames: a causal stride-2 conv, output j sees frames 2j-2..2j
  TimeUpsample    1 + m -> 1 + 2m frames: each frame twice, the first copy of frame 0 dropped,
                  then a causal conv

Spatial resampling with a space-to-channel shortcut (P16 Step-Video's VAE, as DC-AE): the
downsampler is conv -> pixel-unshuffle plus a parameter-free pixel-unshuffle + channel-average
shortcut; the upsampler is conv -> pixel-shuffle plus a channel-duplicate + pixel-shuffle shortcut.

Temporal convolutions start as the identity over time (the last tap is the identity matrix,
the others zero), so a video network built from an image network computes, at step 0, exactly
what the image network computes on each frame (VideoVAE+ gets the same from zero-initialised
residual temporal convs).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.conv import Downsample, Upsample, group_norm

TimePad = Literal["replicate", "zeros"]

# --------------------------------------------------------------------------------------------
# Frames <-> clips
# --------------------------------------------------------------------------------------------


def to_frames(x: Tensor) -> Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W] (frame-major: frame t of clip b is row b*T + t)."""
    B, C, T, H, W = x.shape
    return x.transpose(1, 2).reshape(B * T, C, H, W)


def from_frames(f: Tensor, batch: int) -> Tensor:
    """[B*T, C, H, W] -> [B, C, T, H, W] (a view; the inverse of `to_frames`)."""
    BT, C, H, W = f.shape
    return f.view(batch, BT // batch, C, H, W).transpose(1, 2)


def per_frame(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2D module to every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    return from_frames(module(to_frames(x)), x.shape[0])


# --------------------------------------------------------------------------------------------
# Causal temporal convolution and time resampling
# --------------------------------------------------------------------------------------------


class CausalTemporalConv(nn.Module):
    """1D convolution over time at every pixel, padded at the front only.

    [B, Cin, T, H, W] -> [B, Cout, (T-1)//stride + 1, H, W]; output frame j reads input frames
    j*stride - (kernel-1) .. j*stride. Frames before 0 are copies of frame 0 ("replicate") or
    zeros. The weights live in an `nn.Conv1d` (weight [Cout, Cin, kernel]); forward runs them as
    a (kernel x 1) Conv2d over [B, C, T, H*W], which needs no transpose.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, pad: TimePad = "replicate") -> None:
        super().__init__()
        if pad not in ("replicate", "zeros"):
            raise ValueError(f"pad must be 'replicate' or 'zeros', got {pad!r}")
        self.kernel, self.stride, self.pad = kernel, stride, pad
        self.conv = nn.Conv1d(cin, cout, kernel, stride)
        if cin == cout:
            self.reset_identity()

    @torch.no_grad()
    def reset_identity(self) -> None:
        """Identity over time: out[t] = in[t * stride] (last tap = I, other taps and bias 0)."""
        w = self.conv.weight  # [Cout, Cin, k]
        if w.shape[0] != w.shape[1]:
            raise ValueError(f"an identity needs Cin == Cout, got {w.shape[1]} -> {w.shape[0]}")
        w.zero_()
        w[:, :, -1].copy_(torch.eye(w.shape[0], dtype=w.dtype, device=w.device))
        self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        B, C, T, H, W = x.shape
        front = self.kernel - 1
        if front:
            head = x[:, :, :1].expand(B, C, front, H, W) if self.pad == "replicate" else x.new_zeros(B, C, front, H, W)
            x = torch.cat([head, x], dim=2)  # [B, C, T + k - 1, H, W]
        y = F.conv2d(x.reshape(B, C, T + front, H * W), self.conv.weight.unsqueeze(-1), self.conv.bias,
                     stride=(self.stride, 1))  # [B, Cout, T', H*W]
        return y.view(B, y.shape[1], y.shape[2], H, W)


def check_odd_frames(x: Tensor, what: str) -> None:
    T = x.shape[2]
    if T < 1 or (T - 1) % 2:
        raise ValueError(f"{what} takes 1 + 2m frames (the first frame stays alone), got {T}")


class TimeDownsample(nn.Module):
    """Halve time causally: [B, C, 1 + 2m, H, W] -> [B, C, 1 + m, H, W].

    A kernel-3, stride-2 causal conv (front pad 2): output 0 sees frame 0 only, output j >= 1
    sees frames 2j-2, 2j-1, 2j. Starts as "pick frame 2j".
    """

    def __init__(self, channels: int, pad: TimePad = "replicate") -> None:
        super().__init__()
        self.conv = CausalTemporalConv(channels, channels, 3, stride=2, pad=pad)

    def forward(self, x: Tensor) -> Tensor:
        check_odd_frames(x, "TimeDownsample")
        return self.conv(x)


class TimeUpsample(nn.Module):
    """Double time causally: [B, C, 1 + m, H, W] -> [B, C, 1 + 2m, H, W].

    Frames [z0, z1, z2, ...] -> [z0, z1, z1, z2, z2, ...] (each twice, the first copy of z0
    dropped: frame 0 stays alone), then a causal kernel-3 conv. Output frames 2j-1 and 2j come
    from z_j and earlier. Starts as the plain repeat.
    """

    def __init__(self, channels: int, pad: TimePad = "replicate") -> None:
        super().__init__()
        self.conv = CausalTemporalConv(channels, channels, 3, pad=pad)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.repeat_interleave(2, dim=2)[:, :, 1:])


# --------------------------------------------------------------------------------------------
# Residual blocks
# --------------------------------------------------------------------------------------------


class FactorisedResBlock(nn.Module):
    """`nn.conv.ResBlock` with a causal temporal conv after each spatial conv ((2+1)D).

    [B, Cin, T, H, W] -> [B, Cout, T, H, W]:
        h = tconv1(conv1(silu(norm1(x))))      norm1, conv1: per frame; tconv1: causal in time
        h = tconv2(conv2(silu(norm2(h))))
        out = skip(x) + h                      skip: 1x1 per frame (or identity)
    The spatial parameters have ResBlock's names and shapes, so a ResBlock's state dict loads
    into it (strict=False: only tconv1/tconv2 are new) and, the temporal convs being the
    identity at init, the block then computes exactly the ResBlock on every frame.
    """

    def __init__(self, cin: int, cout: int, pad: TimePad = "replicate") -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.tconv1 = CausalTemporalConv(cout, cout, 3, pad=pad)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.tconv2 = CausalTemporalConv(cout, cout, 3, pad=pad)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        h = self.tconv1(from_frames(self.conv1(F.silu(self.norm1(to_frames(x)))), B))
        h = self.tconv2(from_frames(self.conv2(F.silu(self.norm2(to_frames(h)))), B))
        return per_frame(self.skip, x) + h


class TemporalResBlock(nn.Module):
    """Residual block of causal temporal convs only (a light motion compressor's block, P19):
    GroupNorm (per frame) - SiLU - causal conv over time, twice, plus a skip.
    [B, Cin, T, H, W] -> [B, Cout, T, H, W]."""

    def __init__(self, cin: int, cout: int, pad: TimePad = "replicate") -> None:
        super().__init__()
        self.norm1, self.tconv1 = group_norm(cin), CausalTemporalConv(cin, cout, 3, pad=pad)
        self.norm2, self.tconv2 = group_norm(cout), CausalTemporalConv(cout, cout, 3, pad=pad)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.tconv1(F.silu(per_frame(self.norm1, x)))
        h = self.tconv2(F.silu(per_frame(self.norm2, h)))
        return per_frame(self.skip, x) + h


# --------------------------------------------------------------------------------------------
# Spatial resampling with a space-to-channel shortcut (P16 / DC-AE), 2D
# --------------------------------------------------------------------------------------------


def unshuffle_down(conv: nn.Module, x: Tensor) -> Tensor:
    """pixel-unshuffle(conv(x)) + channel-averaged pixel-unshuffle(x): [B, C, H, W] -> [B, C, H/2, W/2]
    for a conv C -> C/4. Unshuffled channel c*4 + k is pixel k of channel c's 2x2 cell, so the
    shortcut's average over each group of 4 is the 2x2 mean of every channel."""
    B, C, H, W = x.shape
    shortcut = F.pixel_unshuffle(x, 2).view(B, C, 4, H // 2, W // 2).mean(2)  # [B, C, H/2, W/2]
    return F.pixel_unshuffle(conv(x), 2) + shortcut


def shuffle_up(conv: nn.Module, x: Tensor) -> Tensor:
    """pixel-shuffle(conv(x) + x with every channel copied 4x): [B, C, H, W] -> [B, C, 2H, 2W] for
    a conv C -> 4C; the shortcut alone is nearest-neighbour upsampling."""
    return F.pixel_shuffle(conv(x) + x.repeat_interleave(4, dim=1), 2)


class UnshuffleDownsample(nn.Module):
    """Halve H and W with `unshuffle_down`: [B, C, H, W] -> [B, C, H/2, W/2].

    The conv maps C -> C/4 at full resolution (the FLOPs of a stride-2 conv, a quarter of its
    weights); the parameter-free shortcut makes the block start close to 2x2 average pooling,
    and the conv learns what pooling loses. `dims` is there for `conv_levels` and must be 2.
    """

    def __init__(self, channels: int, dims: int = 2) -> None:
        super().__init__()
        if dims != 2 or channels % 4:
            raise ValueError(f"UnshuffleDownsample is 2D and needs channels divisible by 4, got dims {dims}, "
                             f"channels {channels}")
        self.conv = nn.Conv2d(channels, channels // 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return unshuffle_down(self.conv, x)


class ShuffleUpsample(nn.Module):
    """Double H and W with `shuffle_up`: [B, C, H, W] -> [B, C, 2H, 2W]; the conv maps C -> 4C at
    the low resolution (the FLOPs of `Upsample`'s conv at the high one)."""

    def __init__(self, channels: int, dims: int = 2) -> None:
        super().__init__()
        if dims != 2:
            raise ValueError(f"ShuffleUpsample is 2D, got dims {dims}")
        self.conv = nn.Conv2d(channels, channels * 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return shuffle_up(self.conv, x)


SpatialDown = Literal["strided", "unshuffle"]
# the 2D down- and upsampler of each mode, for `conv_levels`
SPATIAL_RESAMPLE: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "strided": (Downsample, Upsample),           # stride-2 conv / nearest + conv
    "unshuffle": (UnshuffleDownsample, ShuffleUpsample),
}


class SpaceTimeDownsample(nn.Module):
    """Halve H and W (per frame, as `SPATIAL_RESAMPLE[spatial][0]`), then time if `time`:
    [B, C, T, H, W] -> [B, C, T', H/2, W/2], T' = T or (T-1)/2 + 1.

    The spatial conv is `self.conv`, the name `Downsample` gives it, so an image encoder's
    weights load by name."""

    def __init__(self, channels: int, time: bool, spatial: SpatialDown = "strided", pad: TimePad = "replicate") -> None:
        super().__init__()
        self.spatial = spatial
        self.conv = SPATIAL_RESAMPLE[spatial][0](channels).conv
        self.time = TimeDownsample(channels, pad) if time else None

    def forward(self, x: Tensor) -> Tensor:
        f = to_frames(x)
        f = self.conv(f) if self.spatial == "strided" else unshuffle_down(self.conv, f)
        x = from_frames(f, x.shape[0])
        return self.time(x) if self.time is not None else x


class SpaceTimeUpsample(nn.Module):
    """Double time if `time`, then H and W per frame: the mirror of `SpaceTimeDownsample`,
    [B, C, T', H, W] -> [B, C, T, 2H, 2W]; the spatial conv is `self.conv`, as in `Upsample`."""

    def __init__(self, channels: int, time: bool, spatial: SpatialDown = "strided", pad: TimePad = "replicate") -> None:
        super().__init__()
        self.spatial = spatial
        self.conv = SPATIAL_RESAMPLE[spatial][1](channels).conv
        self.time = TimeUpsample(channels, pad) if time else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.time(x) if self.time is not None else x
        f = to_frames(x)
        if self.spatial == "strided":
            f = self.conv(F.interpolate(f, scale_factor=2.0, mode="nearest"))
        else:
            f = shuffle_up(self.conv, f)
        return from_frames(f, x.shape[0])


def causal_levels(channels: tuple[int, ...], blocks: int, time: tuple[bool, ...], resample: type[nn.Module],
                  spatial: SpatialDown = "strided", pad: TimePad = "replicate") -> nn.Sequential:
    """`conv_levels` for clips: `blocks` FactorisedResBlocks per level and `resample`
    (SpaceTimeDownsample or SpaceTimeUpsample) between levels, transition i also resampling
    time when time[i]. Module indices are those of `conv_levels` with the same arguments."""
    if len(time) != len(channels) - 1:
        raise ValueError(f"need one time flag per level transition ({len(channels) - 1}), got {len(time)}")
    layers: list[nn.Module] = []
    cin = channels[0]
    for i, c in enumerate(channels):
        for _ in range(blocks):
            layers.append(FactorisedResBlock(cin, c, pad))
            cin = c
        if i < len(channels) - 1:
            layers.append(resample(c, time[i], spatial, pad))
    return nn.Sequential(*layers)
