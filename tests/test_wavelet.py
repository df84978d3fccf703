"""Haar wavelet transform (nn/wavelet.py) and the reconstruction losses built on it."""

from __future__ import annotations

import math

import pytest
import torch

from latentforge.nn.wavelet import haar_dwt, haar_idwt
from latentforge.tokenizers.losses import (
    WaveletLossConfig,
    band_psnr,
    reconstruction_loss,
    wavelet_loss,
)


def _checkerboard(b: int, c: int, h: int, w: int) -> torch.Tensor:
    """+1 / -1 alternating pixels: energy only in the finest diagonal (HH) band."""
    i = torch.arange(h)[:, None]
    j = torch.arange(w)[None, :]
    return (1.0 - 2.0 * ((i + j) % 2)).float().expand(b, c, h, w).clone()


# --- transform --------------------------------------------------------------------


def test_dwt_known_answer_on_a_2x2_block():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    low, highs = haar_dwt(x, 1)
    # LL = (1+2+3+4)/2; LH = (1+2-3-4)/2; HL = (1-2+3-4)/2; HH = (1-2-3+4)/2
    assert low.flatten().tolist() == [5.0]
    assert highs[0].flatten().tolist() == [-2.0, -1.0, 0.0]


def test_two_levels_known_answer_on_a_constant_image():
    x = torch.full((1, 1, 4, 4), 3.0)
    low, highs = haar_dwt(x, 2)
    # each level doubles a constant (orthonormal gain 2 per level) and has no detail
    assert low.flatten().tolist() == [12.0]
    assert all(h.abs().max() == 0 for h in highs)


def test_idwt_of_single_coefficients_gives_the_haar_basis_images():
    expected = {0: [[0.5, 0.5], [-0.5, -0.5]],   # LH: varies along H
                1: [[0.5, -0.5], [0.5, -0.5]],   # HL: varies along W
                2: [[0.5, -0.5], [-0.5, 0.5]]}   # HH: checkerboard
    for band, image in expected.items():
        highs = torch.zeros(1, 1, 3, 1, 1)
        highs[0, 0, band] = 1.0
        x = haar_idwt(torch.zeros(1, 1, 1, 1), [highs])
        assert x[0, 0].tolist() == image


@pytest.mark.parametrize("levels,shape", [(1, (2, 3, 8, 8)), (2, (2, 3, 16, 8)), (3, (1, 2, 16, 32))])
def test_shapes_perfect_reconstruction_and_parseval(levels, shape):
    x = torch.randn(*shape)
    low, highs = haar_dwt(x, levels)
    b, c, h, w = shape
    assert low.shape == (b, c, h >> levels, w >> levels)
    assert [tuple(t.shape) for t in highs] == [(b, c, 3, h >> lv, w >> lv) for lv in range(1, levels + 1)]
    torch.testing.assert_close(haar_idwt(low, highs), x, atol=1e-5, rtol=0)
    energy = low.pow(2).sum() + sum(t.pow(2).sum() for t in highs)
    torch.testing.assert_close(energy, x.pow(2).sum(), rtol=1e-5, atol=0)


def test_keeps_dtype_and_passes_gradients():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    low, highs = haar_dwt(x, 2)
    assert low.dtype == torch.float64 and highs[0].dtype == torch.float64
    haar_idwt(low, highs).sum().backward()
    # d(sum(idwt(dwt(x))))/dx = 1: the round trip is the identity
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_bad_inputs_raise_naming_the_problem():
    with pytest.raises(ValueError, match="divisible by 4"):
        haar_dwt(torch.zeros(1, 1, 6, 8), 2)
    with pytest.raises(ValueError, match="levels"):
        haar_dwt(torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        haar_dwt(torch.zeros(4, 4), 1)
    with pytest.raises(ValueError, match="highs\\[0\\]"):
        haar_idwt(torch.zeros(1, 1, 2, 2), [torch.zeros(1, 1, 3, 1, 1)])
    with pytest.raises(ValueError, match="empty"):
        haar_idwt(torch.zeros(1, 1, 2, 2), [])


def test_agrees_with_pywavelets():
    pywt = pytest.importorskip("pywt")
    x = torch.randn(1, 1, 16, 12, dtype=torch.float64)
    low, highs = haar_dwt(x, 1)
    ca, (ch, cv, cd) = pywt.dwt2(x[0, 0].numpy(), "haar")
    torch.testing.assert_close(low[0, 0], torch.from_numpy(ca))
    for k, ref in enumerate((ch, cv, cd)):  # LH, HL, HH = pywt's horizontal, vertical, diagonal
        torch.testing.assert_close(highs[0][0, 0, k], torch.from_numpy(ref))
    # multi-level: pywt lists the coarsest level first, we list the finest first
    low, highs = haar_dwt(x, 2)
    coeffs = pywt.wavedec2(x[0, 0].numpy(), "haar", level=2)
    torch.testing.assert_close(low[0, 0], torch.from_numpy(coeffs[0]))
    for level in (1, 2):
        for k, ref in enumerate(coeffs[-level]):
            torch.testing.assert_close(highs[level - 1][0, 0, k], torch.from_numpy(ref))


# --- pixel losses -----------------------------------------------------------------


def test_reconstruction_loss_known_values():
    x = torch.zeros(2, 3, 4, 4)
    x_hat = x + 0.5
    l1, l2 = reconstruction_loss(x_hat, x, "l1"), reconstruction_loss(x_hat, x, "l2")
    assert list(l1) == ["l1"] and l1["l1"].item() == pytest.approx(0.5)
    assert list(l2) == ["l2"] and l2["l2"].item() == pytest.approx(0.25)
    terms = reconstruction_loss(x_hat, x, "l1+l2")
    assert set(terms) == {"l1", "l2"}
    assert terms["l1"].item() == pytest.approx(0.5) and terms["l2"].item() == pytest.approx(0.25)
    assert reconstruction_loss(x_hat.bfloat16(), x.bfloat16())["l2"].dtype == torch.float32


def test_reconstruction_loss_bad_inputs():
    with pytest.raises(ValueError, match="'l3'"):
        reconstruction_loss(torch.zeros(1), torch.zeros(1), "l3")
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_loss(torch.zeros(1, 2), torch.zeros(2, 1))


# --- wavelet loss (P34) -----------------------------------------------------------


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_wavelet_loss_is_zero_for_identical_images(distance):
    x = torch.randn(2, 3, 8, 8)
    terms = wavelet_loss(x, x.clone(), WaveletLossConfig(levels=2, distance=distance))
    assert set(terms) == {"wavelet_low", "wavelet_high"}
    assert all(v.item() == 0 for v in terms.values())


@pytest.mark.parametrize("levels", [1, 2])
def test_checkerboard_perturbation_only_reaches_the_high_band(levels):
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    terms = wavelet_loss(x + 0.1 * _checkerboard(2, 3, 8, 8), x, WaveletLossConfig(levels=levels))
    assert terms["wavelet_low"].item() < 1e-6
    # level 1 (HH only: 1 of its 3 bands carries |2 * 0.1|) averaged with the levels above (zero)
    assert terms["wavelet_high"].item() == pytest.approx(0.2 / 3 / levels, rel=1e-4)


def test_constant_offset_only_reaches_the_low_band():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    l1 = wavelet_loss(x + 0.1, x, WaveletLossConfig(levels=2, distance="l1"))
    assert l1["wavelet_high"].item() < 1e-6
    assert l1["wavelet_low"].item() == pytest.approx(0.4, rel=1e-4)  # two levels: gain 2 * 2
    l2 = wavelet_loss(x + 0.1, x, WaveletLossConfig(levels=1, distance="l2"))
    assert l2["wavelet_high"].item() < 1e-10
    assert l2["wavelet_low"].item() == pytest.approx(0.04, rel=1e-4)  # (2 * 0.1)^2


def test_weights_scale_their_own_term_only():
    x = torch.randn(1, 3, 8, 8)
    x_hat = x + 0.3 * torch.randn(1, 3, 8, 8)
    base = wavelet_loss(x_hat, x)
    weighted = wavelet_loss(x_hat, x, WaveletLossConfig(low_weight=0.0, high_weight=3.0))
    assert weighted["wavelet_low"].item() == 0
    assert weighted["wavelet_high"].item() == pytest.approx(3 * base["wavelet_high"].item(), rel=1e-6)


def test_normalize_makes_the_terms_scale_free():
    x = torch.randn(2, 3, 8, 8)
    x_hat = x + 0.3 * torch.randn(2, 3, 8, 8)
    cfg = WaveletLossConfig(normalize=True)
    a, b = wavelet_loss(x_hat, x, cfg), wavelet_loss(5 * x_hat, 5 * x, cfg)
    for key in a:
        assert b[key].item() == pytest.approx(a[key].item(), rel=1e-4)
    plain = wavelet_loss(5 * x_hat, 5 * x)  # without normalisation l1 terms grow 5x
    assert plain["wavelet_high"].item() == pytest.approx(5 * wavelet_loss(x_hat, x)["wavelet_high"].item(), rel=1e-4)


def test_wavelet_loss_gradients_reach_the_reconstruction():
    x = torch.randn(1, 3, 8, 8)
    x_hat = (x + 0.1 * torch.randn(1, 3, 8, 8)).bfloat16().requires_grad_()
    terms = wavelet_loss(x_hat, x.bfloat16())
    assert terms["wavelet_low"].dtype == torch.float32  # computed in fp32 even from bf16
    sum(terms.values()).backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0


def test_wavelet_loss_config_rejects_bad_values():
    with pytest.raises(ValueError, match="levels"):
        WaveletLossConfig(levels=0)
    with pytest.raises(ValueError, match="'huber'"):
        WaveletLossConfig(distance="huber")
    with pytest.raises(ValueError, match="high_weight"):
        WaveletLossConfig(high_weight=-1.0)
    with pytest.raises(ValueError, match="low_weight"):
        WaveletLossConfig(low_weight=float("nan"))


# --- per-band PSNR ----------------------------------------------------------------


def test_band_psnr_known_answers():
    x = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    expected = 10 * math.log10(4 / 0.1**2)  # the image PSNR of an error of 0.1 on every pixel
    offset = band_psnr(x + 0.1, x, levels=2)
    assert set(offset) == {"low", "high_1", "high_2"}
    torch.testing.assert_close(offset["low"], torch.full((2,), expected), rtol=1e-4, atol=0)
    # untouched bands: no error beyond float32 rounding of x + 0.1 (inf if it were exact)
    assert (offset["high_1"] > 100).all() and (offset["high_2"] > 100).all()
    checker = band_psnr(x + 0.1 * _checkerboard(2, 3, 8, 8), x, levels=2)
    torch.testing.assert_close(checker["high_1"], torch.full((2,), expected), rtol=1e-4, atol=0)
    assert (checker["low"] > 100).all() and (checker["high_2"] > 100).all()
    identical = band_psnr(x, x.clone(), levels=1)
    assert all(torch.isinf(v).all() for v in identical.values())


def test_band_errors_add_up_to_the_pixel_mse():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    x_hat = x + 0.05 * torch.randn(3, 3, 16, 16)
    bands = band_psnr(x_hat, x, levels=3)
    shares = sum(4 / 10 ** (v / 10) for v in bands.values())  # each band's share of the MSE
    torch.testing.assert_close(shares, (x_hat - x).pow(2).flatten(1).mean(1), rtol=1e-4, atol=0)
