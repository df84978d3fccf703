"""ViT autoencoder for images with any bottleneck (ViTok, P21; CvT token embedding, P26).

Legend: B batch, C image channels, H W image side, p patch, h w = H/p W/p token grid,
N = h*w tokens, D transformer width, d bottleneck width (`quantizer.dim`), c channels of a
continuous bottleneck's latents.

x [B, C, H, W] in [-1, 1]
  -> one token per p x p patch: a linear map of the flattened patch, or (`conv_embedding`)
     CvT's overlapping strided convolution + LayerNorm         [B, N, D]
  -> + learned 2D position embedding -> bidirectional transformer encoder
  -> linear D -> d -> bottleneck (`quantizer.name`: vq, fsq, gaussian, ...)
     -> z_q [B, h, w, d] for the decoder; codes [B, h, w] (discrete) or [B, h, w, c] (continuous)
  -> linear d -> D -> + position embedding -> transformer decoder
  -> linear D -> p*p*C -> patches back into the image          [B, C, H, W]

ViTok keeps one latent per patch ("simple" mode), so the bottleneck holds E = N * d numbers and
E is what reconstruction quality follows; its finding that a deeper decoder helps more than a
deeper encoder is why `decoder_depth` is separate (and larger by default). ViTok itself uses RoPE
and no absolute position embedding; here both transformers get a learned factorised 2D one,
because latentforge's `nn.Transformer` has no rotary attention yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from latentforge.config import ADDED_LATER
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.patches import PatchEmbedding, patchify, unpatchify  # noqa: F401  (re-exported)
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.quantize.base import Quantized, QuantizerConfig
from latentforge.quantize.vq import VQConfig
from latentforge.registry import lookup, register
from latentforge.tokenizers.base import Tokenizer, TokenizerConfig, latent_spec
from latentforge.tokenizers.discriminator import DiscriminatorConfig
from latentforge.tokenizers.losses import ReconKind, WaveletLossConfig, image_autoencoder_loss
from latentforge.tokenizers.perceptual import PerceptualConfig, build_perceptual

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

@dataclass
class ViTConfig(TokenizerConfig):
    name: str = "vit"
    image_size: int = 32
    in_channels: int = 3
    patch: int = 4                      # one latent token per patch x patch pixels
    dim: int = 128                      # transformer width
    encoder_depth: int = 2
    decoder_depth: int = 4              # ViTok: decoder capacity buys more than encoder capacity
    heads: int = 4
    mlp_ratio: float = 4.0
    conv_embedding: bool = False        # CvT's overlapping convolutional token embedding
    recon_loss: ReconKind = "l2"
    wavelet: WaveletLossConfig | None = None    # P34's frequency-aware loss, added to recon_loss
    discriminator: DiscriminatorConfig | None = None  # patch-GAN hinge terms (from its start_step)
    quantizer: QuantizerConfig = field(default_factory=VQConfig)
    # a perceptual distance added to recon_loss (tokenizers/perceptual.py), weights read before training
    perceptual: PerceptualConfig | None = field(default=None, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if self.patch < 1:
            raise ValueError(f"patch must be >= 1, got {self.patch}")
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.encoder_depth < 0 or self.decoder_depth < 0:
            raise ValueError(f"depths must be >= 0, got encoder {self.encoder_depth}, decoder {self.decoder_depth}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch
        return (side, side)

    @classmethod
    def tiny(cls) -> "ViTConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(image_size=8, patch=4, dim=16, encoder_depth=1, decoder_depth=1, heads=2, quantizer=VQConfig.tiny())


# --------------------------------------------------------------------------------------------
# Patches <-> tokens (patchify, unpatchify and PatchEmbedding live in nn/patches.py)
# --------------------------------------------------------------------------------------------

class ConvTokenEmbedding(nn.Module):
    """CvT's convolutional token embedding: a strided convolution whose kernel is wider than its
    stride, then LayerNorm over each token. [B, C, H, W] -> [B, N, D].

    Each token also sees `overlap` pixels beyond every side of its patch, so neighbouring tokens
    share context and a patch edge is no longer a hard boundary. CvT's first stage uses
    kernel 7 / stride 4 / padding 2; here the overlap is symmetric (kernel p + 2*overlap,
    padding overlap, overlap = p // 2, at least 1) so that token (i, j) stays centred on patch
    (i, j) and the grid is exactly (H/p, W/p).
    """

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.overlap = max(1, patch // 2)
        self.conv = nn.Conv2d(in_channels, dim, patch + 2 * self.overlap, stride=patch, padding=self.overlap)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))  # [B, N, D]


# --------------------------------------------------------------------------------------------
# Encoder, decoder, tokenizer
# --------------------------------------------------------------------------------------------

class ViTEncoder(nn.Module):
    """Images [B, C, H, W] -> pre-bottleneck latents [B, N, d]."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        embedding = ConvTokenEmbedding if cfg.conv_embedding else PatchEmbedding
        self.embed = embedding(cfg.in_channels, cfg.dim, cfg.patch)
        self.pos = GridPositionEmbedding(cfg.grid, cfg.dim)
        self.transformer = Transformer(cfg.dim, cfg.encoder_depth, cfg.heads, cfg.mlp_ratio)
        self.to_latent = nn.Linear(cfg.dim, cfg.quantizer.dim)
        init_transformer_weights(self.transformer, max(cfg.encoder_depth, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.transformer(self.embed(x) + self.pos())  # [B, N, D]; bidirectional
        return self.to_latent(h)                          # [B, N, d]


class ViTDecoder(nn.Module):
    """Latents [B, N, d] -> images [B, C, H, W]."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch, self.grid = cfg.patch, cfg.grid
        self.from_latent = nn.Linear(cfg.quantizer.dim, cfg.dim)
        # Its own position table: a code carries no position, and two patches that quantize
        # to the same code must still be told apart by where they are.
        self.pos = GridPositionEmbedding(cfg.grid, cfg.dim)
        self.transformer = Transformer(cfg.dim, cfg.decoder_depth, cfg.heads, cfg.mlp_ratio)
        self.to_pixels = nn.Linear(cfg.dim, cfg.in_channels * cfg.patch**2)
        init_transformer_weights(self.transformer, max(cfg.decoder_depth, 1))

    def forward(self, z: Tensor) -> Tensor:
        h = self.transformer(self.from_latent(z) + self.pos())    # [B, N, D]
        return unpatchify(self.to_pixels(h), self.patch, self.grid)  # [B, C, H, W]


@register("tokenizer", "vit", ViTConfig)
class ViTTokenizer(Tokenizer):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViTEncoder(config)
        self.quantizer = lookup("quantizer", config.quantizer.name)[1](config.quantizer)
        self.decoder = ViTDecoder(config)
        self.spec = latent_spec(self.quantizer, config.grid)
        self.build_discriminator()
        self.perceptual = build_perceptual(config.perceptual)  # frozen; built last: the rest's init is unchanged

    def before_training(self) -> None:
        if self.perceptual is not None:
            self.perceptual.load_weights()

    def last_layer(self) -> Tensor:
        return self.decoder.to_pixels.weight

    @property
    def embed(self) -> nn.Module:
        """The token embedding (linear or convolutional): images -> [B, N, D] before positions."""
        return self.encoder.embed

    def _check(self, x: Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if x.dim() != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"expected images [B, {c}, {s}, {s}], got {list(x.shape)} "
                             f"(this ViT tokenizer was built for image_size {s}, patch {self.config.patch})")

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, C, H, W] -> Quantized (z_q [B, h, w, d], codes as in `self.spec`, losses, stats)."""
        self._check(x)
        z = self.encoder(x).unflatten(1, self.config.grid)  # channels-last [B, h, w, d]
        return self.quantizer(z)

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """Quantized vectors [B, h, w, d] -> images [B, C, H, W]."""
        return self.decoder(z_q.flatten(1, 2))  # tokens [B, N, d] in raster order

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch["image"] [B, C, H, W] in [-1, 1] -> 'loss', its terms, 'psnr' and bottleneck stats."""
        return image_autoencoder_loss(self, batch["image"], self.config.recon_loss, self.config.wavelet)
