"""How far decoded audio is from the original, per clip, the way the codec papers report it. Each
function takes `estimate` and `reference` waveforms [B, L] and returns [B]; the codec's losses
(tokenizers/codec.py) are the means of the first two.

- `mel_distance`: multi-scale mel L1, DAC's reconstruction term: mean |log10 mel(est) − log10
  mel(ref)| over 7 window sizes (32 .. 2048 samples, hop a quarter window), mel bands growing
  with the window (5 .. 320 at 44.1 kHz; scaled to the Nyquist band at lower rates).
- `stft_distance`: multi-resolution STFT distance (Parallel WaveGAN / auraloss's form): spectral
  convergence ‖|S_ref| − |S_est|‖_F / ‖|S_ref|‖_F plus mean |log |S_ref| − log |S_est||, averaged
  over windows of 512, 1024 and 2048 samples (hops 128, 256, 512).
- `si_sdr`: scale-invariant signal-to-distortion ratio (dB; Le Roux et al. 2019), means removed.
- `stoi`: short-time objective intelligibility (Taal et al. 2011) through `pystoi`, for speech.

Legend: B clips, L samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from latentforge.modalities.spectral import LOG_FLOOR, mel_filters, stft_magnitude

MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_BANDS = (5, 10, 20, 40, 80, 160, 320)
STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))   # (window, hop)


def _check(estimate: Tensor, reference: Tensor) -> None:
    if estimate.shape != reference.shape or estimate.ndim != 2:
        raise ValueError(f"expected waveforms [B, L] of equal shape, got {list(estimate.shape)} and "
                         f"{list(reference.shape)}")


def mel_distance(estimate: Tensor, reference: Tensor, sample_rate: int,
                 windows: tuple[int, ...] = MEL_WINDOWS, bands: tuple[int, ...] = MEL_BANDS,
                 floor: float = LOG_FLOOR) -> Tensor:
    """Multi-scale log-mel L1 per clip: [B]. `floor` clamps mel amplitudes before the log (1e-5,
    -100 dB, as DAC; a training loss may raise it so near-silent bins weigh less)."""
    _check(estimate, reference)
    total = estimate.new_zeros(estimate.shape[0], dtype=torch.float32)
    for n_fft, n_mels in zip(windows, bands):
        # a short window's few FFT bins can't fill many mel bands: keep each band at least one bin wide
        n_mels = min(n_mels, n_fft // 4)
        fb = mel_filters(sample_rate, n_fft, n_mels).to(estimate.device)
        spec = [torch.einsum("mf,bft->bmt", fb, stft_magnitude(w, n_fft, n_fft // 4)) for w in (estimate, reference)]
        total += (torch.log10(spec[0].clamp_min(floor)) - torch.log10(spec[1].clamp_min(floor))).abs().mean((1, 2))
    return total / len(windows)


def stft_distance(estimate: Tensor, reference: Tensor,
                  resolutions: tuple[tuple[int, int], ...] = STFT_RESOLUTIONS) -> Tensor:
    """Multi-resolution STFT distance per clip (spectral convergence + log-magnitude L1): [B]."""
    _check(estimate, reference)
    total = estimate.new_zeros(estimate.shape[0], dtype=torch.float32)
    for n_fft, hop in resolutions:
        est, ref = stft_magnitude(estimate, n_fft, hop), stft_magnitude(reference, n_fft, hop)
        convergence = (ref - est).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp_min(LOG_FLOOR)
        log_l1 = (torch.log(ref.clamp_min(LOG_FLOOR)) - torch.log(est.clamp_min(LOG_FLOOR))).abs().mean((1, 2))
        total += convergence + log_l1
    return total / len(resolutions)


def si_sdr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB per clip: [B]. The reference is scaled to best match the estimate
    (zero-mean both), and the error is what that scaled reference leaves."""
    _check(estimate, reference)
    est = estimate.double() - estimate.double().mean(-1, keepdim=True)
    ref = reference.double() - reference.double().mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    return (10 * torch.log10((target.square().sum(-1) + eps) / (noise.square().sum(-1) + eps))).float()


def stoi(estimate: Tensor, reference: Tensor, sample_rate: int) -> np.ndarray:
    """STOI per clip through pystoi (its own resampling to 10 kHz): float [B] in about [0, 1]."""
    _check(estimate, reference)
    try:
        from pystoi import stoi as pystoi_stoi
    except ImportError as e:
        raise ImportError("STOI needs pystoi: pip install 'latentforge[audio]'") from e
    est, ref = estimate.double().cpu().numpy(), reference.double().cpu().numpy()
    return np.array([pystoi_stoi(r, e, sample_rate, extended=False) for e, r in zip(est, ref)])
