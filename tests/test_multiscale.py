"""Multi-scale residual quantization (VAR / VAT): the scales' codes decode back to z_q, each added
scale brings the reconstruction closer, 1D sets and 2D grids, the variational form, bad grids named."""

import pytest
import torch

from latentforge.quantize.multiscale import MultiScaleConfig, MultiScaleQuantizer, scales_for


def smooth(batch, grid, dim, seed=0):
    """Latents that vary smoothly over the grid, so coarse scales already capture much of them."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, dim, *(2,) * len(grid), generator=g)
    mode = {1: "linear", 2: "bilinear"}[len(grid)]
    z = torch.nn.functional.interpolate(coarse, size=grid, mode=mode, align_corners=True)
    return (z + 0.1 * torch.randn(z.shape, generator=g)).movedim(1, -1)


@pytest.mark.parametrize("rank", [1, 2])
def test_every_scale_brings_the_reconstruction_closer(rank):
    torch.manual_seed(0)
    q = MultiScaleQuantizer(MultiScaleConfig(codebook_size=64, dim=8, scales=(1, 2, 4, 8), rank=rank,
                                             kmeans_iters=10, codebook_update="ema")).train()
    z = smooth(16, (8,) * rank, 8)
    for _ in range(5):                               # k-means init, then a few EMA updates
        q(z)
    q.eval()
    with torch.no_grad():
        out = q(z)
        assert out.codes.shape == (16, sum(s ** rank for s in (1, 2, 4, 8)))
        assert torch.allclose(q.lookup(out.codes), out.z_q, atol=1e-5)   # all scales decode to z_q
        errors = [float((q.lookup(out.codes[:, :b]) - z).square().mean()) for b in q.scale_bounds()]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]


def test_variational_form_and_errors():
    q = MultiScaleQuantizer(MultiScaleConfig(codebook_size=16, dim=4, scales=(1, 3), variational=True,
                                             kl_weight=0.1, kmeans_iters=2)).train()
    z = torch.randn(5, 3, 4)
    out = q(z)
    assert "kl" in out.losses and out.losses["kl"] > 0
    q.eval()
    with torch.no_grad():
        assert torch.equal(q(z).codes, q(z).codes)                      # eval reads the mean: deterministic
    with pytest.raises(ValueError, match="grid of 1 side"):
        q(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="first k scales"):
        q.lookup(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="strictly ascending"):
        MultiScaleConfig(scales=(1, 4, 2))
    assert q.code_grid((3,)) == (4,) and scales_for(16) == (1, 2, 4, 8, 16) and scales_for(10) == (1, 2, 4, 8, 10)


def test_a_conv_image_tokenizer_takes_multiscale_codes():
    """VAR's image tokenizer is the conv tokenizer with a rank-2 multi-scale quantizer: codes of every
    scale in one row (1 + 4 tokens on a 2 x 2 grid), scales in the LatentSpec, decoding to images."""
    import dataclasses

    from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

    tiny = ConvConfig.tiny()
    tok = ConvTokenizer(dataclasses.replace(tiny, quantizer=MultiScaleConfig(
        codebook_size=16, dim=tiny.quantizer.dim, scales=(1, 2), rank=2, kmeans_iters=2)))
    x = torch.rand(2, 3, tiny.image_size, tiny.image_size) * 2 - 1
    assert torch.isfinite(tok.loss({"image": x})["loss"])
    assert tok.spec.grid == (5,) and tok.spec.scales == (1, 4)
    z = tok.eval().encode(x)
    assert z.shape == (2, 5) and tok.decode(z).shape == x.shape
