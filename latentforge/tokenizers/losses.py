"""Reconstruction losses shared by every image tokenizer, and per-band PSNR.

* `reconstruction_loss`: plain pixel L1 / L2 / both.
* `wavelet_loss`: the frequency-aware loss of P34 (FA-VAE, "Missing Fine Details in Images:
  Last Seen in High Frequencies"). Pixel losses are dominated by the low frequencies, which
  hold most of an image's energy, so tokenizers trained on them fit coarse structure first
  and leave textures blurred. Decomposing both images with a Haar wavelet and penalising the
  low band and the detail bands as two separately weighted terms lets the detail term be
  raised without touching the coarse fit.
* `band_psnr`: PSNR restricted to each band, the matching evaluation (P34's check: the
  high-band PSNR improves).

Shapes: B batch, C channels, H x W image. Every function computes in float32 whatever the
input dtype: losses summed over many pixels lose too much precision in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from latentforge.nn.wavelet import haar_dwt

ReconKind = Literal["l1", "l2", "l1+l2"]
RECON_KINDS: tuple[str, ...] = ("l1", "l2", "l1+l2")
DISTANCES: tuple[str, ...] = ("l1", "l2")


def _check_pair(x_hat: Tensor, x: Tensor) -> None:
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have the same shape, got {list(x_hat.shape)} and {list(x.shape)}")


def reconstruction_loss(x_hat: Tensor, x: Tensor, kind: ReconKind = "l2") -> dict[str, Tensor]:
    """Pixel reconstruction terms, averaged over every element.

    Args:
        x_hat, x: reconstruction and target, same shape (any).
        kind: "l1" (mean absolute error), "l2" (mean squared error) or "l1+l2" (both terms).

    Returns:
        {"l1": scalar} and/or {"l2": scalar}; the training loss is their sum.
    """
    if kind not in RECON_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(RECON_KINDS)}")
    _check_pair(x_hat, x)
    x_hat, x = x_hat.float(), x.float()
    terms = {}
    if kind in ("l1", "l1+l2"):
        terms["l1"] = F.l1_loss(x_hat, x)
    if kind in ("l2", "l1+l2"):
        terms["l2"] = F.mse_loss(x_hat, x)
    return terms


# --- frequency-aware wavelet loss (P34) -------------------------------------------


@dataclass
class WaveletLossConfig:
    """Weights and distance of the two-band wavelet loss.

    Attributes:
        levels: Haar levels; the low band is the approximation after the last level, the
            high band every detail coefficient of every level.
        distance: "l1" (mean absolute) or "l2" (mean squared) difference of coefficients.
        low_weight: weight of the low-band term (coarse structure and colour).
        high_weight: weight of the high-band term (edges and texture).
        normalize: divide each band's distance by the target band's mean magnitude (its
            mean |coef| for l1, mean coef^2 for l2, batch-wide, no gradient), so that the
            low-energy detail band is not drowned out by the low band.
    """

    levels: int = 1
    distance: Literal["l1", "l2"] = "l1"
    low_weight: float = 1.0
    high_weight: float = 1.0
    normalize: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 1:
            raise ValueError(f"WaveletLossConfig.levels must be an integer >= 1, got {self.levels!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"WaveletLossConfig.distance: {self.distance!r} is not one of {', '.join(DISTANCES)}")
        for key in ("low_weight", "high_weight"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"WaveletLossConfig.{key} must be a finite number >= 0, got {value!r}")


# Keeps the normalised loss finite on blank targets (e.g. an all-flat detail band).
_NORM_EPS = 1e-6


def _band_distance(pred: Tensor, target: Tensor, cfg: WaveletLossConfig) -> Tensor:
    diff = pred - target
    if cfg.distance == "l1":
        value, scale = diff.abs().mean(), target.abs().mean()
    else:
        value, scale = diff.pow(2).mean(), target.pow(2).mean()
    if cfg.normalize:
        # The scale is a property of the data, not something to optimise: detach it.
        value = value / (scale.detach() + _NORM_EPS)
    return value


def wavelet_loss(x_hat: Tensor, x: Tensor, cfg: WaveletLossConfig | None = None) -> dict[str, Tensor]:
    """Frequency-aware reconstruction loss (P34): low and high Haar bands as separate terms.

    Args:
        x_hat, x: reconstruction and target images [B, C, H, W], H and W multiples of
            2**cfg.levels.
        cfg: weights and distance; defaults to `WaveletLossConfig()`.

    Returns:
        {"wavelet_low": low_weight * d(low band),
         "wavelet_high": high_weight * mean over levels of d(detail bands of that level)},
        both scalars, so a trainer logs them apart and optimises their sum. Each level's
        three detail bands are pooled; levels are averaged rather than pooled so a coarse
        level (4x fewer coefficients than the one below) keeps an equal say.
    """
    cfg = cfg or WaveletLossConfig()
    _check_pair(x_hat, x)
    low_hat, highs_hat = haar_dwt(x_hat.float(), cfg.levels)
    low, highs = haar_dwt(x.float(), cfg.levels)
    high = torch.stack([_band_distance(p, t, cfg) for p, t in zip(highs_hat, highs)]).mean()
    return {
        "wavelet_low": cfg.low_weight * _band_distance(low_hat, low, cfg),
        "wavelet_high": cfg.high_weight * high,
    }


# --- evaluation: PSNR per band ----------------------------------------------------


def band_psnr(x_hat: Tensor, x: Tensor, levels: int = 1) -> dict[str, Tensor]:
    """Per-image PSNR of each Haar band, for images in [-1, 1].

    Band b's error is its share of the pixel mean squared error: e_b = (sum of squared
    coefficient differences in b) / (C * H * W). The transform is orthonormal, so the
    shares add up to the pixel MSE, and an error confined to one band gives that band the
    image's own PSNR and every other band +inf. Like the library's pixel PSNR, the peak is
    the [-1, 1] range: PSNR_b = 10 * log10(2^2 / e_b).

    Args:
        x_hat, x: [B, C, H, W] in [-1, 1], H and W multiples of 2**levels.
        levels: Haar levels.

    Returns:
        {"low": [B], "high_1": [B], ..., "high_<levels>": [B]} in dB (high_1 is the finest
        level); identical bands give +inf.
    """
    _check_pair(x_hat, x)
    low_hat, highs_hat = haar_dwt(x_hat.float(), levels)
    low, highs = haar_dwt(x.float(), levels)
    pixels = x[0].numel()  # C * H * W

    def psnr(pred: Tensor, target: Tensor) -> Tensor:
        share = (pred - target).pow(2).flatten(1).sum(1) / pixels  # [B]
        return 10 * torch.log10(4.0 / share)

    out = {"low": psnr(low_hat, low)}
    for level, (p, t) in enumerate(zip(highs_hat, highs), start=1):
        out[f"high_{level}"] = psnr(p, t)
    return out


# --- the image autoencoder objective, shared by every image tokenizer ---------------------


def image_psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    """PSNR in dB of a batch of images in [-1, 1], as a training statistic (detached).

    One PSNR of the batch MSE (not a mean of per-image PSNRs, which a single perfect image
    would send to infinity). Rescaling [-1, 1] to [0, 1] divides the MSE by 4, so the peak is 4.
    """
    mse = F.mse_loss(x_hat.detach().float().clamp(-1, 1), x.float())
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def image_autoencoder_loss(tokenizer, x: Tensor, recon: ReconKind = "l2",
                           wavelet: WaveletLossConfig | None = None, *, x_in: Tensor | None = None,
                           corrupt_latents: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """quantize -> decode -> reconstruction terms (+ P34's wavelet terms) (+ a perceptual term when the
    tokenizer has a `perceptual` loss) + the bottleneck's terms (+ the patch-GAN terms when the tokenizer
    has a `discriminator`; with an adaptive weight, balanced against the reconstruction terms at the
    tokenizer's `last_layer()`).

    x_in: what the encoder reads when it differs from the target x (P22's masked frames);
    corrupt_latents: applied to the quantized latents before decoding (P22's masked tokens).
    Returns 'loss' (their sum), every term, 'psnr' and the bottleneck's statistics.
    """
    q = tokenizer.quantize(x if x_in is None else x_in)
    x_hat = tokenizer.decode_latents(q.z_q if corrupt_latents is None else corrupt_latents(q.z_q))
    terms = reconstruction_loss(x_hat, x, recon)
    if wavelet is not None:
        terms.update(wavelet_loss(x_hat, x, wavelet))
    perceptual = getattr(tokenizer, "perceptual", None)
    if perceptual is not None:
        terms["perceptual"] = perceptual.config.weight * perceptual(x_hat, x).mean()
    rec_loss = sum(terms.values())  # what an adaptive GAN weight balances against (VQGAN's nll_loss)
    terms.update(q.losses)
    stats = {}
    discriminator = getattr(tokenizer, "discriminator", None)
    if discriminator is not None and tokenizer.training:
        from latentforge.tokenizers.discriminator import adversarial_terms

        step = int(tokenizer.train_step)
        tokenizer.train_step += 1
        last = tokenizer.last_layer() if discriminator.config.adaptive else None
        adv = adversarial_terms(discriminator, x, x_hat, step, rec_loss, last)
        terms.update(g_adv=adv["g_adv"], d_loss=adv["d_loss"])
        stats.update(logits_real=adv["logits_real"], logits_fake=adv["logits_fake"])
        if "adaptive_weight" in adv:
            stats["adaptive_weight"] = adv["adaptive_weight"]
    return {"loss": sum(terms.values()), **terms, "psnr": image_psnr(x_hat, x), **q.stats, **stats}
