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

The two spectral distances are computed in nn/spectral.py (the codec's loss uses them too, and
tokenizers sit below modalities); they are re-exported here beside the other metrics.

Legend: B clips, L samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from latentforge.nn.spectral import check_pair, mel_distance, stft_distance  # noqa: F401  (re-exported: the codec uses them from nn/)


def si_sdr(estimate: Tensor, reference: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB per clip: [B]. The reference is scaled to best match the estimate
    (zero-mean both), and the error is what that scaled reference leaves."""
    check_pair(estimate, reference)
    est = estimate.double() - estimate.double().mean(-1, keepdim=True)
    ref = reference.double() - reference.double().mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + eps)
    target = scale * ref
    noise = est - target
    return (10 * torch.log10((target.square().sum(-1) + eps) / (noise.square().sum(-1) + eps))).float()


def stoi(estimate: Tensor, reference: Tensor, sample_rate: int) -> np.ndarray:
    """STOI per clip through pystoi (its own resampling to 10 kHz): float [B] in about [0, 1]."""
    check_pair(estimate, reference)
    try:
        from pystoi import stoi as pystoi_stoi
    except ImportError as e:
        raise ImportError("STOI needs pystoi: pip install 'latentforge[audio]'") from e
    est, ref = estimate.double().cpu().numpy(), reference.double().cpu().numpy()
    return np.array([pystoi_stoi(r, e, sample_rate, extended=False) for e, r in zip(est, ref)])
