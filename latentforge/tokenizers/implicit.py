"""An implicit-neural-representation decoder for images: DDMI (P8, "domain-agnostic latent
diffusion for implicit neural representations"), at a small scale.

Legend: B batch, C image channels, S image side (training resolution), h = w latent side,
d bottleneck width (`quantizer.dim`), c latent channels, L basis levels, P plane channels,
R_l = h * 2^l plane side of level l, N query coordinates, W INR width, E scale embedding width.

x [B, C, S, S] in [-1, 1]
  -> the convolutional encoder of tokenizers/conv.py -> Gaussian bottleneck (KL-VAE)
     -> latents [B, h, w, c] (what a generator models), z_q [B, h, w, d] (what the decoder reads)
  -> a convolutional trunk that upsamples z_q level by level; a 1x1 head at each level emits a
     basis plane [B, P, R_l, R_l]: the hierarchically decomposed basis fields (HDBF), coarse first
  -> for any continuous coordinate (x, y) in [-1, 1]^2: the adaptive positional embedding of
     level l is the bilinear sample of plane l at (x, y)                           [B, N, P]
  -> an INR MLP, one modulated 1x1 block per level, coarse to fine: block 1 reads level 0's
     embedding, block l + 1 reads [block l's output, level l's embedding]; then to-RGB [B, N, C]

Scale injection. The INR's modulation ("style") is an embedding of the resolution scale of the
requested output, s = output side / S. Training draws a random output side in
[min_train_size, S] for each step and supervises with the area-downsampled image (the Shapes
renderer box-filters its coverage, so an area downsample is the lower-resolution render); the
style tells the INR how much of the fine detail the target still holds. No training target is
finer than S, so by default a decode above S uses the style of s = 1 (the finest seen); pass
`scale` to `render` to feed the true, extrapolated, one.

`positional="fourier"` is the baseline DDMI argues against: fixed Fourier features of the
coordinate in place of the sampled planes (level l gets the l-th octave group of frequencies, so
the coarse-to-fine injection is the same), and the latent grid flattened by an MLP into one global
vector that joins the scale embedding in the style. Its `global_hidden` width sets its size.

Because the latents are a continuous [B, h, w, c] grid, every continuous generator (DiT, MAR)
models them unchanged: that is DDMI's stage 2, a latent diffusion that generates the embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.conv import ResBlock, Upsample, group_norm
from latentforge.nn.embeddings import TimestepEmbedding
from latentforge.quantize.base import Quantized, QuantizerConfig
from latentforge.quantize.gaussian import GaussianConfig
from latentforge.registry import lookup, register
from latentforge.tokenizers.base import Tokenizer, TokenizerConfig, check_latents, latent_spec
from latentforge.tokenizers.conv import ConvConfig, Encoder, check_images
from latentforge.tokenizers.losses import ReconKind, image_psnr, reconstruction_loss

Positional = Literal["hdbf", "fourier"]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

@dataclass
class ImplicitConfig(TokenizerConfig):
    name: str = "implicit"
    image_size: int = 32
    in_channels: int = 3
    # encoder (tokenizers/conv.py): pixel-unshuffle by `patch`, one level per entry of `channels`
    patch: int = 2
    channels: tuple[int, ...] = (32, 64)
    blocks_per_level: int = 1
    # decoder: one basis level per entry (trunk width at that level); planes at h, 2h, 4h, ...
    decoder_channels: tuple[int, ...] = (64, 32, 16)
    plane_channels: int = 16                 # P: width of each level's positional embedding
    width: int = 64                          # W: INR width (one modulated block per level)
    scale_dim: int = 32                      # E: width of the resolution-scale embedding
    positional: Positional = "hdbf"
    fourier_bands: int = 2                   # fourier: frequencies per level (octaves)
    global_dim: int = 64                     # fourier: the global modulation vector
    global_hidden: int = 56                  # fourier: hidden width of the MLP that makes it
    # DDMI's L1, plus L2: on mostly flat images (Shapes) L1 alone sits for hundreds of steps on
    # the plateau "background everywhere", whose per-pixel gradient signs drown the few object
    # pixels; the L2 term weighs those large errors up (8 images, 300 steps: 15.2 dB vs 26.6 dB)
    recon_loss: ReconKind = "l1+l2"
    min_train_size: int = 16                 # smallest random output side in training
    train_points: int = 256                  # pixels of that output supervised per image (0: all)
    full_size_share: float = 0.5             # share of training steps at the full side S
    quantizer: QuantizerConfig = field(default_factory=lambda: GaussianConfig(dim=32, latent_channels=4))

    def __post_init__(self) -> None:
        self.encoder_config()  # raises on an image size the encoder cannot downsample evenly
        if not self.decoder_channels:
            raise ValueError("decoder_channels must name at least one basis level")
        if self.positional not in ("hdbf", "fourier"):
            raise ValueError(f"positional must be 'hdbf' or 'fourier', got {self.positional!r}")
        if not 1 <= self.min_train_size <= self.image_size:
            raise ValueError(f"min_train_size must be in 1..image_size ({self.image_size}), got {self.min_train_size}")
        if self.train_points < 0:
            raise ValueError(f"train_points must be >= 0 (0: every pixel), got {self.train_points}")
        if not 0.0 <= self.full_size_share <= 1.0:
            raise ValueError(f"full_size_share must be in [0, 1], got {self.full_size_share}")

    def encoder_config(self) -> ConvConfig:
        """The conv tokenizer config whose encoder this tokenizer reuses."""
        return ConvConfig(image_size=self.image_size, in_channels=self.in_channels, patch=self.patch,
                          channels=self.channels, blocks_per_level=self.blocks_per_level, quantizer=self.quantizer)

    @property
    def latent_side(self) -> int:
        return self.image_size // self.encoder_config().downsample_factor

    @property
    def levels(self) -> int:
        return len(self.decoder_channels)

    @classmethod
    def tiny(cls) -> "ImplicitConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(image_size=8, patch=2, channels=(8, 8), decoder_channels=(8, 8), plane_channels=4, width=8,
                   scale_dim=8, min_train_size=4, quantizer=GaussianConfig.tiny())


# --------------------------------------------------------------------------------------------
# Coordinates and positional embeddings
# --------------------------------------------------------------------------------------------

def pixel_grid(size: int, device: torch.device | None = None) -> Tensor:
    """Centres of a size x size pixel grid as (x, y) in [-1, 1], raster order: [size * size, 2].

    Pixel i spans [i, i + 1) / size of the unit interval, so its centre is (i + 0.5) / size; this is
    `grid_sample`'s align_corners=False convention, in which a plane of side `size` is sampled at
    its texel centres exactly.
    """
    v = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(v, v, indexing="ij")
    return torch.stack([x, y], -1).reshape(-1, 2)


def sample_planes(planes: list[Tensor], coords: Tensor) -> list[Tensor]:
    """The adaptive positional embedding: each plane [B, P, R, R] sampled bilinearly at coords
    [B, N, 2] ((x, y) in [-1, 1]) -> [B, N, P] per level. Coordinates outside the image read the
    border texels rather than zeros."""
    grid = coords[:, :, None, :].to(planes[0].dtype)                        # [B, N, 1, 2]
    return [F.grid_sample(p, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0]
            .transpose(1, 2) for p in planes]                                # [B, N, P]


class FourierPositional(nn.Module):
    """The baseline's fixed embedding: sin/cos of the coordinate at octave-spaced frequencies, the
    highest at the image's Nyquist rate (S / 2 cycles across it); level l gets the l-th group of
    `bands` octaves (plus the raw coordinate at level 0), each mapped to P channels by a Linear."""

    def __init__(self, cfg: ImplicitConfig) -> None:
        super().__init__()
        n = cfg.levels * cfg.fourier_bands
        top = math.pi * cfg.image_size / 2  # sin(top * x) completes S / 2 periods over x in [-1, 1]
        freqs = top * 2.0 ** torch.arange(-(n - 1), 1, dtype=torch.float32)
        self.register_buffer("freqs", freqs.view(cfg.levels, cfg.fourier_bands), persistent=False)
        self.proj = nn.ModuleList(nn.Linear(4 * cfg.fourier_bands + (2 if lvl == 0 else 0), cfg.plane_channels)
                                  for lvl in range(cfg.levels))

    def forward(self, coords: Tensor) -> list[Tensor]:
        """coords [B, N, 2] -> one [B, N, P] embedding per level."""
        out = []
        for lvl, proj in enumerate(self.proj):
            angles = (coords.float()[..., None] * self.freqs[lvl]).flatten(-2)   # [B, N, 2 * bands]
            feats = [angles.sin(), angles.cos()] if lvl else [coords.float(), angles.sin(), angles.cos()]
            out.append(proj(torch.cat(feats, -1)))
        return out


# --------------------------------------------------------------------------------------------
# Decoder: the basis fields (or the baseline's global vector)
# --------------------------------------------------------------------------------------------

class BasisDecoder(nn.Module):
    """z_q [B, d, h, w] -> planes [B, P, h * 2^l, w * 2^l] for l = 0..L-1, coarse first.

    One trunk does all levels: each level refines the upsampled features of the one below, so a
    fine plane holds what the coarser ones could not (the hierarchical decomposition), and a 1x1
    head reads each level's features out as its plane."""

    def __init__(self, cfg: ImplicitConfig) -> None:
        super().__init__()
        ch = cfg.decoder_channels
        self.stem = nn.Conv2d(cfg.quantizer.dim, ch[0], 3, padding=1)
        # narrow (1x1) before upsampling: the upsampling convolution then runs at the finer
        # level's width, which keeps the full-resolution level cheap on CPU
        self.up = nn.ModuleList(nn.Sequential(nn.Conv2d(ch[i - 1], ch[i], 1), Upsample(ch[i]))
                                for i in range(1, len(ch)))
        self.blocks = nn.ModuleList(ResBlock(c, c) for c in ch)
        self.heads = nn.ModuleList(nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.plane_channels, 1))
                                   for c in ch)

    def forward(self, z_q: Tensor) -> list[Tensor]:
        h = self.stem(z_q)                                   # [B, ch0, h, w]
        planes = []
        for lvl, (block, head) in enumerate(zip(self.blocks, self.heads)):
            if lvl:
                h = self.up[lvl - 1](h)                      # [B, ch_l, 2x, 2x]
            h = block(h)                                     # [B, ch_l, R_l, R_l]
            planes.append(head(h))                           # [B, P, R_l, R_l]
        return planes


class GlobalCode(nn.Module):
    """The baseline's decoder: the latent grid z_q [B, d, h, w] flattened -> one vector [B, G]."""

    def __init__(self, cfg: ImplicitConfig) -> None:
        super().__init__()
        n = cfg.quantizer.dim * cfg.latent_side**2
        self.mlp = nn.Sequential(nn.Linear(n, cfg.global_hidden), nn.SiLU(), nn.Linear(cfg.global_hidden, cfg.global_dim))

    def forward(self, z_q: Tensor) -> Tensor:
        return self.mlp(z_q.flatten(1))


# --------------------------------------------------------------------------------------------
# The INR: modulated 1x1 blocks, coarse-to-fine injection
# --------------------------------------------------------------------------------------------

class ModulatedLinear(nn.Module):
    """A 1x1 layer on points whose input channels are scaled per example by a style (StyleGAN2's
    modulated convolution). With `demodulate`, each output row of the modulated weight is
    renormalised to unit norm, so the style changes what a unit computes, not its output scale."""

    def __init__(self, cin: int, cout: int, style_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.demodulate = demodulate
        self.weight = nn.Parameter(torch.randn(cout, cin) / math.sqrt(cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.affine = nn.Linear(style_dim, cin)
        nn.init.ones_(self.affine.bias)      # the style starts near 1: the plain layer

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """x [B, N, cin], style [B, style_dim] -> [B, N, cout]."""
        # (x * s) W^T * d equals x (W * s)^T demodulated, and is one shared matrix product
        # instead of a per-example weight (a batched product of small matrices, much slower on CPU)
        s = self.affine(style)[:, None, :]                                     # [B, 1, cin]
        out = F.linear(x * s, self.weight)                                     # [B, N, cout]
        if self.demodulate:
            # d[b, o] = 1 / |W[o] * s[b]|: the norm of output o's modulated weight row
            out = out * torch.rsqrt(F.linear(s.square(), self.weight.square()) + 1e-8)
        return out + self.bias


class INR(nn.Module):
    """Coordinates' embeddings (one [B, N, P] per level) + style [B, style_dim] -> RGB [B, N, C].

    Block 1 reads level 0 alone; block l + 1 reads block l's output beside level l's embedding.
    So block l's output depends on levels 0..l-1 only: the coarse levels shape the field first and
    each finer level adds to it (tests/test_implicit.py checks this order)."""

    def __init__(self, cfg: ImplicitConfig, style_dim: int) -> None:
        super().__init__()
        P, W = cfg.plane_channels, cfg.width
        self.blocks = nn.ModuleList(ModulatedLinear(P if lvl == 0 else W + P, W, style_dim) for lvl in range(cfg.levels))
        self.to_rgb = ModulatedLinear(W, cfg.in_channels, style_dim, demodulate=False)

    def hidden(self, embeddings: list[Tensor], style: Tensor) -> list[Tensor]:
        """Every block's output [B, N, W], first to last."""
        outs: list[Tensor] = []
        for block, pe in zip(self.blocks, embeddings):
            x = pe if not outs else torch.cat([outs[-1], pe], -1)               # [B, N, W + P]
            outs.append(F.silu(block(x, style)))
        return outs

    def forward(self, embeddings: list[Tensor], style: Tensor) -> Tensor:
        return self.to_rgb(self.hidden(embeddings, style)[-1], style)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

@register("tokenizer", "implicit", ImplicitConfig)
class ImplicitTokenizer(Tokenizer):
    """Images [B, C, S, S] <-> Gaussian latents [B, h, w, c], decoded as a continuous field."""

    def __init__(self, config: ImplicitConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.encoder_config())
        self.quantizer = lookup("quantizer", config.quantizer.name)[1](config.quantizer)
        # the embedding reads log2 of the scale: [-1, 0] for the default training sides 16..32
        # (2 for a 128 px decode fed its true scale); `scale` 4 spreads that over angles the
        # embedding's top frequency tells apart
        self.scale_embed = TimestepEmbedding(config.scale_dim, scale=4.0, freq_dim=16, max_period=100.0)
        style_dim = config.scale_dim
        if config.positional == "hdbf":
            self.basis = BasisDecoder(config)
        else:
            self.fourier = FourierPositional(config)
            self.global_code = GlobalCode(config)
            style_dim += config.global_dim
        self.inr = INR(config, style_dim)
        side = config.latent_side
        self.spec = latent_spec(self.quantizer, (side, side))

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, C, S, S] -> Quantized (z_q [B, h, w, d], codes = latents [B, h, w, c])."""
        check_images(x, self.config.in_channels, self.config.image_size)
        return self.quantizer(self.encoder(x).permute(0, 2, 3, 1))  # channels-last

    # ---------------------------------------------------------------- the field

    def basis_planes(self, z_q: Tensor) -> list[Tensor]:
        """z_q [B, h, w, d] -> the HDBF planes [B, P, R_l, R_l], coarse first (hdbf only)."""
        if self.config.positional != "hdbf":
            raise ValueError("basis planes exist only with positional='hdbf'")
        return self.basis(z_q.permute(0, 3, 1, 2))

    def style(self, scale: float | Tensor, batch: int, device: torch.device) -> Tensor:
        """The scale embedding [B, E] of a resolution scale (output side / training side)."""
        s = torch.as_tensor(scale, dtype=torch.float32, device=device).expand(batch)
        return self.scale_embed(torch.log2(s))

    def render(self, z_q: Tensor, coords: Tensor, scale: float | Tensor = 1.0, drop_levels: int = 0) -> Tensor:
        """Colours [B, N, C] of the fields of z_q [B, h, w, d] at coords [B, N, 2] ((x, y) in [-1, 1]).

        Args:
            scale: the resolution scale the output stands for (1 = the training side), a float or [B].
            drop_levels: replace the embeddings of the finest `drop_levels` levels by their mean over
                the queried coordinates: the INR still gets an input of the level's typical value
                (zeros would be an input it never saw), but none of its spatial detail.
        """
        if not 0 <= drop_levels < self.config.levels:
            raise ValueError(f"drop_levels must be in 0..{self.config.levels - 1}, got {drop_levels}")
        style = self.style(scale, len(z_q), z_q.device)                          # [B, E]
        if self.config.positional == "hdbf":
            embeddings = sample_planes(self.basis_planes(z_q), coords)
        else:
            embeddings = self.fourier(coords)
            style = torch.cat([style, self.global_code(z_q.permute(0, 3, 1, 2))], -1)  # [B, E + G]
        keep = self.config.levels - drop_levels
        embeddings = embeddings[:keep] + [e.mean(1, keepdim=True).expand_as(e) for e in embeddings[keep:]]
        return self.inr(embeddings, style)

    def render_grid(self, z_q: Tensor, size: int, scale: float | Tensor | None = None,
                    drop_levels: int = 0) -> Tensor:
        """Images [B, C, size, size] sampled at pixel centres; `scale` defaults to size / S capped
        at 1 (no training target was finer than S: see the module docstring)."""
        if scale is None:
            scale = min(size / self.config.image_size, 1.0)
        coords = pixel_grid(size, z_q.device).expand(len(z_q), -1, -1)            # [B, size^2, 2]
        rgb = self.render(z_q, coords, scale, drop_levels)                        # [B, size^2, C]
        return rgb.transpose(1, 2).reshape(len(z_q), -1, size, size)

    # ---------------------------------------------------------------- the contract

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """z_q [B, h, w, d] -> images [B, C, S, S] at the training resolution."""
        return self.render_grid(z_q, self.config.image_size)

    def decode_at(self, z: Tensor, size: int, *, scale: float | None = None, drop_levels: int = 0) -> Tensor:
        """Latents [B, h, w, c] -> images [B, C, size, size] at any resolution."""
        check_latents(self.spec, z)
        return self.render_grid(self.quantizer.lookup(z), size, scale, drop_levels)

    def _train_size(self) -> int:
        """The output side of this training step: S with probability `full_size_share`, else uniform
        in [min_train_size, S). Eval always uses S, so validation losses compare across steps."""
        cfg = self.config
        if not self.training or cfg.min_train_size == cfg.image_size or float(torch.rand(())) < cfg.full_size_share:
            return cfg.image_size
        return int(torch.randint(cfg.min_train_size, cfg.image_size, ()))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch["image"] [B, C, S, S] in [-1, 1] -> 'loss' (L1 + L2 at a random side + KL), its terms,
        'psnr' at that side, 'train_size' and the bottleneck's statistics.

        In training only `train_points` random pixels of each image are rendered and scored: an
        INR is a function of one coordinate, so a random subset is an unbiased estimate of the
        full-grid loss at a fraction of the MLP's cost (the planes are decoded once either way)."""
        x = batch["image"]
        B, C = x.shape[:2]
        size = self._train_size()
        q = self.quantize(x)
        # area downsampling: the Shapes renderer box-filters coverage, so this is the smaller render
        target = x if size == x.shape[-1] else F.interpolate(x, size=(size, size), mode="area")
        target = target.flatten(2).transpose(1, 2)                                # [B, size^2, C]
        coords = pixel_grid(size, x.device).expand(B, -1, -1)                      # [B, size^2, 2]
        n = self.config.train_points
        if self.training and 0 < n < size * size:
            pick = torch.rand(B, size * size, device=x.device).argsort(1)[:, :n]  # [B, n], no repeats
            coords = coords.gather(1, pick[..., None].expand(-1, -1, 2))
            target = target.gather(1, pick[..., None].expand(-1, -1, C))
        scale = min(size / self.config.image_size, 1.0)
        x_hat = self.render(q.z_q, coords, scale)                                  # [B, n, C]
        terms = {**reconstruction_loss(x_hat, target, self.config.recon_loss), **q.losses}
        return {"loss": sum(terms.values()), **terms, "psnr": image_psnr(x_hat, target),
                "train_size": torch.tensor(float(size)), **q.stats}
