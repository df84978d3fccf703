"""The neural audio codec: exact lengths through odd strides, codes and bitrates, bad input named,
prefix decoding of its RVQ levels, and a codec that must learn (mel distance falls)."""

from __future__ import annotations

import math

import pytest
import torch

from latentforge.modalities.audio_metrics import mel_distance
from latentforge.quantize.rvq import RVQConfig
from latentforge.tokenizers.codec import CodecConfig, CodecTokenizer


def small(**kw) -> CodecTokenizer:
    cfg = dict(seq_len=800, strides=(2, 4), channels=(8, 16, 16), dilations=(1,),
               quantizer=RVQConfig(codebook_size=32, dim=8, depth=2, codebook_update="ema", kmeans_iters=2))
    cfg.update(kw)
    return CodecTokenizer(CodecConfig(**cfg))


def test_lengths_codes_and_bitrate_through_odd_strides():
    tok = small(seq_len=1200, strides=(2, 5, 3), channels=(4, 8, 8, 8),
                quantizer=RVQConfig(codebook_size=16, dim=4, depth=3, kmeans_iters=1)).eval()
    x = torch.rand(3, 1200, 1) * 2 - 1
    with torch.no_grad():
        codes = tok.encode(x)
        assert codes.shape == (3, 40, 3) and codes.dtype == torch.long      # 1200 / (2 * 5 * 3) frames, 3 levels
        y = tok.decode(codes)
        assert y.shape == x.shape and y.abs().max() <= 1
        assert tok.decode(codes[..., :1]).shape == x.shape                   # the first level alone decodes
    cfg = CodecConfig()                                                     # 16 kHz, hop 320, 4 x 256 codes
    assert cfg.hop == 320 and cfg.frame_rate == 50.0
    assert cfg.bitrate() == 4 * 8 * 50 and cfg.bitrate(levels=1) == 400


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="multiple of the hop 8"):
        CodecConfig(seq_len=801, strides=(2, 4), channels=(8, 16, 16))
    with pytest.raises(ValueError, match="one entry for the stem and one per stride"):
        CodecConfig(seq_len=800, strides=(2, 4), channels=(8, 16))
    with pytest.raises(ValueError, match="mono"):
        CodecConfig(in_channels=2)
    tok = small()
    with pytest.raises(ValueError, match="channels-first"):
        tok.encode(torch.zeros(2, 1, 800))


def test_codec_learns_notes_and_every_level_prefix_decodes():
    """150 steps on 50 ms notes: the mel distance falls from ~1.4 to below 0.6 (measured 0.41), and
    with quantizer dropout more levels decode better (or no worse) than fewer."""
    from latentforge.data.notes import NotesConfig, NotesData

    torch.manual_seed(0)
    data = NotesData(NotesConfig(seconds=0.05, train_size=128, val_size=16, kinds=("note",), timbres=("sine", "saw")))
    train = torch.from_numpy(data.split("train")["audio"])[..., None]
    val = torch.from_numpy(data.split("val")["audio"])[..., None]
    tok = small()
    opt = torch.optim.Adam(tok.parameters(), 2e-3)

    def distance(levels=None) -> float:
        tok.eval()
        with torch.no_grad():
            codes = tok.encode(val)
            y = tok.decode(codes if levels is None else codes[..., :levels])
        tok.train()
        return float(mel_distance(y[..., 0], val[..., 0], data.config.sample_rate).mean())

    before = distance()
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        out = tok.loss({"audio": train[torch.randint(0, len(train), (8,), generator=g)]})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = distance()
    assert before > 1.0 and after < 0.6
    assert after <= distance(levels=1) + 0.02


def test_stft_encoder_and_istft_decoder_keep_lengths_and_name_bad_hops():
    tok = small(seq_len=1600, strides=(4, 5), channels=(4, 8, 16), encoder="stft", decoder="istft", istft_hop=5)
    x = torch.rand(2, 1600, 1) * 2 - 1
    out = tok.loss({"audio": x})
    out["loss"].backward()
    assert tok.encode(x).shape == (2, 80, 2) and tok(x).shape == x.shape
    assert all(p.grad is not None for p in tok.encoder.parameters())
    with pytest.raises(ValueError, match="istft_hop 3 must divide the hop 20"):
        CodecConfig(seq_len=1600, strides=(4, 5), channels=(4, 8, 16), decoder="istft", istft_hop=3)


def test_griffin_lim_recovers_a_tone_from_its_magnitudes():
    """From the true STFT magnitudes of a two-tone clip, 32 fast Griffin-Lim iterations give a waveform
    whose spectrum matches far better than the same magnitudes with zero phases, and whose loudest
    frequency is the clip's; deterministic, and the shape is checked."""
    from latentforge.nn.spectral import griffin_lim, stft_magnitude

    sr, n_fft, hop, L = 16000, 512, 128, 4096
    t = torch.arange(L) / sr
    x = (0.5 * torch.sin(2 * torch.pi * 440.0 * t) + 0.2 * torch.sin(2 * torch.pi * 1210.0 * t))[None]
    mag = stft_magnitude(x, n_fft, hop)                                       # [1, 257, 33]

    def convergence(y):
        return float((stft_magnitude(y, n_fft, hop) - mag).norm() / mag.norm())

    y = griffin_lim(mag, n_fft, hop, L, iters=32)
    assert y.shape == (1, L) and torch.equal(y, griffin_lim(mag, n_fft, hop, L, iters=32))
    assert convergence(y) < 0.15 and convergence(griffin_lim(mag, n_fft, hop, L, iters=0)) > 0.9  # 0.10 vs 0.95
    spectrum = torch.fft.rfft(y[0]).abs()
    assert abs(float(spectrum.argmax()) * sr / L - 440.0) < 2 * sr / L
    with pytest.raises(ValueError, match=r"expected magnitudes \[B, 257, T\]"):
        griffin_lim(mag[:, :100], n_fft, hop, L)


def test_magnitude_decoder_trains_on_spectra_and_decodes_waveforms():
    """The "magnitude" decoder's loss reads its log-magnitude frames (no waveform, no Griffin-Lim in
    training), reaches every parameter, starts at the log-magnitude range's centre, and decodes
    clips of the input's length; a short run lowers the mel distance of the decoded clips."""
    from latentforge.data.notes import NotesConfig, NotesData
    from latentforge.tokenizers.codec import MagnitudeDecoder, log_magnitude_scale

    centre, half = log_magnitude_scale(1024, 1e-5)
    assert centre == pytest.approx((math.log(1e-5) + math.log(256)) / 2) and half > 8
    torch.manual_seed(0)
    data = NotesData(NotesConfig(seconds=0.1, train_size=128, val_size=16, kinds=("note",), timbres=("sine", "saw")))
    train = torch.from_numpy(data.split("train")["audio"])[..., None]
    val = torch.from_numpy(data.split("val")["audio"])[..., None]
    tok = small(seq_len=1600, strides=(4, 5), channels=(4, 8, 32), encoder="stft", decoder="magnitude",
                istft_hop=20, n_fft=256, griffin_lim_iters=16)
    assert isinstance(tok.decoder, MagnitudeDecoder) and tok.config.stft_window == 256
    out = tok.loss({"audio": train[:4]})
    assert set(out) >= {"loss", "mel"} and "mae" not in out and "stft" not in out
    out["loss"].backward()
    assert all(p.grad is not None for m in (tok.encoder, tok.decoder) for p in m.parameters())
    assert tok.decoder(tok.quantize(val).z_q.transpose(1, 2)).shape == (16, 129, 1600 // 20 + 1)

    def distance() -> float:
        tok.eval()
        with torch.no_grad():
            y = tok(val)
        tok.train()
        assert y.shape == val.shape
        return float(mel_distance(y[..., 0], val[..., 0], data.config.sample_rate).mean())

    before = distance()
    opt = torch.optim.Adam(tok.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        out = tok.loss({"audio": train[torch.randint(0, len(train), (8,), generator=g)]})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert distance() < before - 0.4          # measured 1.35 -> 0.43
    with pytest.raises(ValueError, match="n_fft 7 must be even"):
        CodecConfig(seq_len=1600, strides=(4, 5), channels=(4, 8, 16), decoder="magnitude", istft_hop=5, n_fft=7)
