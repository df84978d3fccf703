"""Sketch conditioning for video inpainting (P22 MotionAura): an edge map of what the region should hold.

Legend: N clips, B batch, T frames, H x W frame size; f_t, f_s the video tokenizer's temporal and
spatial downsampling factors; T' = 1 + (T-1)/f_t, H' = H/f_s, W' = W/f_s its latent grid, and
L = T' H' W' latent tokens in raster order; D the width of the map.

`edge_map` turns clips into binary edge maps (the sketch a user would draw, or the edges we read
back from an inpainted clip to check that it followed one). `SketchEncoder` turns a sketch and the
inpainting region into a spatial map [B, L, D] on the tokenizer's latent grid, which a generator
adds to its token inputs (`Context.spatial`; `with_sketch`). Its output layer starts at zero, so
a trained generator with an untrained sketch encoder behaves exactly as before: fine-tuning (P22
does it with LoRA, nn/lora.py) starts from the base model.

    edges = edge_map(clips) & pixel_region                       # [B, T, H, W]
    sketch = SketchEncoder(SketchConfig.for_tokenizer(tok.config, dim=gen.config.dim))
    context = with_sketch(gen.encode_condition(batch), sketch(edges, pixel_region))
    gen.loss(codes, context, mask=latent_region)

The map is causal in time as the tokenizer is: latent frame 0 reads frame 0 alone, latent frame j
reads frames 1 + (j-1) f_t ... j f_t, never a later one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from latentforge.conditioning.base import Context

if TYPE_CHECKING:
    from latentforge.tokenizers.causal3d import Causal3dConfig

# A sharp colour step of contrast c (Euclidean RGB distance, channels in [0, 1]) gives a Sobel
# magnitude of c/2 on the pixels either side of it (the kernel below is normalised by 1/8), and
# an anti-aliased step still gives c/2 on its middle pixel. 0.15 keeps steps of contrast >= 0.3:
# every Moving Shapes object differs from the dark-grey background (48, 48, 48) by >= 0.69 and from
# the other palette colours by more, while pixel noise of a few percent (a tokenizer's
# reconstructions, PSNR ~ 25 dB: RMS ~ 0.05) stays below it.
EDGE_THRESHOLD = 0.15

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8


def edge_magnitude(clips: np.ndarray | Tensor) -> Tensor:
    """Colour Sobel gradient magnitude of clips [N, T, H, W, 3] -> float [N, T, H, W].

    uint8 clips are read as 0..255, float ones as [0, 1]. Per channel gradients, combined as the
    Euclidean norm over x, y and the three channels. Frame borders are replicate-padded, so the
    edge of the frame is not an edge of the picture."""
    x = torch.as_tensor(np.asarray(clips) if isinstance(clips, np.ndarray) else clips)
    if x.dim() != 5 or x.shape[-1] != 3:
        raise ValueError(f"edge_map expects clips [N, T, H, W, 3], got {list(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    N, T, H, W, _ = x.shape
    frames = rearrange(x, "n t h w c -> (n t c) 1 h w")                           # [N T 3, 1, H, W]
    kernel = torch.stack([_SOBEL_X, _SOBEL_X.t()])[:, None].to(frames.device)     # [2, 1, 3, 3]
    grad = F.conv2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), kernel)       # [N T 3, 2, H, W]
    grad = rearrange(grad, "(n t c) g h w -> n t h w (c g)", n=N, t=T, c=3)
    return grad.pow(2).sum(-1).sqrt()                                             # [N, T, H, W]


def edge_map(clips: np.ndarray | Tensor, threshold: float = EDGE_THRESHOLD) -> Tensor:
    """Binary edges of clips [N, T, H, W, 3] (uint8, or float in [0, 1]) -> bool [N, T, H, W].

    Deterministic. A step between two flat colours is marked on both pixels next to it (a line
    two pixels wide); see EDGE_THRESHOLD for the threshold's choice."""
    return edge_magnitude(clips) > threshold


def with_sketch(context: Context | None, spatial: Tensor) -> Context:
    """`context` with `spatial` [B, L, D] as its map (the generator adds it to its token inputs)."""
    if context is None:
        raise ValueError("a sketch rides on a condition's context: the generator needs a conditioner "
                         "(caption, class, ...) whose width is the sketch map's")
    if spatial.shape[0] != len(context):
        raise ValueError(f"sketch map has {spatial.shape[0]} rows, the context {len(context)}")
    return dataclasses.replace(context, spatial=spatial)


@dataclass
class SketchConfig:
    dim: int = 128               # D: the conditioner's width, what the generator's spatial_proj reads
    hidden: int = 32             # channels of the convolutions
    time_factor: int = 2         # f_t of the video tokenizer (1: per-frame latents)
    spatial_factor: int = 4      # f_s of the video tokenizer, a power of two

    def __post_init__(self) -> None:
        if self.dim < 1 or self.hidden < 1:
            raise ValueError(f"dim and hidden must be >= 1, got {self.dim}, {self.hidden}")
        if self.time_factor < 1:
            raise ValueError(f"time_factor must be >= 1, got {self.time_factor}")
        f = self.spatial_factor
        if f < 1 or f & (f - 1):
            raise ValueError(f"spatial_factor must be a power of two (one stride-2 conv per halving), got {f}")

    @classmethod
    def for_tokenizer(cls, tokenizer_config: Causal3dConfig, dim: int, **changes) -> SketchConfig:
        """The config whose grid is a video tokenizer's (any config with time_factor and spatial_factor)."""
        return cls(dim=dim, time_factor=tokenizer_config.time_factor,
                   spatial_factor=tokenizer_config.spatial_factor, **changes)

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent grid (T', H', W') of clips of this size, or a ValueError naming the size at fault."""
        f_t, f_s = self.time_factor, self.spatial_factor
        if frames < 1 or (frames - 1) % f_t:
            raise ValueError(f"sketches need T = 1 + {f_t}k frames (the first frame is encoded alone), got {frames}")
        if height % f_s or width % f_s:
            raise ValueError(f"sketch frames must be multiples of {f_s} pixels on each side, got {height} x {width}")
        return 1 + (frames - 1) // f_t, height // f_s, width // f_s


class SketchEncoder(nn.Module):
    """Edges [B, T, H, W] and region [B, T, H, W] -> a spatial map [B, L, D] on the latent grid.

    Each latent frame's group of frames (the first frame alone, replicate-padded to f_t copies;
    then f_t frames at a time) is stacked into channels (2 f_t: edges and region of each frame)
    and run through a 3x3 conv, log2(f_s) stride-2 convs and a 3x3 conv to the latent
    resolution; a zero-initialised 1x1 conv gives the D-wide map. A latent frame sees only its own
    frames, so the map is causal in time; the region channel tells "no edge here" (inside the
    region) apart from "not sketched" (outside it)."""

    def __init__(self, config: SketchConfig) -> None:
        super().__init__()
        self.config = config
        C, f_t = config.hidden, config.time_factor
        layers: list[nn.Module] = [nn.Conv2d(2 * f_t, C, 3, padding=1), nn.SiLU()]
        for _ in range(int(math.log2(config.spatial_factor))):
            layers += [nn.Conv2d(C, C, 4, stride=2, padding=1), nn.SiLU()]   # halves H and W exactly
        layers += [nn.Conv2d(C, C, 3, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(C, config.dim, 1)
        # zero map at step 0: the generator it feeds starts as the base model
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, edges: Tensor, region: Tensor) -> Tensor:
        """Args:
            edges: [B, T, H, W] bool or float in [0, 1], zero outside the region (it is masked here too).
            region: [B, T, H, W] bool, True on the pixels to inpaint.
        Returns:
            [B, T' H' W', D] in raster order (t, h, w).
        """
        if edges.dim() != 4:
            raise ValueError(f"edges must be [B, T, H, W], got {list(edges.shape)}")
        if region.shape != edges.shape:
            raise ValueError(f"region {list(region.shape)} must match edges {list(edges.shape)}")
        B, T, H, W = edges.shape
        t, h, w = self.config.grid(T, H, W)
        f_t = self.config.time_factor
        dtype = self.out.weight.dtype
        region = region.to(dtype)
        x = torch.stack([edges.to(dtype) * region, region], dim=1)                   # [B, 2, T, H, W]
        x = torch.cat([x[:, :, :1].expand(-1, -1, f_t - 1, -1, -1), x], dim=2)      # [B, 2, t f_t, H, W]
        x = rearrange(x, "b c (t f) h w -> (b t) (c f) h w", f=f_t)                  # [B t, 2 f_t, H, W]
        y = self.out(self.body(x))                                                   # [B t, D, h, w]
        return rearrange(y, "(b t) d h w -> b (t h w) d", b=B, t=t)                  # [B, L, D]
