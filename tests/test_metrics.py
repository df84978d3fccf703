import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from latentforge.eval.diversity import diversity
from latentforge.modalities.image import ImageModality
from latentforge.modalities.image_metrics import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_scales, psnr, ssim, to_unit


def images(seed, n=3, size=32):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)
    return base, noisy


def test_psnr_and_ssim_match_scikit_image():
    a, b = images(0)
    x, y = to_unit(a), to_unit(b)
    ours_psnr, ours_ssim = psnr(x, y), ssim(x, y)
    for i in range(len(a)):
        ref_p = peak_signal_noise_ratio(a[i], b[i], data_range=255)
        ref_s = structural_similarity(a[i].astype(np.float64) / 255, b[i].astype(np.float64) / 255,
                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=True,
                                      data_range=1.0, channel_axis=-1)
        assert float(ours_psnr[i]) == pytest.approx(ref_p, rel=1e-9)
        assert float(ours_ssim[i]) == pytest.approx(ref_s, abs=1e-9)


def test_known_answers():
    x = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    assert torch.isinf(psnr(x, x)).all()
    assert float(psnr(x, x + 0.1)) == pytest.approx(20.0)
    assert float(ssim(x, x)) == pytest.approx(1.0)
    # float input in [-1, 1] and uint8 input agree
    u8 = np.full((1, 4, 4, 3), 255, np.uint8)
    assert torch.allclose(to_unit(u8), to_unit(torch.ones(1, 3, 4, 4)))


def test_diversity_known_answers():
    black = np.zeros((4, 2, 2, 3), np.uint8)
    imgs = black.copy()
    imgs[1] = 255                    # group 0: black and white -> distance 1
    imgs[3] = imgs[2]                # group 1: two identical -> distance 0, not unique
    out = diversity(ImageModality(2).flat(imgs), np.array([0, 0, 1, 1]))
    assert out["diversity"] == pytest.approx(0.5)
    assert out["unique_frac"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least two samples"):
        diversity(ImageModality(2).flat(imgs[:2]), np.array([0, 1]))


def test_ms_ssim_matches_pytorch_msssim():
    import pytorch_msssim
    a, b = images(1, size=192)  # the reference needs > 160 pixels for its five scales
    x, y = to_unit(a), to_unit(b)
    ours = ms_ssim(x, y)
    ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
    # the reference builds its Gaussian window in float32: agreement to ~1e-7, not 1e-15
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # fewer scales, given explicitly, agree too
    w = (0.3, 0.3, 0.4)
    torch.testing.assert_close(ms_ssim(x, y, w), pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False,
                                                                      weights=list(w)), rtol=1e-5, atol=1e-6)


def test_ms_ssim_known_answers_and_scales():
    a, b = images(2, size=32)
    x, y = to_unit(a), to_unit(b)
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(len(x), dtype=torch.float64))
    assert [ms_ssim_scales(s) for s in (16, 21, 32, 64, 176)] == [1, 2, 2, 3, 5]
    # two scales fit 32 pixels: the two standard weights, renormalised
    w = MS_SSIM_WEIGHTS[:2]
    torch.testing.assert_close(ms_ssim(x, y), ms_ssim(x, y, tuple(v / sum(w) for v in w)))
    assert (ms_ssim(x, y) < 1).all() and (ms_ssim(x, y) > 0).all()
    with pytest.raises(ValueError, match=r"at least 21 pixels"):
        ms_ssim(x[..., :16, :16], y[..., :16, :16])


def test_degradations_known_answers():
    from latentforge.eval.degrade import gaussian_blur, gaussian_noise

    flat = np.full((2, 16, 16, 3), 77, np.uint8)
    assert np.array_equal(gaussian_blur(flat, 1.5), flat)  # a constant image has nothing to blur
    a, _ = images(3, n=2, size=16)
    assert gaussian_blur(a, 0) is a and gaussian_noise(a, 0) is a
    blurred = gaussian_blur(a, 2.0)
    assert blurred.std() < 0.5 * a.std()  # white noise loses most of its variance
    assert abs(blurred.astype(float).mean() - a.astype(float).mean()) < 3
    assert np.array_equal(gaussian_noise(a, 8, seed=1), gaussian_noise(a, 8, seed=1))
    spread = (gaussian_noise(flat, 8).astype(float) - 77).std()
    assert 7 < spread < 9
