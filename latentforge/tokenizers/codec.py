"""A neural audio codec (the SoundStream / EnCodec / DAC family): waveform -> strided 1D conv
encoder -> residual VQ (or any bottleneck) -> mirrored decoder -> waveform.

Legend: B clips, L samples, C channels, t = L / hop latent frames (hop = the strides' product; at
16 kHz the default strides (2, 4, 5, 8) give hop 320 = 50 frames per second), d = quantizer.dim,
Q residual levels.

    x [B, L, 1] -> conv stem (k 7) -> per stride s: 3 residual units (dilations 1, 3, 9), Snake,
                   strided conv (k 2s, stride s, channels x2) -> Snake, conv (k 3) to d
    -> bottleneck: codes [B, t, Q] (RVQ; the first q levels decode alone when it was trained
                   with quantizer dropout) or latents [B, t, c]
    -> conv (k 7) -> per stride, reversed: Snake, transposed conv (k 2s, stride s), 3 residual
                   units -> Snake, conv (k 7) to 1 channel, tanh -> [B, L, 1]

Snake (x + sin²(αx)/α with a learned α per channel, DAC) is the activation: a periodic bias suits
waveforms. The loss is DAC's multi-scale mel L1 (optionally with the multi-resolution STFT distance
and a time-domain L1: nn/spectral.py, which the audio metrics report too)
plus the bottleneck's terms (commitment, codebook); an adversarial term is not part of this module.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from latentforge.config import ADDED_LATER
from latentforge.nn.spectral import griffin_lim, mel_distance, mel_filters, stft_distance, stft_magnitude
from latentforge.quantize.base import Quantized, QuantizerConfig
from latentforge.quantize.rvq import RVQConfig
from latentforge.registry import lookup, register
from latentforge.tokenizers.base import Tokenizer, TokenizerConfig, check_latents, latent_spec


@dataclass
class CodecConfig(TokenizerConfig):
    layout = "audio"
    name: str = "codec"
    seq_len: int = 8000                          # L (set from the data)
    in_channels: int = 1                         # mono (set from the data)
    sample_rate: int = 16000                     # (set from the data) for the mel loss
    strides: tuple[int, ...] = (2, 4, 5, 8)      # encoder downsampling, first to last
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)  # stem, then after each stride
    dilations: tuple[int, ...] = (1, 3, 9)       # residual units per block
    mel_weight: float = 1.0
    mel_floor: float = 1e-5                      # mel amplitudes are clamped here before the log (DAC: 1e-5)
    # off by default: at this scale the MR-STFT term (log-magnitude L1 over quiet bins) slows
    # learning (mel distance 0.84 with it vs 0.63 without after 300 steps, BENCHMARKS.md)
    stft_weight: float = 0.0
    waveform_weight: float = 0.0                 # plain L1 on samples (EnCodec's time-domain term)
    # "conv": the encoder's mirror image, upsampling to the sample rate with transposed convs;
    # "istft": Vocos' decoder, convs at the frame rate, one transposed conv up to STFT frames every
    # `istft_hop` samples, then per-bin magnitude and phase and an inverse STFT;
    # "magnitude": the same trunk predicting log-magnitudes only, trained on them directly (no
    # waveform in the loss) and given phases by Griffin-Lim when decoded
    decoder: Literal["conv", "istft", "magnitude"] = "conv"
    # "conv": strided convs on the waveform (SoundStream / DAC); "stft": convs over log-magnitude
    # STFT frames (every istft_hop samples), one strided conv down to the frame rate
    encoder: Literal["conv", "stft"] = "conv"
    istft_hop: int = 80
    n_fft: int = field(default=0, metadata=ADDED_LATER)           # the spectral parts' STFT window (0: 4 x istft_hop)
    griffin_lim_iters: int = field(default=32, metadata=ADDED_LATER)  # "magnitude" decoder: phase-recovery iterations
    quantizer: QuantizerConfig = field(default_factory=lambda: RVQConfig(
        codebook_size=256, dim=32, depth=4, codebook_update="ema", commitment=0.25))

    def __post_init__(self) -> None:
        self.strides, self.channels, self.dilations = tuple(self.strides), tuple(self.channels), tuple(self.dilations)
        if not self.strides or any(not isinstance(s, int) or s < 1 for s in self.strides):
            raise ValueError(f"strides must be positive integers, got {list(self.strides)}")
        if len(self.channels) != len(self.strides) + 1:
            raise ValueError(f"channels needs one entry for the stem and one per stride ({len(self.strides) + 1}), "
                             f"got {len(self.channels)}")
        if self.in_channels != 1:
            raise ValueError(f"the codec reads mono audio (in_channels 1), got {self.in_channels}")
        if self.seq_len % self.hop:
            raise ValueError(f"seq_len {self.seq_len} samples is not a multiple of the hop {self.hop} "
                             f"(the product of strides {list(self.strides)}): pick a clip length of k x {self.hop}")
        if min(self.mel_weight, self.stft_weight, self.waveform_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.decoder not in ("conv", "istft", "magnitude"):
            raise ValueError(f"decoder must be 'conv', 'istft' or 'magnitude', got {self.decoder!r}")
        if self.encoder not in ("conv", "stft"):
            raise ValueError(f"encoder must be 'conv' or 'stft', got {self.encoder!r}")
        spectral = self.decoder != "conv" or self.encoder == "stft"
        if spectral and (self.istft_hop < 1 or self.hop % self.istft_hop):
            raise ValueError(f"istft_hop {self.istft_hop} must divide the hop {self.hop}")
        if spectral and self.n_fft and (self.n_fft < self.istft_hop or self.n_fft % 2):
            raise ValueError(f"n_fft {self.n_fft} must be even and at least istft_hop {self.istft_hop}")
        if self.griffin_lim_iters < 0:
            raise ValueError(f"griffin_lim_iters must be >= 0, got {self.griffin_lim_iters}")
        if not 0 < self.mel_floor < 1:
            raise ValueError(f"mel_floor must be in (0, 1), got {self.mel_floor}")

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def stft_window(self) -> int:
        """n_fft of the STFT encoder and the spectral decoders."""
        return self.n_fft or 4 * self.istft_hop

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop

    def bitrate(self, levels: int | None = None) -> float:
        """Bits per second of the codes: levels x log2(codebook size) x frame rate (None: all levels)."""
        q = self.quantizer
        if not getattr(q, "discrete", True) or not hasattr(q, "codebook_size"):
            raise ValueError(f"quantizer {q.name!r} has no codebook: no bitrate")
        levels = getattr(q, "depth", 1) if levels is None else levels
        return levels * math.log2(q.codebook_size) * self.frame_rate

    @classmethod
    def tiny(cls) -> "CodecConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(seq_len=64, strides=(2, 4), channels=(4, 8, 8), dilations=(1,),
                   quantizer=RVQConfig(codebook_size=16, dim=4, depth=2, kmeans_iters=2))


class Snake(nn.Module):
    """x + sin²(αx) / α, α learned per channel (started at 1): [B, C, L] -> same."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.sin(self.alpha * x).pow(2) / (self.alpha + 1e-9)


class ResidualUnit(nn.Module):
    """Snake, dilated conv (k 7), Snake, conv (k 1), plus the input: [B, C, L] -> same."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.body = nn.Sequential(Snake(channels), nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation),
                                  Snake(channels), nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _down(c_in: int, c_out: int, stride: int, dilations: tuple[int, ...]) -> nn.Sequential:
    """[B, c_in, L] -> [B, c_out, L / stride]."""
    return nn.Sequential(*[ResidualUnit(c_in, d) for d in dilations], Snake(c_in),
                         nn.Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2)))


def _up(c_in: int, c_out: int, stride: int, dilations: tuple[int, ...]) -> nn.Sequential:
    """[B, c_in, t] -> [B, c_out, t * stride] (odd strides: output_padding makes the length exact)."""
    return nn.Sequential(Snake(c_in), nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride,
                                                         padding=math.ceil(stride / 2), output_padding=stride % 2),
                         *[ResidualUnit(c_out, d) for d in dilations])


class CodecEncoder(nn.Module):
    """[B, 1, L] -> [B, d, t]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.stem = nn.Conv1d(1, ch[0], 7, padding=3)
        self.blocks = nn.Sequential(*[_down(ch[i], ch[i + 1], s, cfg.dilations) for i, s in enumerate(cfg.strides)])
        self.out = nn.Sequential(Snake(ch[-1]), nn.Conv1d(ch[-1], cfg.quantizer.dim, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(self.stem(x)))


class CodecDecoder(nn.Module):
    """[B, d, t] -> [B, 1, L] in (-1, 1)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        ch = cfg.channels[::-1]
        strides = cfg.strides[::-1]
        self.stem = nn.Conv1d(cfg.quantizer.dim, ch[0], 7, padding=3)
        self.blocks = nn.Sequential(*[_up(ch[i], ch[i + 1], s, cfg.dilations) for i, s in enumerate(strides)])
        self.out = nn.Sequential(Snake(ch[-1]), nn.Conv1d(ch[-1], 1, 7, padding=3), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.blocks(self.stem(z)))


def log_magnitude_scale(n_fft: int, floor: float) -> tuple[float, float]:
    """(centre, half-width) of the log-magnitudes a Hann STFT of n_fft can hold for [-1, 1] audio:
    from log(floor) to log(n_fft / 4) (a full-scale sine's peak). The spectral parts read and write
    log-magnitudes through this affine map, so the networks see and emit values of order 1: left raw
    (-11.5 to 5.5 at floor 1e-5), the output layer needed thousands of steps just to reach the
    targets' scale."""
    low, high = math.log(floor), math.log(n_fft / 4)
    return (low + high) / 2, (high - low) / 2


class STFTEncoder(nn.Module):
    """[B, 1, L] -> [B, d, t]: log-magnitude STFT frames (every istft_hop samples), residual units over
    frames, a strided conv down to the frame rate, residual units, Snake, conv to d. The harmonics
    arrive as bins, so the encoder need not learn a filter bank from samples first."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        ch = cfg.channels[-1]
        down = cfg.hop // cfg.istft_hop
        self.n_fft, self.hop, self.floor = cfg.stft_window, cfg.istft_hop, cfg.mel_floor
        self.centre, self.scale = log_magnitude_scale(self.n_fft, self.floor)
        self.stem = nn.Conv1d(self.n_fft // 2 + 1, ch, 7, padding=3)
        self.stft_frames = nn.Sequential(*[ResidualUnit(ch, d) for d in cfg.dilations])
        self.down = nn.Sequential(Snake(ch), nn.Conv1d(ch, ch, 2 * down, stride=down, padding=math.ceil(down / 2))) \
            if down > 1 else nn.Identity()
        self.frames = nn.Sequential(*[ResidualUnit(ch, d) for d in cfg.dilations])
        self.out = nn.Sequential(Snake(ch), nn.Conv1d(ch, cfg.quantizer.dim, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[-1] // self.hop
        spec = torch.log(stft_magnitude(x[:, 0], self.n_fft, self.hop)[..., :frames].clamp_min(self.floor))  # [B, F, T]
        spec = (spec - self.centre) / self.scale
        return self.out(self.frames(self.down(self.stft_frames(self.stem(spec.to(x.dtype))))))


class SpectralTrunk(nn.Module):
    """[B, d, t] -> [B, out, t * up + 1] per STFT frame (every istft_hop samples, centred, so one more
    than samples / hop; the last is repeated): residual units at the frame rate, a transposed conv
    up to STFT frames, residual units, a conv to `out` per frame. Every layer runs at 50-200 Hz, not
    at the sample rate; the spectral decoders differ only in what `out` holds."""

    def __init__(self, cfg: CodecConfig, out: int) -> None:
        super().__init__()
        ch = cfg.channels[-1]
        up = cfg.hop // cfg.istft_hop
        self.stem = nn.Conv1d(cfg.quantizer.dim, ch, 7, padding=3)
        self.frames = nn.Sequential(*[ResidualUnit(ch, d) for d in cfg.dilations])
        self.up = nn.Sequential(Snake(ch), nn.ConvTranspose1d(ch, ch, 2 * up, stride=up, padding=math.ceil(up / 2),
                                                              output_padding=up % 2)) if up > 1 else nn.Identity()
        self.stft_frames = nn.Sequential(*[ResidualUnit(ch, d) for d in cfg.dilations])
        self.out = nn.Sequential(Snake(ch), nn.Conv1d(ch, out, 7, padding=3))

    def forward(self, z: Tensor) -> Tensor:
        y = self.out(self.stft_frames(self.up(self.frames(self.stem(z))))).float()
        return torch.cat([y, y[..., -1:]], dim=-1)


class ISTFTDecoder(nn.Module):
    """[B, d, t] -> [B, 1, L] (Vocos): the spectral trunk gives log-magnitude and phase per bin, an
    inverse STFT (Hann window of n_fft, centred) the waveform; each bin's oscillation comes from the
    transform, not from learned upsampling filters."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.n_fft, self.hop = cfg.stft_window, cfg.istft_hop
        self.centre, self.scale = log_magnitude_scale(self.n_fft, cfg.mel_floor)
        self.trunk = SpectralTrunk(cfg, 2 * (self.n_fft // 2 + 1))

    def forward(self, z: Tensor) -> Tensor:
        log_mag, phase = self.trunk(z).chunk(2, dim=1)                     # [B, F, frames] each
        log_mag = self.centre + self.scale * log_mag
        spec = torch.exp(log_mag.clamp(max=6.0)) * torch.exp(1j * phase)
        window = torch.hann_window(self.n_fft, device=z.device)
        wave = torch.istft(spec, self.n_fft, self.hop, window=window, center=True,
                           length=spec.shape[-1] * self.hop - self.hop)
        return wave[:, None]


class MagnitudeDecoder(nn.Module):
    """[B, d, t] -> log-magnitudes [B, F, L / istft_hop + 1] (`forward`, what the loss reads) or
    waveforms [B, 1, L] (`waveform`: Griffin-Lim phases, nn/spectral.py). The phases are left out of
    the model on purpose: a magnitude-only loss cannot teach them, and free phases smear pitch."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.n_fft, self.hop, self.iters = cfg.stft_window, cfg.istft_hop, cfg.griffin_lim_iters
        self.centre, self.scale = log_magnitude_scale(self.n_fft, cfg.mel_floor)
        self.trunk = SpectralTrunk(cfg, self.n_fft // 2 + 1)

    def forward(self, z: Tensor) -> Tensor:
        return (self.centre + self.scale * self.trunk(z)).clamp(max=6.0)

    def waveform(self, z: Tensor) -> Tensor:
        log_mag = self.forward(z)
        length = (log_mag.shape[-1] - 1) * self.hop
        return griffin_lim(torch.exp(log_mag), self.n_fft, self.hop, length, self.iters)[:, None]


@register("tokenizer", "codec", CodecConfig)
class CodecTokenizer(Tokenizer):
    """Waveforms [B, L, 1] (channels-last, as the audio modality gives them) <-> codes on a (L/hop,)
    grid; `decode` of the first q RVQ levels gives the codec's lower bitrates."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = CodecEncoder(config) if config.encoder == "conv" else STFTEncoder(config)
        self.quantizer = lookup("quantizer", config.quantizer.name)[1](config.quantizer)
        self.decoder = {"conv": CodecDecoder, "istft": ISTFTDecoder, "magnitude": MagnitudeDecoder}[config.decoder](config)
        self.spec = latent_spec(self.quantizer, (config.seq_len // config.hop,))

    def _check(self, x: Tensor) -> None:
        L = self.config.seq_len
        if x.dim() == 3 and x.shape[1:] == (L, 1):
            return
        hint = "; this looks channels-first: pass x.transpose(1, 2)" if x.dim() == 3 and x.shape[1:] == (1, L) else ""
        raise ValueError(f"expected mono waveforms [B, {L}, 1], got {list(x.shape)}{hint}")

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, L, 1] -> Quantized (z_q [B, t, d], codes [B, t, Q] or latents, losses, stats)."""
        self._check(x)
        z = self.encoder(x.transpose(1, 2)).transpose(1, 2)  # [B, t, d]
        return self.quantizer(z)

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """[B, t, d] -> [B, t * hop, 1]."""
        if isinstance(self.decoder, MagnitudeDecoder):
            return self.decoder.waveform(z_q.transpose(1, 2)).transpose(1, 2)
        return self.decoder(z_q.transpose(1, 2)).transpose(1, 2)

    def decode(self, z: Tensor) -> Tensor:
        """Codes [B, t, q] (q <= Q levels) or latents [B, t, c] of any length t >= 1 -> [B, t * hop, 1]:
        the decoder is convolutional, so a continuation past the trained clip length decodes whole."""
        check_latents(dataclasses.replace(self.spec, grid=(z.shape[1] if z.dim() > 1 else 0,)), z)
        return self.decode_latents(self.quantizer.lookup(z))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch["audio"] [B, L, 1] -> 'loss', its terms (mel, stft, waveform, bottleneck), and stats."""
        x = batch["audio"]
        q = self.quantize(x)
        ref = x[..., 0].float()
        if isinstance(self.decoder, MagnitudeDecoder):
            return self._magnitude_loss(self.decoder(q.z_q.transpose(1, 2)), ref, q)
        est = self.decode_latents(q.z_q)[..., 0].float()
        cfg = self.config
        terms: dict[str, Tensor] = {}
        if cfg.mel_weight:
            terms["mel"] = cfg.mel_weight * mel_distance(est, ref, cfg.sample_rate, floor=cfg.mel_floor).mean()
        if cfg.stft_weight:
            terms["stft"] = cfg.stft_weight * stft_distance(est, ref).mean()
        if cfg.waveform_weight:
            terms["waveform"] = cfg.waveform_weight * (est - ref).abs().mean()
        terms.update(q.losses)
        return {"loss": sum(terms.values()), **terms, "mae": (est.detach() - ref).abs().mean(), **q.stats}

    def _magnitude_loss(self, log_mag: Tensor, ref: Tensor, q: Quantized) -> dict[str, Tensor]:
        """The "magnitude" decoder's loss, on its STFT frames directly: a log-mel L1 (`mel_weight`)
        and a log-magnitude L1 over every bin (`stft_weight`), both floored at `mel_floor`."""
        cfg = self.config
        n_fft, hop = cfg.stft_window, cfg.istft_hop
        target = stft_magnitude(ref, n_fft, hop)                              # [B, F, T]
        log_floor = math.log(cfg.mel_floor)
        terms: dict[str, Tensor] = {}
        if cfg.mel_weight:
            fb = mel_filters(cfg.sample_rate, n_fft, min(160, n_fft // 4)).to(ref.device)
            mels = [torch.einsum("mf,bft->bmt", fb, m).clamp_min(cfg.mel_floor).log10()
                    for m in (log_mag.exp(), target)]
            terms["mel"] = cfg.mel_weight * (mels[0] - mels[1]).abs().mean()
        if cfg.stft_weight:
            terms["stft"] = cfg.stft_weight * (log_mag.clamp_min(log_floor)
                                               - target.clamp_min(cfg.mel_floor).log()).abs().mean()
        terms.update(q.losses)
        return {"loss": sum(terms.values()), **terms, **q.stats}
