"""1D convolutional autoencoder for sequences (audio frames, motion poses) with any bottleneck.

Legend: B batch, T sequence length, C feature channels per step, t = T/f latent steps,
f = 2**(levels-1) downsampling factor, d bottleneck width (`quantizer.dim`), c channels of a
continuous bottleneck's latents.

Sequences are channels-last, [B, T, C], like every latent in the library (and like a table of
pose vectors or mel frames); the network transposes to Conv1d's [B, C, T] inside.

x [B, T, C]
  -> conv stem, residual blocks, strided downsampling (x1/2) between levels
  -> 1x1 projection to d -> bottleneck (`quantizer.name`: vq, fsq, gaussian, ...)
  -> z_q [B, t, d] for the decoder; codes [B, t] (discrete) or latents [B, t, c] (continuous)
and the mirror image back to [B, T, C].
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from latentforge.nn.conv import Downsample, Upsample, conv_levels, group_norm
from latentforge.quantize.base import Quantized, QuantizerConfig
from latentforge.quantize.vq import VQConfig
from latentforge.registry import lookup, register
from latentforge.tokenizers.base import Tokenizer, TokenizerConfig, latent_spec
from latentforge.tokenizers.losses import ReconKind, reconstruction_loss

# --------------------------------------------------------------------------------------------
# Config, encoder, decoder, tokenizer
# --------------------------------------------------------------------------------------------

@dataclass
class Conv1dConfig(TokenizerConfig):
    layout = "sequence"
    name: str = "conv1d"
    seq_len: int = 64                           # T
    in_channels: int = 16                       # C: features per step (pose or mel bins)
    channels: tuple[int, ...] = (64, 128)       # one entry per resolution level
    blocks_per_level: int = 1
    recon_loss: ReconKind = "l2"
    # T2M-GPT's velocity term: the same loss on frame-to-frame differences, which keeps decoded
    # motion from jittering where the per-frame error is small but uncorrelated between frames
    velocity_weight: float = 0.0
    quantizer: QuantizerConfig = field(default_factory=VQConfig)

    def __post_init__(self) -> None:
        if self.velocity_weight < 0:
            raise ValueError(f"velocity_weight must be >= 0, got {self.velocity_weight}")
        if not self.channels:
            raise ValueError("channels must name at least one level")
        if self.blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {self.blocks_per_level}")
        f = self.downsample_factor
        if self.seq_len % f:
            raise ValueError(f"seq_len {self.seq_len} is not a multiple of the downsampling factor {f} "
                             f"(2^{len(self.channels) - 1} for {len(self.channels)} levels)")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @classmethod
    def tiny(cls) -> "Conv1dConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(seq_len=8, in_channels=3, channels=(8, 8), quantizer=VQConfig.tiny())


class Encoder1d(nn.Module):
    """[B, C, T] -> [B, d, t]."""

    def __init__(self, cfg: Conv1dConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.stem = nn.Conv1d(cfg.in_channels, ch[0], 3, padding=1)
        self.body = conv_levels(ch, cfg.blocks_per_level, Downsample, dims=1)
        self.out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(), nn.Conv1d(ch[-1], cfg.quantizer.dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(self.stem(x)))


class Decoder1d(nn.Module):
    """[B, d, t] -> [B, C, T]."""

    def __init__(self, cfg: Conv1dConfig) -> None:
        super().__init__()
        ch = cfg.channels[::-1]
        self.stem = nn.Conv1d(cfg.quantizer.dim, ch[0], 3, padding=1)
        self.body = conv_levels(ch, cfg.blocks_per_level, Upsample, dims=1)
        self.out = nn.Sequential(group_norm(ch[-1]), nn.SiLU(), nn.Conv1d(ch[-1], cfg.in_channels, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.body(self.stem(z)))


@register("tokenizer", "conv1d", Conv1dConfig)
class Conv1dTokenizer(Tokenizer):
    """Sequences [B, T, C] (channels-last) <-> latents on a (T/f,) grid."""

    def __init__(self, config: Conv1dConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder1d(config)
        self.quantizer = lookup("quantizer", config.quantizer.name)[1](config.quantizer)
        self.decoder = Decoder1d(config)
        self.spec = latent_spec(self.quantizer, (config.seq_len // config.downsample_factor,))

    def _check(self, x: Tensor) -> None:
        T, C = self.config.seq_len, self.config.in_channels
        if x.dim() == 3 and x.shape[1:] == (T, C):
            return
        hint = ""
        if x.dim() == 3 and x.shape[1:] == (C, T):
            hint = "; this looks channels-first: pass x.transpose(1, 2)"
        raise ValueError(f"expected sequences [B, {T}, {C}] (channels-last [B, T, C]), got {list(x.shape)}{hint}")

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, T, C] -> Quantized (z_q [B, t, d], codes as in `self.spec`, losses, stats)."""
        self._check(x)
        z = self.encoder(x.transpose(1, 2)).transpose(1, 2)  # channels-last [B, t, d]
        return self.quantizer(z)

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """Quantized vectors [B, t, d] -> sequences [B, T, C]."""
        return self.decoder(z_q.transpose(1, 2)).transpose(1, 2)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch["sequence"] [B, T, C] -> 'loss', its terms, 'mse'/'mae' and codebook stats.

        No PSNR: PSNR = 10 log10(peak^2 / MSE) needs a fixed peak value, which images have
        ([-1, 1]) and arbitrary features (normalised joint angles, log-mel energies) do not;
        any peak we chose would shift the number by a constant and make it look comparable
        across datasets when it is not. MSE and MAE in the data's own units are honest.
        """
        x = batch["sequence"]
        q = self.quantize(x)
        x_hat = self.decode_latents(q.z_q)
        terms = {**reconstruction_loss(x_hat, x, self.config.recon_loss), **q.losses}
        if self.config.velocity_weight > 0:
            moves = reconstruction_loss(x_hat.diff(dim=1), x.diff(dim=1), self.config.recon_loss)
            terms["velocity"] = self.config.velocity_weight * sum(moves.values())
        err = (x_hat.detach().float() - x.float())
        stats = {"mse": err.pow(2).mean(), "mae": err.abs().mean()}
        return {"loss": sum(terms.values()), **terms, **stats, **q.stats}
