"""The Latent-Diffusion / VQGAN autoencoder: the architecture of the image tokenizers people publish.

One encoder and one decoder serve Stable Diffusion's KL-f8 VAE (SD 1.x/2.x, SDXL, the 16-channel
SD3/FLUX VAEs), MAR's KL-16, taming-transformers' VQGAN and LlamaGen's VQ-16. Module names follow
CompVis/latent-diffusion `ldm/modules/diffusionmodules/model.py` (`encoder.down.{level}.block.{i}`,
`mid.attn_1`, `up.{level}.upsample`, `quant_conv`, ...), so an LDM or taming state dict loads as it
is; `latentforge.peers.autoencoders` maps the diffusers and LlamaGen layouts onto these names.

x [B, C, H, W] in [-1, 1]
  -> conv_in -> per level: num_res_blocks ResNet blocks (+ single-head attention at the levels
     that have it), then a strided downsampling (all but the last level)
  -> mid: ResNet block, attention, ResNet block -> GroupNorm, SiLU, conv_out
  -> quant_conv (1x1)                                       moments or pre-quantization vectors
  -> bottleneck: diagonal Gaussian (`ldm_kl`) or nearest-code VQ (`ldm_vq`)   [B, h, w, C]
  -> post_quant_conv (1x1) -> the decoder, the mirror image with num_res_blocks + 1 blocks per
     level and nearest x2 upsampling + conv
f = 2**(levels - 1), h = H / f. Level 0 is the full-resolution one in both halves.

Numerics that must match the peers: GroupNorm(norm_groups, eps 1e-6), SiLU, downsampling by a
stride-2 3x3 convolution after a (0, 1, 0, 1) zero pad (asymmetric, as LDM pads), attention with
one head over all h*w positions scaled by C**-0.5.

The KL tokenizer owns the latent scale of its published config (SD's scaling_factor 0.18215, SD3's
shift_factor): `encode` returns (mean - shift) * scale, `decode` divides it back out, so a generator
sees latents of roughly unit variance without knowing the constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.conv import Upsample
from latentforge.quantize.base import Quantized, Quantizer
from latentforge.quantize.gaussian import gaussian_kl
from latentforge.quantize.vq import VectorQuantizer, VQConfig
from latentforge.registry import register
from latentforge.tokenizers.base import Tokenizer, TokenizerConfig, latent_spec
from latentforge.tokenizers.conv import check_images
from latentforge.tokenizers.discriminator import DiscriminatorConfig
from latentforge.tokenizers.losses import ReconKind, WaveletLossConfig, image_autoencoder_loss

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass
class LDMConfig(TokenizerConfig):
    """The architecture both bottlenecks share (LDM's ddconfig, with attention given by level)."""

    image_size: int = 256
    in_channels: int = 3
    ch: int = 128                                   # conv_in width; level i has ch * ch_mult[i]
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2                         # per encoder level (decoder: one more)
    z_channels: int = 4                             # what the decoder's conv_in reads
    encoder_attn_levels: tuple[int, ...] = ()       # levels (0 = full resolution) with attention
    decoder_attn_levels: tuple[int, ...] = ()
    mid_attention: bool = True
    norm_groups: int = 32
    use_quant_conv: bool = True                     # SD3 / FLUX VAEs have neither 1x1 conv
    use_post_quant_conv: bool = True
    recon_loss: ReconKind = "l1"
    wavelet: WaveletLossConfig | None = None
    discriminator: DiscriminatorConfig | None = None

    def __post_init__(self) -> None:
        levels = len(self.ch_mult)
        if levels < 1:
            raise ValueError("ch_mult must name at least one level")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the downsampling factor "
                             f"{self.downsample_factor} ({levels} levels)")
        for key in ("encoder_attn_levels", "decoder_attn_levels"):
            bad = [i for i in getattr(self, key) if not 0 <= i < levels]
            if bad:
                raise ValueError(f"{key} {getattr(self, key)} names levels outside 0..{levels - 1}")
        widths = {self.ch, *(self.ch * m for m in self.ch_mult)}
        if any(c % self.norm_groups for c in widths):
            raise ValueError(f"norm_groups {self.norm_groups} does not divide every width {sorted(widths)}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice, plus the input (1x1-projected when the width changes)."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions; q, k, v and the output projection are
    1x1 convolutions in the checkpoints, applied here as linear maps on channels-last positions."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x.reshape(b, c, h * w)).transpose(1, 2)                         # [B, hw, C]

        def project(conv: nn.Conv2d, t: Tensor) -> Tensor:
            return F.linear(t, conv.weight.view(c, c), conv.bias)

        q, k, v = (project(conv, y)[:, None] for conv in (self.q, self.k, self.v))  # [B, 1, hw, C]
        y = project(self.proj_out, F.scaled_dot_product_attention(q, k, v)[:, 0])  # [B, hw, C]
        # The attention branch comes first in the sum, so the result keeps its channels-last strides as
        # diffusers' does: the convolutions after it then take the same kernels and the outputs match
        # diffusers' bit for bit instead of to fp32 rounding (~1e-6 relative, amplified by depth).
        return y.transpose(1, 2).reshape(b, c, h, w) + x


class Downsample(nn.Module):
    """Halve H and W: zero-pad right and bottom by one, then a stride-2 3x3 convolution (LDM's)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """One resolution: ResNet blocks, each followed by attention where the level has it. The
    encoder or decoder adds `downsample` / `upsample` itself (the names the checkpoints use)."""

    def __init__(self, cin: int, cout: int, blocks: int, attention: bool, groups: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(cout, groups) for _ in range(blocks if attention else 0))

    def forward(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if self.attn:
                h = self.attn[i](h)
        return h


class Mid(nn.Module):
    def __init__(self, channels: int, attention: bool, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, out_channels, h, w]."""

    def __init__(self, cfg: LDMConfig, out_channels: int) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, c in enumerate(widths):
            level = Level(cin, c, cfg.num_res_blocks, i in cfg.encoder_attn_levels, cfg.norm_groups)
            if i < len(widths) - 1:
                level.downsample = Downsample(c)
            self.down.append(level)
            cin = c
        self.mid = Mid(cin, cfg.mid_attention, cfg.norm_groups)
        self.norm_out = _norm(cin, cfg.norm_groups)
        self.conv_out = nn.Conv2d(cin, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, in_channels, H, W]. `up[i]` is level i (0 = full resolution),
    run from the last level to the first."""

    def __init__(self, cfg: LDMConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        cin = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = Mid(cin, cfg.mid_attention, cfg.norm_groups)
        levels: list[nn.Module] = []
        for i in reversed(range(len(widths))):
            level = Level(cin, widths[i], cfg.num_res_blocks + 1, i in cfg.decoder_attn_levels, cfg.norm_groups)
            if i > 0:
                level.upsample = Upsample(widths[i])  # nearest x2 then conv3x3
            levels.insert(0, level)
            cin = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin, cfg.norm_groups)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _conv1x1(cin: int, cout: int, used: bool) -> nn.Module:
    return nn.Conv2d(cin, cout, 1) if used else nn.Identity()


class LDMAutoencoder(Tokenizer):
    """What both bottlenecks share: the encoder (-> quant_conv) and (post_quant_conv ->) the decoder."""

    config: LDMConfig

    def _build(self, config: LDMConfig, encoder_out: int, bottleneck_in: int, bottleneck_out: int) -> None:
        self.config = config
        self.encoder = Encoder(config, encoder_out)
        self.quant_conv = _conv1x1(encoder_out, bottleneck_in, config.use_quant_conv)
        self.decoder = Decoder(config)
        self.post_quant_conv = _conv1x1(bottleneck_out, config.z_channels, config.use_post_quant_conv)
        side = config.image_size // config.downsample_factor
        self.spec = latent_spec(self.quantizer, (side, side))
        self.build_discriminator()

    def encode_features(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> what the bottleneck reads, channels-last [B, h, w, C']."""
        check_images(x, self.config.in_channels, self.config.image_size)
        return self.quant_conv(self.encoder(x)).permute(0, 2, 3, 1)

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """Bottleneck outputs [B, h, w, C'] -> images [B, C, H, W]."""
        # contiguous NCHW, as the peers' decoders read it: convolutions pick their kernels by memory layout
        return self.decoder(self.post_quant_conv(z_q.permute(0, 3, 1, 2).contiguous()))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch["image"] [B, C, H, W] in [-1, 1] -> 'loss', its terms, 'psnr' and bottleneck stats."""
        return image_autoencoder_loss(self, batch["image"], self.config.recon_loss, self.config.wavelet)


# ----------------------------------------------------------------------------------------------
# KL autoencoder
# ----------------------------------------------------------------------------------------------


@dataclass
class LDMKLConfig(LDMConfig):
    name: str = "ldm_kl"
    embed_dim: int = 4                # latent channels C (quant_conv: 2 * z_channels -> 2 * C)
    # LDM's weight on the KL, here per position (summed over channels) against a per-element mean
    # reconstruction error: a nearly plain autoencoder, as the published VAEs were trained.
    kl_weight: float = 1e-6
    scaling_factor: float = 0.18215   # the published latent scale (SD 1.x/2.x)
    shift_factor: float = 0.0         # SD3 / FLUX subtract it before scaling

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.use_quant_conv and self.embed_dim != self.z_channels:
            raise ValueError(f"without quant_conv the latents are the encoder's: embed_dim {self.embed_dim} "
                             f"must equal z_channels {self.z_channels}")
        if not self.use_post_quant_conv and self.embed_dim != self.z_channels:
            raise ValueError(f"without post_quant_conv the decoder reads the latents: embed_dim {self.embed_dim} "
                             f"must equal z_channels {self.z_channels}")
        if self.scaling_factor == 0:
            raise ValueError("scaling_factor must not be 0")

    @classmethod
    def tiny(cls) -> "LDMKLConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=2, embed_dim=2,
                   encoder_attn_levels=(1,), decoder_attn_levels=(1,), norm_groups=4,
                   scaling_factor=0.5, shift_factor=0.1)


class ScaledGaussianPosterior(Quantizer):
    """LDM's diagonal Gaussian posterior over moments [B, h, w, 2C] (mean | log-variance), with the
    tokenizer's latent scale: codes = (latent - shift) * scale, `lookup` undoes it. No parameters:
    the 1x1 convolutions around it belong to the autoencoder, as in the checkpoints."""

    discrete = False

    def __init__(self, channels: int, scaling_factor: float, shift_factor: float, kl_weight: float) -> None:
        super().__init__()
        self.channels, self.scale, self.shift, self.kl_weight = channels, scaling_factor, shift_factor, kl_weight

    @property
    def latent_channels(self) -> int:
        return self.channels

    def moments(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """h [B, h, w, 2C] -> mean, log-variance [B, h, w, C], clamped to [-30, 20] as LDM does."""
        mean, logvar = h.chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    def sample(self, mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * eps

    def forward(self, h: Tensor, generator: torch.Generator | None = None) -> Quantized:
        """Moments [B, h, w, 2C] -> z_q = a posterior sample in training (its mean in eval), unscaled;
        codes = the same latent in the tokenizer's scaled units."""
        mean, logvar = self.moments(h)
        latent = self.sample(mean, logvar, generator) if self.training else mean
        with torch.autocast(h.device.type, enabled=False):
            kl = gaussian_kl(mean.float(), logvar.float()).sum(-1).mean()  # nats per position
        return Quantized(latent, self.to_codes(latent), {"kl": self.kl_weight * kl}, {"kl_nats": kl.detach()})

    def to_codes(self, latent: Tensor) -> Tensor:
        return (latent - self.shift) * self.scale

    def lookup(self, codes: Tensor) -> Tensor:
        """Scaled latents [B, h, w, C] -> the decoder's units."""
        return codes / self.scale + self.shift


@register("tokenizer", "ldm_kl", LDMKLConfig)
class LDMKLTokenizer(LDMAutoencoder):
    """The KL-regularised autoencoder of latent diffusion (Stable Diffusion's VAE, MAR's KL-16)."""

    def __init__(self, config: LDMKLConfig) -> None:
        super().__init__()
        self.quantizer = ScaledGaussianPosterior(config.embed_dim, config.scaling_factor, config.shift_factor,
                                                 config.kl_weight)
        self._build(config, 2 * config.z_channels, 2 * config.embed_dim, config.embed_dim)

    def quantize(self, x: Tensor, generator: torch.Generator | None = None) -> Quantized:
        """x [B, C, H, W] -> Quantized (z_q [B, h, w, C] unscaled, codes scaled, the KL term)."""
        return self.quantizer(self.encode_features(x), generator)

    def encode(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """x [B, C, H, W] -> scaled latents [B, h, w, C]: the posterior mean, or a sample of it."""
        mean, logvar = self.quantizer.moments(self.encode_features(x))
        return self.quantizer.to_codes(self.quantizer.sample(mean, logvar, generator) if sample else mean)


# ----------------------------------------------------------------------------------------------
# VQ autoencoder
# ----------------------------------------------------------------------------------------------


@dataclass
class LDMVQConfig(LDMConfig):
    name: str = "ldm_vq"
    # taming's ImageNet VQGAN f16: 16384 codes of 256 dimensions, attention at the 16x16 level
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    encoder_attn_levels: tuple[int, ...] = (4,)
    decoder_attn_levels: tuple[int, ...] = (4,)
    quantizer: VQConfig = field(default_factory=lambda: VQConfig(
        codebook_size=16384, dim=256, l2_normalize=False, kmeans_init=False, dead_threshold=0.0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.use_quant_conv and self.use_post_quant_conv) and self.quantizer.dim != self.z_channels:
            raise ValueError(f"without quant_conv / post_quant_conv the codes live in the encoder's space: "
                             f"quantizer.dim {self.quantizer.dim} must equal z_channels {self.z_channels}")

    @classmethod
    def tiny(cls) -> "LDMVQConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4,
                   encoder_attn_levels=(1,), decoder_attn_levels=(), norm_groups=4, quantizer=VQConfig.tiny())


@register("tokenizer", "ldm_vq", LDMVQConfig)
class LDMVQTokenizer(LDMAutoencoder):
    """The VQGAN autoencoder (taming-transformers, LDM's VQ-f4/f8, diffusers' VQModel, LlamaGen)."""

    def __init__(self, config: LDMVQConfig) -> None:
        super().__init__()
        self.quantizer = VectorQuantizer(config.quantizer)
        dim = config.quantizer.dim
        self._build(config, config.z_channels, dim, dim)

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, C, H, W] -> Quantized (z_q [B, h, w, dim], codes [B, h, w], VQ losses)."""
        return self.quantizer(self.encode_features(x))
