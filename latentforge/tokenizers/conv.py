"""Convolutional autoencoder for images with any bottleneck (VQ-VAE by default).

x [B, 3, H, W] in [-1, 1]
  -> pixel-unshuffle by `patch` (cheap first downsampling that loses nothing)
  -> conv stem, residual blocks, strided downsampling between levels
  -> 1x1 projection to the bottleneck's width -> bottleneck (`quantizer.name`: vq, fsq, ...)
  -> latents on a [H/f, W/f] grid,  f = patch * 2**(levels-1)
and the mirror image back. Pixel-unshuffle keeps the costly full-resolution convolutions out
of the network, which matters most on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ADDED_LATER
from latentforge.nn.conv import Downsample, Upsample, conv_levels, group_norm
from latentforge.quantize.base import Quantized, QuantizerConfig
from latentforge.quantize.vq import VQConfig
from latentforge.registry import lookup, register
from latentforge.tokenizers.base import Tokenizer, TokenizerConfig, latent_spec
from latentforge.tokenizers.discriminator import DiscriminatorConfig
from latentforge.tokenizers.losses import ReconKind, WaveletLossConfig, image_autoencoder_loss
from latentforge.tokenizers.perceptual import PerceptualConfig, build_perceptual


@dataclass
class ConvConfig(TokenizerConfig):
    name: str = "conv"
    image_size: int = 32
    in_channels: int = 3
    patch: int = 2                              # pixel-unshuffle factor at the input
    channels: tuple[int, ...] = (64, 128)       # one entry per resolution level
    blocks_per_level: int = 1
    recon_loss: ReconKind = "l2"
    wavelet: WaveletLossConfig | None = None    # P34's frequency-aware loss, added to recon_loss
    discriminator: DiscriminatorConfig | None = None  # patch-GAN hinge terms (from its start_step)
    quantizer: QuantizerConfig = field(default_factory=VQConfig)
    # a perceptual distance added to recon_loss (LPIPS or the probe distance); its network's weights
    # are read from the paths it names before training
    perceptual: PerceptualConfig | None = field(default=None, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        f = self.downsample_factor
        if self.image_size % f:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the downsampling factor {f} "
                             f"(patch {self.patch} x 2^{len(self.channels) - 1})")
        if not self.channels:
            raise ValueError("channels must name at least one level")

    @property
    def downsample_factor(self) -> int:
        return self.patch * 2 ** (len(self.channels) - 1)

    @classmethod
    def tiny(cls) -> "ConvConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(image_size=8, patch=2, channels=(8, 8), quantizer=VQConfig.tiny())


def check_images(x: Tensor, channels: int, size: int) -> None:
    """Refuse anything but images [B, channels, size, size] (the conv encoder's input), naming the shape."""
    if x.dim() != 4 or x.shape[1:] != (channels, size, size):
        raise ValueError(f"expected images [B, {channels}, {size}, {size}], got {list(x.shape)}")


class Encoder(nn.Module):
    def __init__(self, cfg: ConvConfig) -> None:
        super().__init__()
        self.patch = cfg.patch
        ch = cfg.channels
        self.stem = nn.Conv2d(cfg.in_channels * cfg.patch**2, ch[0], 3, padding=1)
        self.body = conv_levels(ch, cfg.blocks_per_level, Downsample)
        self.out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(),
                                 nn.Conv2d(ch[-1], cfg.quantizer.dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x
        return self.out(self.body(self.stem(x)))  # [B, dim, h, w]


class Decoder(nn.Module):
    def __init__(self, cfg: ConvConfig) -> None:
        super().__init__()
        self.patch = cfg.patch
        ch = cfg.channels[::-1]
        self.stem = nn.Conv2d(cfg.quantizer.dim, ch[0], 3, padding=1)
        self.body = conv_levels(ch, cfg.blocks_per_level, Upsample)
        self.out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(),
                                 nn.Conv2d(ch[-1], cfg.in_channels * cfg.patch**2, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        x = self.out(self.body(self.stem(z)))
        return F.pixel_shuffle(x, self.patch) if self.patch > 1 else x


@register("tokenizer", "conv", ConvConfig)
class ConvTokenizer(Tokenizer):
    def __init__(self, config: ConvConfig) -> None:
        super().__init__()
        self.config = config
        side = config.image_size // config.downsample_factor
        self.encoder = Encoder(config)
        self.quantizer = lookup("quantizer", config.quantizer.name)[1](config.quantizer)
        self.decoder = Decoder(config)
        self.spec = latent_spec(self.quantizer, (side, side))
        self.build_discriminator()
        self.perceptual = build_perceptual(config.perceptual)  # frozen; built last: the rest's init is unchanged

    def before_training(self) -> None:
        if self.perceptual is not None:
            self.perceptual.load_weights()

    def last_layer(self) -> Tensor:
        return self.decoder.out[-1].weight

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, C, H, W] -> Quantized (z_q [B, h, w, dim], codes [B, h, w], losses, stats)."""
        check_images(x, self.config.in_channels, self.config.image_size)
        z = self.encoder(x).permute(0, 2, 3, 1)  # channels-last [B, h, w, dim]
        return self.quantizer(z)

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """Quantized vectors [B, h, w, dim] -> images [B, C, H, W]."""
        return self.decoder(z_q.permute(0, 3, 1, 2))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch["image"] [B, C, H, W] in [-1, 1] -> 'loss', its terms, 'psnr' and bottleneck stats."""
        return image_autoencoder_loss(self, batch["image"], self.config.recon_loss, self.config.wavelet)
