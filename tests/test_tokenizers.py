"""ViT (ViTok / CvT embedding) and 1D convolutional tokenizers: contracts, numerics, learning."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from latentforge import from_pretrained, save_pretrained
from latentforge.config import ConfigError, from_dict
from latentforge.nn.conv import Downsample, ResBlock, Upsample, conv_levels
from latentforge.quantize import FSQConfig, GaussianConfig, RVQConfig, VQConfig
from latentforge.registry import lookup
from latentforge.tokenizers.base import LatentSpec
from latentforge.tokenizers.conv1d import Conv1dConfig, Conv1dTokenizer
from latentforge.tokenizers.losses import image_psnr
from latentforge.tokenizers.vit import ConvTokenEmbedding, PatchEmbedding, ViTConfig, ViTTokenizer, patchify, unpatchify


def tiny_vit(conv_embedding: bool = False, **kw) -> ViTTokenizer:
    cfg = dict(image_size=16, patch=4, dim=32, encoder_depth=1, decoder_depth=1, heads=2,
               conv_embedding=conv_embedding, quantizer=VQConfig(codebook_size=32, dim=8))
    return ViTTokenizer(ViTConfig(**{**cfg, **kw}))


def tiny_1d(**kw) -> Conv1dTokenizer:
    cfg = dict(seq_len=16, in_channels=5, channels=(8, 16, 16), quantizer=VQConfig(codebook_size=32, dim=8))
    return Conv1dTokenizer(Conv1dConfig(**{**cfg, **kw}))


def smooth_sequences(b: int = 8, t: int = 32, c: int = 4) -> torch.Tensor:
    """Fixed batch of low-frequency sinusoids [B, T, C], one frequency and phase per (sequence, channel)."""
    g = torch.Generator().manual_seed(0)
    freq = 0.5 + 1.5 * torch.rand(b, 1, c, generator=g)
    phase = 2 * math.pi * torch.rand(b, 1, c, generator=g)
    time = torch.linspace(0, 1, t)[None, :, None]
    return torch.sin(2 * math.pi * freq * time + phase)


def fit(tok, batch: dict, steps: int, lr: float) -> tuple[float, float]:
    """Adam on one fixed batch; returns (first loss, mean of the last 5 losses)."""
    opt = torch.optim.Adam(tok.parameters(), lr)
    losses = []
    for _ in range(steps):
        out = tok.loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses[0], sum(losses[-5:]) / 5


# --------------------------------------------------------------------------------------------
# Image PSNR statistic
# --------------------------------------------------------------------------------------------

def test_image_psnr_known_values():
    x = torch.zeros(2, 3, 4, 4)
    # MSE 0.04 in [-1, 1] is 0.01 in [0, 1] units: 20 dB
    assert torch.allclose(image_psnr(torch.full_like(x, 0.2), x), torch.tensor(20.0))
    # reconstructions are clamped to the image range first: overshooting +1 costs nothing
    # (and a perfect reconstruction gives a finite number: the MSE is floored at 1e-10)
    assert torch.allclose(image_psnr(torch.full_like(x, 3.0), torch.ones_like(x)), torch.tensor(10 * math.log10(4e10)))
    assert not image_psnr(torch.full_like(x, 0.2).requires_grad_(), x).requires_grad


# --------------------------------------------------------------------------------------------
# ViT tokenizer
# --------------------------------------------------------------------------------------------

def test_patchify_layout_and_inverse():
    x = torch.randn(2, 3, 8, 12)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 6, 48)
    # token i*w + j holds exactly the pixels of patch (i, j), flattened (channel, row, column)
    assert torch.equal(tokens[:, 1 * 3 + 2], x[:, :, 4:8, 8:12].flatten(1))
    assert torch.equal(unpatchify(tokens, 4, (2, 3)), x)


@pytest.mark.parametrize("conv_embedding", [False, True])
def test_vit_shapes_spec_and_gradients(conv_embedding):
    tok = tiny_vit(conv_embedding)
    assert isinstance(tok.embed, ConvTokenEmbedding if conv_embedding else PatchEmbedding)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert tok.spec.grid == (4, 4) and tok.spec.kind == "discrete" and tok.spec.vocab_size == 32
    q = tok.quantize(x)
    assert q.z_q.shape == (2, 4, 4, 8)  # channels-last
    codes = tok.encode(x)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.long
    assert tok.decode(codes).shape == x.shape and tok(x).shape == x.shape
    out = tok.loss({"image": x})
    assert {"loss", "l2", "codebook", "commitment", "psnr", "usage", "perplexity"} <= set(out)
    assert torch.allclose(out["loss"], out["l2"] + out["codebook"] + out["commitment"])
    out["loss"].backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"


def test_vit_encode_decode_round_trip_matches_forward():
    tok = tiny_vit(patch=2, image_size=8).eval()
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (3, 4, 4)
    # in eval the straight-through latents equal the looked-up codes, so both paths agree
    assert torch.allclose(tok.decode(codes), tok(x), atol=1e-5)


def test_vit_latent_tokens_depend_on_position():
    """Decoder position table: one code copied everywhere must not decode to one repeated patch."""
    tok = tiny_vit().eval()
    codes = torch.zeros(1, 4, 4, dtype=torch.long)
    patches = patchify(tok.decode(codes), 4)[0]  # [N, 48]
    assert (patches - patches[0]).abs().amax() > 1e-4


@pytest.mark.parametrize("conv_embedding", [False, True])
def test_token_receptive_field(conv_embedding):
    """Changing one pixel changes exactly the tokens whose window covers it: its own patch's for
    the linear embedding; for CvT's embedding also the neighbours whose overlap reaches it."""
    tok = tiny_vit(conv_embedding)
    p = 4
    x = torch.randn(1, 3, 16, 16)
    row, col = 3, 5  # last row of patch row 0, just above patch (1, 1); inside patch column 1
    y = x.clone()
    y[0, :, row, col] += 1.0
    with torch.no_grad():
        changed = ((tok.embed(y) - tok.embed(x)).abs().amax(-1) > 1e-6).view(4, 4)
    o = tok.embed.overlap if conv_embedding else 0
    expected = torch.zeros(4, 4, dtype=torch.bool)
    for i in range(4):
        for j in range(4):
            # token (i, j) sees rows [p*i - o, p*i + p + o) and the same columns
            expected[i, j] = p * i - o <= row < p * i + p + o and p * j - o <= col < p * j + p + o
    assert torch.equal(changed, expected)
    assert bool(changed[1, 1]) == conv_embedding, "only the CvT embedding lets patch (1, 1) see row 3"
    if conv_embedding:  # and its window is bounded: a pixel o + 1 rows above patch (1, 1) is unseen
        z = x.clone()
        z[0, :, p - o - 1, col] += 1.0
        with torch.no_grad():
            assert torch.allclose(tok.embed(z)[0, 1 * 4 + 1], tok.embed(x)[0, 1 * 4 + 1])


def shape_images(n: int = 8) -> torch.Tensor:
    from latentforge.data.shapes import ShapesConfig, render_batch
    from latentforge.modalities.image import ImageModality

    return ImageModality(16).to_model(render_batch(ShapesConfig(size=16), "train", range(n)))


@pytest.mark.parametrize("conv_embedding", [False, True])
def test_vit_tokenizer_learns(conv_embedding):
    """100 Adam steps on 8 fixed 16x16 shape images: the loss falls below 15% of its first value,
    and the reconstruction error below 40% of the mean image's. The second bound is the one
    that needs the latents: a decoder that ignored them could at best output the mean image,
    while the first bound is met by merely removing the initial offset."""
    x = shape_images()
    tok = tiny_vit(conv_embedding, patch=2, quantizer=VQConfig(codebook_size=64, dim=16))
    first, last = fit(tok, {"image": x}, steps=100, lr=5e-3)
    assert last < 0.15 * first, (first, last)
    tok.eval()
    with torch.no_grad():
        mse, mean_image_mse = F.mse_loss(tok(x), x), (x - x.mean(0)).pow(2).mean()
    assert mse < 0.4 * mean_image_mse, (float(mse), float(mean_image_mse))


def test_vit_errors():
    with pytest.raises(ValueError, match="image_size 30 is not divisible by patch 4"):
        ViTConfig(image_size=30, patch=4)
    with pytest.raises(ValueError, match="dim 30 is not divisible by heads 4"):
        ViTConfig(dim=30, heads=4)
    with pytest.raises(ConfigError, match="image_size 30 is not divisible"):
        from_dict(ViTConfig, {"image_size": 30, "patch": 4})
    tok = tiny_vit()
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 16, 16\], got \[2, 3, 12, 12\]"):
        tok.encode(torch.rand(2, 3, 12, 12))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 16, 16\], got \[2, 16, 16, 3\]"):
        tok.encode(torch.rand(2, 16, 16, 3))  # channels-last images
    with pytest.raises(ValueError, match=r"int64 codes \[B, 4, 4\]"):
        tok.decode(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"int64 codes \[B, 4, 4\], got torch.int64 \[2, 16\]"):
        tok.decode(torch.zeros(2, 16, dtype=torch.long))  # flattened tokens


@pytest.mark.parametrize("conv_embedding", [False, True])
def test_vit_save_load_round_trip(tmp_path, conv_embedding):
    tok = tiny_vit(conv_embedding)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tok.loss({"image": x})  # k-means initialises the codebook: saved state is not the init
    tok.eval()
    save_pretrained(tok, tmp_path / "vit")
    meta = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert meta["name"] == "vit" and meta["config"]["conv_embedding"] is conv_embedding
    loaded = from_pretrained(tmp_path / "vit")
    assert isinstance(loaded, ViTTokenizer) and loaded.spec == tok.spec
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded(x), tok(x))


# --------------------------------------------------------------------------------------------
# 1D convolutional tokenizer
# --------------------------------------------------------------------------------------------

def test_conv_blocks_work_in_1d_2d_and_3d():
    assert ResBlock(4, 8, dims=3)(torch.randn(1, 4, 2, 4, 4)).shape == (1, 8, 2, 4, 4)
    assert ResBlock(4, 8)(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)  # 2D by default
    assert Downsample(4, dims=1)(torch.randn(1, 4, 10)).shape == (1, 4, 5)
    assert Upsample(4, dims=1)(torch.randn(1, 4, 5)).shape == (1, 4, 10)
    levels = conv_levels((8, 16), 2, Downsample, dims=1)
    assert levels(torch.randn(1, 8, 12)).shape == (1, 16, 6)
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3"):
        ResBlock(4, 4, dims=4)


def test_conv1d_shapes_spec_and_gradients():
    tok = tiny_1d()
    x = torch.randn(3, 16, 5)  # channels-last [B, T, C]
    assert tok.spec.grid == (4,) and tok.spec.kind == "discrete" and tok.spec.vocab_size == 32
    assert tok.quantize(x).z_q.shape == (3, 4, 8)
    codes = tok.encode(x)
    assert codes.shape == (3, 4) and codes.dtype == torch.long
    assert tok.decode(codes).shape == x.shape and tok(x).shape == x.shape
    out = tok.loss({"sequence": x})
    assert {"loss", "l2", "codebook", "commitment", "mse", "mae", "usage", "perplexity"} <= set(out)
    assert "psnr" not in out
    out["loss"].backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"


def test_conv1d_stats_measure_the_reconstruction():
    tok = tiny_1d(recon_loss="l1+l2")
    x = torch.randn(2, 16, 5)
    tok.loss({"sequence": x})  # k-means init in training mode, then compare in eval
    tok.eval()
    out = tok.loss({"sequence": x})
    x_hat = tok(x)
    assert torch.allclose(out["mse"], F.mse_loss(x_hat, x)) and torch.allclose(out["l2"], out["mse"])
    assert torch.allclose(out["mae"], F.l1_loss(x_hat, x)) and torch.allclose(out["l1"], out["mae"])
    assert torch.allclose(tok.decode(tok.encode(x)), x_hat, atol=1e-5)


def test_conv1d_velocity_term_is_the_loss_on_frame_differences():
    tok = tiny_1d(recon_loss="l2", velocity_weight=0.5).eval()
    x = torch.randn(2, 16, 5)
    out = tok.loss({"sequence": x})
    x_hat = tok(x)
    want = 0.5 * F.mse_loss(x_hat[:, 1:] - x_hat[:, :-1], x[:, 1:] - x[:, :-1])
    assert torch.allclose(out["velocity"], want, atol=1e-6)
    assert torch.allclose(out["loss"], sum(v for k, v in out.items() if k in ("l2", "velocity", "commitment",
                                                                             "codebook")), atol=1e-6)
    with pytest.raises(ValueError, match="velocity_weight must be >= 0"):
        tiny_1d(velocity_weight=-1.0)


def test_conv1d_tokenizer_learns():
    """100 Adam steps on 8 fixed smooth sequences: the loss falls below 15% of its first value,
    and the reconstruction error below 15% of the mean sequence's (see the ViT test)."""
    x = smooth_sequences()
    tok = Conv1dTokenizer(Conv1dConfig(seq_len=32, in_channels=4, channels=(16, 32),
                                       quantizer=VQConfig(codebook_size=64, dim=8)))
    first, last = fit(tok, {"sequence": x}, steps=100, lr=2e-3)
    assert last < 0.15 * first, (first, last)
    tok.eval()
    with torch.no_grad():
        mse, mean_sequence_mse = F.mse_loss(tok(x), x), (x - x.mean(0)).pow(2).mean()
    assert mse < 0.15 * mean_sequence_mse, (float(mse), float(mean_sequence_mse))


def test_conv1d_errors():
    with pytest.raises(ValueError, match=r"seq_len 30 is not a multiple of the downsampling factor 4"):
        Conv1dConfig(seq_len=30, channels=(8, 8, 8))
    with pytest.raises(ValueError, match="at least one level"):
        Conv1dConfig(channels=())
    tok = tiny_1d()
    with pytest.raises(ValueError, match=r"expected sequences \[B, 16, 5\] \(channels-last.*looks channels-first"):
        tok.encode(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"expected sequences \[B, 16, 5\].*got \[2, 8, 5\]$"):
        tok.encode(torch.randn(2, 8, 5))
    with pytest.raises(ValueError, match=r"got \[16, 5\]"):
        tok.encode(torch.randn(16, 5))  # no batch axis
    with pytest.raises(ValueError, match=r"int64 codes \[B, 4\]"):
        tok.decode(torch.zeros(2, 4, 8))  # latent vectors instead of codes
    with pytest.raises(KeyError, match="sequence"):
        tok.loss({"image": torch.randn(2, 16, 5)})


def test_conv1d_save_load_round_trip(tmp_path):
    tok = tiny_1d()
    x = torch.randn(2, 16, 5)
    tok.loss({"sequence": x})
    tok.eval()
    save_pretrained(tok, tmp_path / "seq")
    meta = json.loads((tmp_path / "seq" / "config.json").read_text())
    assert meta["name"] == "conv1d" and meta["config"]["channels"] == [8, 16, 16]
    loaded = from_pretrained(tmp_path / "seq")
    assert isinstance(loaded, Conv1dTokenizer) and loaded.config == tok.config
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded(x), tok(x))


BOTTLENECKS = {
    "vq": (VQConfig(codebook_size=32, dim=8), dict(kind="discrete", vocab_size=32)),
    "fsq": (FSQConfig(dim=8, levels=(4, 4)), dict(kind="discrete", vocab_size=16)),
    "rvq": (RVQConfig(codebook_size=16, dim=8, depth=2), dict(kind="discrete", vocab_size=16, depth=2)),
    "gaussian": (GaussianConfig(dim=8, latent_channels=4), dict(kind="continuous", channels=4)),
}


@pytest.mark.parametrize("bottleneck", sorted(BOTTLENECKS))
@pytest.mark.parametrize("family", ["vit", "conv1d"])
def test_any_bottleneck_by_name(family, bottleneck):
    """Both tokenizers build their bottleneck from `quantizer.name` and describe it in their spec:
    codes [B, *grid] (vq, fsq), [B, *grid, depth] (rvq) or latent vectors [B, *grid, C] (gaussian)."""
    qcfg, want = BOTTLENECKS[bottleneck]
    if family == "vit":
        tok, x, grid = tiny_vit(quantizer=qcfg), torch.rand(2, 3, 16, 16) * 2 - 1, (4, 4)
    else:
        tok, x, grid = tiny_1d(quantizer=qcfg), torch.randn(2, 16, 5), (4,)
    assert tok.quantizer.registry_name == bottleneck
    assert tok.spec == LatentSpec(grid=grid, **want)
    tok.eval()
    z = tok.encode(x)
    tail = {"discrete": (), "continuous": (4,)}[want["kind"]] + ((2,) if bottleneck == "rvq" else ())
    assert z.shape == (2, *grid, *tail)
    assert z.dtype == (torch.long if want["kind"] == "discrete" else torch.float32)
    assert tok.decode(z).shape == x.shape


def test_registered_by_name():
    assert lookup("tokenizer", "vit") == (ViTConfig, ViTTokenizer)
    assert lookup("tokenizer", "conv1d") == (Conv1dConfig, Conv1dTokenizer)
    cfg = from_dict(Conv1dConfig, {"seq_len": 32, "channels": [8, 8], "quantizer": {"codebook_size": 16}})
    assert cfg.channels == (8, 8) and isinstance(cfg.quantizer, VQConfig) and cfg.quantizer.codebook_size == 16
