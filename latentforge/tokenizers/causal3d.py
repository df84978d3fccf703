"""Causal 3D convolutional autoencoder for video with any bottleneck (P16 Step-Video, P19 VideoVAE+).

Legend: B batch, C = 3 colour channels, T frames, S = H = W frame side; f_s spatial and f_t
temporal downsampling factors; t = 1 + (T-1)/f_t latent frames, h = w = S/f_s; d the
bottleneck width (`quantizer.dim`).

x [B, C, T, S, S] in [-1, 1]
  -> pixel-unshuffle of each frame by `patch` (P16's cheap first downsampling)
  -> encoder (one of two designs, below) -> 1x1 projection to d per frame
  -> bottleneck (`quantizer.name`: vq, fsq, lfq, gaussian, ...) on the grid (t, h, w)
and the mirror image back to [B, C, T, S, S].

Causal in time (see nn/causal_conv.py): latent frame j depends on input frames <= j*f_t only,
and decoded frame i on latent frames <= ceil(i/f_t) only. The first frame is encoded alone, so
clips have T = 1 + k*f_t frames (17 -> 5 at f_t = 4) and an image is a one-frame clip; any such
length goes through, while `frames` (set by the recipe from the data) fixes `spec`.

Designs (`design`):
* "joint": the 2D ConvTokenizer with a causal temporal conv after every spatial conv of every
  residual block ((2+1)D, `FactorisedResBlock`), and time halved, with a causal stride-2 conv,
  at the level transitions `time_down` names. Its spatial layers have the ConvTokenizer's names
  and shapes, so `inflate_from` starts it from a trained image tokenizer, exactly.
* "factorised" (P19): space first, then time. A 2D encoder (the ConvTokenizer's levels) runs on
  every frame; a separate light motion compressor of causal temporal convs only
  (`TemporalResBlock`, no spatial kernel) then halves time sum(time_down) times at the latent
  resolution, where each position already summarises its patch. P19's own compressor uses
  3x3x3 convs and a second latent; here one bottleneck closes the chain.

P22 MotionAura's training of its 3D-MBQ-VAE (`frame_mask_p`, `token_mask_p`, training only):
whole input frames after the first are blanked (set to 0, mid-grey) with probability
frame_mask_p, and a share token_mask_p of the quantized latent vectors is replaced by a learned
mask vector before decoding; the loss still asks for the full clip, so the latents must carry
what neighbouring frames imply (lower temporal error, P22's claim).

Spatial downsampling (`spatial_down`): "strided" (stride-2 conv / nearest + conv, as the image
tokenizer) or "unshuffle" (P16's space-to-channel downsampler: conv -> pixel-unshuffle plus a
parameter-free pixel-unshuffle + channel-average shortcut; the decoder mirrors it with
conv -> pixel-shuffle plus a channel-duplicate shortcut).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.causal_conv import (
    SPATIAL_RESAMPLE,
    CausalTemporalConv,
    SpaceTimeDownsample,
    SpaceTimeUpsample,
    SpatialDown,
    TemporalResBlock,
    TimeDownsample,
    TimeUpsample,
    causal_levels,
    from_frames,
    per_frame,
    to_frames,
)
from latentforge.nn.conv import conv_levels, group_norm
from latentforge.quantize.base import Quantized, QuantizerConfig
from latentforge.quantize.fsq import FSQConfig
from latentforge.registry import lookup, register
from latentforge.tokenizers.base import Tokenizer, TokenizerConfig, check_latents, latent_spec
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer
from latentforge.tokenizers.losses import ReconKind, image_autoencoder_loss

Design = Literal["joint", "factorised"]

# --------------------------------------------------------------------------------------------
# The frame rule
# --------------------------------------------------------------------------------------------


def nearest_lengths(n: int, step: int, first: int) -> list[int]:
    """The valid sizes first + k*step (k >= 0) next to n: the one below and the one above (one
    value when n is below `first`)."""
    if n < first:
        return [first]
    below = first + (n - first) // step * step
    return [below, below + step]


def frames_error(T: int, f_t: int) -> str:
    """'got 16 frames; this tokenizer takes 1 + 4k frames: 13 or 17'."""
    return (f"got {T} frames; this tokenizer takes 1 + {f_t}k frames: "
            f"{' or '.join(map(str, nearest_lengths(T, f_t, 1)))}")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

@dataclass
class Causal3dConfig(TokenizerConfig):
    layout = "video"
    name: str = "causal3d"
    frames: int = 17                            # T (set from the data): 1 + k * time_factor
    image_size: int = 64                        # S (set from the data): a multiple of spatial_factor
    in_channels: int = 3
    patch: int = 2                              # pixel-unshuffle factor of each frame at the input (1: off)
    channels: tuple[int, ...] = (64, 128, 128)  # one entry per resolution level
    blocks_per_level: int = 1                   # residual blocks per level (and per motion stage)
    time_down: tuple[bool, ...] = (True, True)  # per level transition: does it also halve time?
    spatial_down: SpatialDown = "strided"       # "strided" convs or P16's "unshuffle" + shortcut
    design: Design = "joint"                    # "joint" (2+1)D levels or P19's "factorised"
    recon_loss: ReconKind = "l2"
    frame_mask_p: float = 0.0                   # P22: chance of blanking each input frame after the first
    token_mask_p: float = 0.0                   # P22: share of latent vectors masked before decoding
    quantizer: QuantizerConfig = field(default_factory=FSQConfig)

    def __post_init__(self) -> None:
        if not (0 <= self.frame_mask_p < 1 and 0 <= self.token_mask_p < 1):
            raise ValueError(f"frame_mask_p and token_mask_p must be in [0, 1), got {self.frame_mask_p}, "
                             f"{self.token_mask_p}")
        if not self.channels:
            raise ValueError("channels must name at least one level")
        if self.blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {self.blocks_per_level}")
        if self.patch < 1:
            raise ValueError(f"patch must be >= 1, got {self.patch}")
        if self.design not in ("joint", "factorised"):
            raise ValueError(f"design: {self.design!r} is not one of 'joint', 'factorised'")
        if self.spatial_down not in SPATIAL_RESAMPLE:
            raise ValueError(f"spatial_down: {self.spatial_down!r} is not one of {', '.join(map(repr, SPATIAL_RESAMPLE))}")
        if len(self.time_down) != len(self.channels) - 1:
            raise ValueError(f"time_down needs one flag per level transition: {len(self.channels) - 1} for "
                             f"channels {tuple(self.channels)}, got {tuple(self.time_down)}")
        if self.spatial_down == "unshuffle" and any(c % 4 for c in self.channels):
            raise ValueError(f"spatial_down 'unshuffle' needs channels divisible by 4, got {tuple(self.channels)}")
        f_t = self.time_factor
        if self.frames < 1 or (self.frames - 1) % f_t:
            raise ValueError(f"frames: {frames_error(self.frames, f_t)}")
        f_s = self.spatial_factor
        if self.image_size < 1 or self.image_size % f_s:
            near = " or ".join(map(str, nearest_lengths(self.image_size, f_s, f_s)))
            raise ValueError(f"image_size {self.image_size} is not a multiple of the spatial downsampling factor "
                             f"{f_s} (patch {self.patch} x 2^{len(self.channels) - 1}): {near}")

    @property
    def time_factor(self) -> int:
        """f_t: frames per latent frame after the first."""
        return 2 ** sum(map(bool, self.time_down))

    @property
    def spatial_factor(self) -> int:
        """f_s: pixels per latent position along H and W."""
        return self.patch * 2 ** (len(self.channels) - 1)

    def latent_frames(self, T: int) -> int:
        return 1 + (T - 1) // self.time_factor

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        side = self.image_size // self.spatial_factor
        return (self.latent_frames(self.frames), side, side)

    @classmethod
    def tiny(cls) -> "Causal3dConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(frames=5, image_size=8, patch=1, channels=(8, 8, 8), quantizer=FSQConfig.tiny())

    @classmethod
    def from_image(cls, image: ConvConfig, **changes) -> "Causal3dConfig":
        """The joint, strided video config whose spatial layers mirror image tokenizer `image`
        (same patch, channels, blocks, bottleneck); `changes` sets the rest (frames,
        time_down, image_size, ...). time_down defaults to halving time at every transition."""
        time_down = changes.pop("time_down", (True,) * (len(image.channels) - 1))
        frames = changes.pop("frames", 1 + 4 * 2 ** sum(time_down))
        fields = dict(image_size=image.image_size, in_channels=image.in_channels, patch=image.patch,
                      channels=tuple(image.channels), blocks_per_level=image.blocks_per_level,
                      recon_loss=image.recon_loss, quantizer=copy.deepcopy(image.quantizer))
        return cls(**{**fields, "frames": frames, "time_down": tuple(time_down), **changes})


# --------------------------------------------------------------------------------------------
# Encoders and decoders: [B, C, T, S, S] <-> [B, d, t, h, w]
# --------------------------------------------------------------------------------------------

class JointEncoder(nn.Module):
    """ConvTokenizer's Encoder with (2+1)D blocks and causal time downsampling between levels."""

    def __init__(self, cfg: Causal3dConfig) -> None:
        super().__init__()
        self.patch = cfg.patch
        ch = cfg.channels
        self.stem = nn.Conv2d(cfg.in_channels * cfg.patch**2, ch[0], 3, padding=1)
        self.body = causal_levels(ch, cfg.blocks_per_level, cfg.time_down, SpaceTimeDownsample, cfg.spatial_down)
        self.out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.quantizer.dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        f = F.pixel_unshuffle(to_frames(x), self.patch) if self.patch > 1 else to_frames(x)
        h = self.body(from_frames(self.stem(f), x.shape[0]))  # [B, C', t, h, w]
        return per_frame(self.out, h)                          # [B, d, t, h, w]


class JointDecoder(nn.Module):
    """ConvTokenizer's Decoder with (2+1)D blocks and causal time upsampling between levels."""

    def __init__(self, cfg: Causal3dConfig) -> None:
        super().__init__()
        self.patch = cfg.patch
        ch = cfg.channels[::-1]
        self.stem = nn.Conv2d(cfg.quantizer.dim, ch[0], 3, padding=1)
        self.body = causal_levels(ch, cfg.blocks_per_level, cfg.time_down[::-1], SpaceTimeUpsample, cfg.spatial_down)
        self.out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(),
                                 nn.Conv2d(ch[-1], cfg.in_channels * cfg.patch**2, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        B = z.shape[0]
        h = self.body(per_frame(self.stem, z))          # [B, C', T, S/p, S/p]
        f = self.out(to_frames(h))
        f = F.pixel_shuffle(f, self.patch) if self.patch > 1 else f
        return from_frames(f, B)                         # [B, C, T, S, S]


def motion_stack(channels: int, blocks: int, stages: int, resample: type[nn.Module], down: bool) -> nn.Sequential:
    """P19's light motion (de)compressor: `blocks` TemporalResBlocks around each of `stages`
    time resamplers. Down: (blocks, halve) x stages, blocks; up: blocks, (double, blocks) x stages."""
    def run() -> list[nn.Module]:
        return [TemporalResBlock(channels, channels) for _ in range(blocks)]

    layers = [] if down else run()
    for _ in range(stages):
        layers += (run() + [resample(channels)]) if down else ([resample(channels)] + run())
    return nn.Sequential(*(layers + run() if down else layers))


class FactorisedEncoder(nn.Module):
    """P19: a 2D encoder on every frame (space), then the motion compressor (time)."""

    def __init__(self, cfg: Causal3dConfig) -> None:
        super().__init__()
        self.patch = cfg.patch
        ch = cfg.channels
        self.stem = nn.Conv2d(cfg.in_channels * cfg.patch**2, ch[0], 3, padding=1)
        self.body = conv_levels(ch, cfg.blocks_per_level, SPATIAL_RESAMPLE[cfg.spatial_down][0])
        self.motion = motion_stack(ch[-1], cfg.blocks_per_level, sum(map(bool, cfg.time_down)), TimeDownsample, True)
        self.out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.quantizer.dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        f = F.pixel_unshuffle(to_frames(x), self.patch) if self.patch > 1 else to_frames(x)
        h = from_frames(self.body(self.stem(f)), x.shape[0])  # [B, C', T, h, w]
        return per_frame(self.out, self.motion(h))             # [B, d, t, h, w]


class FactorisedDecoder(nn.Module):
    """The mirror: motion decompressor at the latent resolution, then a 2D decoder per frame."""

    def __init__(self, cfg: Causal3dConfig) -> None:
        super().__init__()
        self.patch = cfg.patch
        ch = cfg.channels[::-1]
        self.stem = nn.Conv2d(cfg.quantizer.dim, ch[0], 3, padding=1)
        self.motion = motion_stack(ch[0], cfg.blocks_per_level, sum(map(bool, cfg.time_down)), TimeUpsample, False)
        self.body = conv_levels(ch, cfg.blocks_per_level, SPATIAL_RESAMPLE[cfg.spatial_down][1])
        self.out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(),
                                 nn.Conv2d(ch[-1], cfg.in_channels * cfg.patch**2, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        B = z.shape[0]
        h = self.motion(per_frame(self.stem, z))    # [B, C', T, h, w]
        f = self.out(self.body(to_frames(h)))
        f = F.pixel_shuffle(f, self.patch) if self.patch > 1 else f
        return from_frames(f, B)                     # [B, C, T, S, S]


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------

@register("tokenizer", "causal3d", Causal3dConfig)
class Causal3dTokenizer(Tokenizer):
    """Clips [B, C, T, S, S] <-> latents on a (t, h, w) grid, causal in time."""

    def __init__(self, config: Causal3dConfig) -> None:
        super().__init__()
        self.config = config
        joint = config.design == "joint"
        self.encoder = (JointEncoder if joint else FactorisedEncoder)(config)
        self.quantizer = lookup("quantizer", config.quantizer.name)[1](config.quantizer)
        self.decoder = (JointDecoder if joint else FactorisedDecoder)(config)
        self.spec = latent_spec(self.quantizer, config.latent_grid)
        if config.token_mask_p > 0:
            self.mask_latent = nn.Parameter(torch.zeros(config.quantizer.dim))

    def _check(self, x: Tensor) -> None:
        C, S = self.config.in_channels, self.config.image_size
        want = f"clips [B, {C}, T, {S}, {S}] (T = 1 + {self.config.time_factor}k)"
        if x.dim() == 5 and x.shape[1] == C and x.shape[3:] == (S, S):
            T = x.shape[2]
            if T < 1 or (T - 1) % self.config.time_factor:
                raise ValueError(f"{want}: {frames_error(T, self.config.time_factor)}")
            return
        hint = ""
        if x.dim() == 5 and x.shape[-1] == C and x.shape[2:4] == (S, S):
            hint = "; this looks channels-last [B, T, H, W, C]: pass x.permute(0, 4, 1, 2, 3)"
        elif x.dim() == 5 and x.shape[2] == C and x.shape[3:] == (S, S):
            hint = "; this looks like [B, T, C, H, W]: pass x.transpose(1, 2)"
        elif x.dim() == 4 and x.shape[1:] == (C, S, S):
            hint = "; these are images [B, C, H, W]: pass x.unsqueeze(2) for one-frame clips"
        raise ValueError(f"expected {want}, got {list(x.shape)}{hint}")

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, C, T, S, S] -> Quantized (z_q [B, t, h, w, d] channels-last, codes, losses, stats)."""
        self._check(x)
        return self.quantizer(self.encoder(x).permute(0, 2, 3, 4, 1))

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """Quantized vectors [B, t, h, w, d] -> clips [B, C, 1 + (t-1) f_t, S, S]."""
        if z_q.dim() != 5:
            raise ValueError(f"expected latents [B, t, h, w, d], got {list(z_q.shape)}")
        return self.decoder(z_q.permute(0, 4, 1, 2, 3))

    def decode(self, z: Tensor) -> Tensor:
        """Latents as `spec` describes them, with any number of latent frames t >= 1 -> clips."""
        grid = self.spec.grid
        if z.dim() >= 2 and z.shape[1] >= 1:
            grid = (z.shape[1], *grid[1:])
        check_latents(dataclasses.replace(self.spec, grid=grid), z)
        return self.decode_latents(self.quantizer.lookup(z))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch["video"] [B, C, T, S, S] in [-1, 1] -> 'loss', its terms, 'psnr' (over every
        pixel of every frame) and the bottleneck's statistics."""
        x, cfg = batch["video"], self.config
        x_in = corrupt = None
        if self.training and cfg.frame_mask_p > 0:
            shown = torch.rand(x.shape[0], x.shape[2], device=x.device) >= cfg.frame_mask_p   # [B, T]
            shown[:, 0] = True
            x_in = x * shown[:, None, :, None, None].to(x.dtype)
        if self.training and cfg.token_mask_p > 0:
            def corrupt(z: Tensor) -> Tensor:
                masked = torch.rand(z.shape[:-1], device=z.device) < cfg.token_mask_p               # [B, t, h, w]
                return torch.where(masked[..., None], self.mask_latent.to(z.dtype), z)
        return image_autoencoder_loss(self, x, cfg.recon_loss, x_in=x_in, corrupt_latents=corrupt)

    # -- sizes -------------------------------------------------------------------------------

    def param_counts(self) -> dict[str, int]:
        """Parameters by part: total, encoder, decoder, quantizer, and temporal_convs (those of
        every causal temporal conv: what the video model adds to a per-frame image model)."""
        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        temporal = sum(count(m) for m in self.modules() if isinstance(m, CausalTemporalConv))
        return {"total": count(self), "encoder": count(self.encoder), "decoder": count(self.decoder),
                "quantizer": count(self.quantizer), "temporal_convs": temporal}

    # -- inflation from an image tokenizer ---------------------------------------------------

    @classmethod
    def inflate_from(cls, image: ConvTokenizer, config: Causal3dConfig | None = None,
                     **changes) -> "Causal3dTokenizer":
        """A joint video tokenizer that starts as image tokenizer `image` applied to every frame.

        The spatial convs, norms and bottleneck are copied by name; the temporal convs start
        as the identity (and time downsampling as "pick frame 2j"), so at step 0 a one-frame
        clip reconstructs as the image tokenizer reconstructs that image, and a T-frame clip
        of a still image reconstructs, frame by frame, the same. The image tokenizer's
        discriminator, if any, is not carried over.

        Args:
            image: a `ConvTokenizer` (its `encoder`, `decoder` and `quantizer` are read).
            config: the video config; by default `Causal3dConfig.from_image(image.config, **changes)`.
                It must be "joint" and "strided" and share patch, channels, blocks_per_level,
                in_channels and the quantizer config with `image` (image_size may differ).
        """
        if not isinstance(image, ConvTokenizer):
            raise TypeError(f"inflate_from needs a ConvTokenizer, got {type(image).__name__}")
        if config is None:
            config = Causal3dConfig.from_image(image.config, **changes)
        elif changes:
            raise TypeError("pass either config or field changes, not both")
        ic, problems = image.config, []
        if config.design != "joint":
            problems.append(f"design {config.design!r} (inflation needs 'joint': the factorised encoder "
                            "has no per-level image layout)")
        if config.spatial_down != "strided":
            problems.append(f"spatial_down {config.spatial_down!r} (the image tokenizer's are 'strided')")
        for key in ("in_channels", "patch", "channels", "blocks_per_level", "quantizer"):
            mine, theirs = getattr(config, key), getattr(ic, key)
            if (tuple(mine) if key == "channels" else mine) != (tuple(theirs) if key == "channels" else theirs):
                problems.append(f"{key} {mine!r} != the image tokenizer's {theirs!r}")
        if problems:
            raise ValueError("cannot inflate this image tokenizer into a causal3d one: " + "; ".join(problems))
        video = cls(config).to(next(image.parameters()).device)
        video.load_image_weights(image)
        return video

    @torch.no_grad()
    def load_image_weights(self, image: ConvTokenizer) -> None:
        """Copy `image`'s encoder, decoder and quantizer weights into the same-named spatial
        layers of this (joint) tokenizer and reset every temporal conv to the identity."""
        temporal = {f"{name}.{key}" for name, m in self.named_modules() if isinstance(m, CausalTemporalConv)
                    for key in m.state_dict()}
        mine = self.state_dict()
        theirs = {k: v for k, v in image.state_dict().items() if k.split(".")[0] in ("encoder", "decoder", "quantizer")}
        unfit = [f"{k} {list(v.shape)}" + (f" vs {list(mine[k].shape)}" if k in mine else " (absent here)")
                 for k, v in theirs.items() if k not in mine or mine[k].shape != v.shape]
        uncovered = [k for k in mine if k not in theirs and k not in temporal]
        if unfit or uncovered:
            raise ValueError(f"image weights do not fit: {unfit[:4]} do not match, {uncovered[:4]} have no source")
        self.load_state_dict(theirs, strict=False)
        for m in self.modules():
            if isinstance(m, CausalTemporalConv):
                m.reset_identity()


def param_counts(config: Causal3dConfig) -> dict[str, int]:
    """`Causal3dTokenizer.param_counts` of the model `config` builds (to compare designs at equal size)."""
    return Causal3dTokenizer(config).param_counts()
