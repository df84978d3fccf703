"""Causal 3D video tokenizer: time resampling, causality, the frame rule, inflation from an
image tokenizer, contracts, and learning moving squares in both designs."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from latentforge import from_pretrained, save_pretrained
from latentforge.config import ConfigError, from_dict
from latentforge.nn.causal_conv import (
    CausalTemporalConv,
    FactorisedResBlock,
    ShuffleUpsample,
    TimeDownsample,
    TimeUpsample,
    UnshuffleDownsample,
    per_frame,
)
from latentforge.nn.conv import ResBlock
from latentforge.quantize import FSQConfig, GaussianConfig, LFQConfig, VQConfig
from latentforge.registry import lookup
from latentforge.tokenizers.causal3d import Causal3dConfig, Causal3dTokenizer, param_counts
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer


def small(**kw) -> Causal3dTokenizer:
    """8 x 8 frames, f_s = 4 (2x2 latents), f_t = 4 unless changed."""
    cfg = dict(frames=9, image_size=8, patch=1, channels=(8, 8, 8), time_down=(True, True),
               quantizer=FSQConfig(dim=4, levels=(5, 5)))
    return Causal3dTokenizer(Causal3dConfig(**{**cfg, **kw}))


def clips(b: int = 2, t: int = 9, s: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def randomize(model: torch.nn.Module, scale: float = 0.3) -> torch.nn.Module:
    """Perturb every parameter, so that no temporal conv is still the identity (and norms are
    not still 1/0): a test on such a model cannot pass by the init's symmetry."""
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [0, 1, 2, 4])
def test_time_down_and_up_lengths(m):
    x = torch.randn(2, 4, 1 + 2 * m, 3, 3)
    down, up = TimeDownsample(4), TimeUpsample(4)
    assert down(x).shape == (2, 4, 1 + m, 3, 3)
    assert up(down(x)).shape == x.shape
    # at init, down picks frames 0, 2, 4, ... and up repeats: [z0, z1, z1, z2, z2, ...]
    assert torch.equal(down(x), x[:, :, ::2])
    z = x[:, :, : 1 + m]
    want = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)
    assert torch.equal(up(z), want)
    with pytest.raises(ValueError, match="TimeDownsample takes 1 \\+ 2m frames .*got 4"):
        down(torch.randn(1, 4, 4, 3, 3))


@pytest.mark.parametrize("pad", ["replicate", "zeros"])
def test_temporal_conv_is_causal_and_pads_the_front(pad):
    conv = randomize(CausalTemporalConv(3, 5, kernel=3, pad=pad))
    x = torch.randn(1, 3, 6, 2, 2)
    y = conv(x)
    w, b = conv.conv.weight, conv.conv.bias  # [5, 3, 3]
    # known answer at every frame: out[t] = sum_k W_k x[t - 2 + k], frames before 0 padded
    first = x[:, :, :1] if pad == "replicate" else torch.zeros_like(x[:, :, :1])
    xp = torch.cat([first, first, x], dim=2)
    want = sum(torch.einsum("oc,bcthw->bothw", w[:, :, k], xp[:, :, k:k + 6]) for k in range(3))
    assert torch.allclose(y, want + b.view(1, 5, 1, 1, 1), atol=1e-5)
    z = x.clone()
    z[:, :, 3] += 1.0
    changed = (conv(z) - y).abs().amax((0, 1, 3, 4)) > 1e-6
    assert changed.tolist() == [False, False, False, True, True, True]


def test_factorised_resblock_is_a_resblock_per_frame_at_init():
    image = randomize(ResBlock(4, 8))
    video = FactorisedResBlock(4, 8)
    missing, unexpected = video.load_state_dict(image.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("tconv1.", "tconv2.")) for k in missing)
    x = torch.randn(2, 4, 5, 6, 6)
    assert torch.allclose(video(x), per_frame(image, x), atol=1e-5)


def test_unshuffle_resamplers_start_near_pooling_and_keep_shapes():
    x = torch.randn(2, 8, 6, 6)
    down, up = UnshuffleDownsample(8), ShuffleUpsample(8)
    for m in (down, up):
        torch.nn.init.zeros_(m.conv.weight)
        torch.nn.init.zeros_(m.conv.bias)
    # with the conv at zero only the parameter-free shortcuts remain: 2x2 mean and nearest copy
    assert torch.allclose(down(x), F.avg_pool2d(x, 2), atol=1e-6)
    assert torch.equal(up(x), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    with pytest.raises(ValueError, match="divisible by 4"):
        UnshuffleDownsample(6)


# --------------------------------------------------------------------------------------------
# Causality
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("design", ["joint", "factorised"])
def test_encoder_and_decoder_are_causal(design):
    """Changing input frame t leaves every latent frame j with j*f_t < t as it was (their
    frames all come before t) and changes latent frame ceil(t/f_t); changing latent frame j
    leaves decoded frames before (j-1)*f_t + 1, the first that j covers, as they were."""
    tok = randomize(small(design=design)).eval()
    f, T = 4, 9
    x = clips(1, T)
    with torch.no_grad():
        z = tok.encoder(x)  # [1, d, 3, 2, 2]
        for t in range(T):
            y = x.clone()
            y[:, :, t] = -y[:, :, t]
            changed = ((tok.encoder(y) - z).abs().amax((0, 1, 3, 4)) > 1e-6).tolist()
            first = (t + f - 1) // f  # the first latent frame whose window holds frame t
            assert changed == [j >= first for j in range(3)], (t, changed)
        x_hat = tok.decoder(z)
        for j in range(3):
            w = z.clone()
            w[:, :, j] += 1.0
            changed = ((tok.decoder(w) - x_hat).abs().amax((0, 1, 3, 4)) > 1e-6).tolist()
            start = 0 if j == 0 else (j - 1) * f + 1
            assert changed == [i >= start for i in range(T)], (j, changed)


def test_first_frame_is_encoded_alone_and_images_are_one_frame_clips():
    tok = randomize(small()).eval()
    x = clips(2, 9)
    with torch.no_grad():
        assert torch.allclose(tok.encoder(x)[:, :, :1], tok.encoder(x[:, :, :1]), atol=1e-5)
        assert torch.allclose(tok.encoder(x)[:, :, :2], tok.encoder(x[:, :, :5]), atol=1e-5)  # prefixes too


# --------------------------------------------------------------------------------------------
# The frame rule and bad input
# --------------------------------------------------------------------------------------------

def test_frame_rule_and_errors():
    cfg = Causal3dConfig(frames=17, image_size=32, patch=2, channels=(8, 8, 8), time_down=(True, True))
    assert cfg.time_factor == 4 and cfg.spatial_factor == 8 and cfg.latent_grid == (5, 4, 4)
    assert Causal3dConfig(frames=9, time_down=(True, False)).latent_grid == (5, 8, 8)
    with pytest.raises(ValueError, match=r"frames: got 16 frames; this tokenizer takes 1 \+ 4k frames: 13 or 17"):
        dataclasses.replace(cfg, frames=16)
    with pytest.raises(ValueError, match=r"got 0 frames; this tokenizer takes 1 \+ 4k frames: 1$"):
        dataclasses.replace(cfg, frames=0)
    with pytest.raises(ValueError, match=r"image_size 30 is not a multiple .* factor 8 \(patch 2 x 2\^2\): 24 or 32"):
        dataclasses.replace(cfg, image_size=30)
    with pytest.raises(ValueError, match=r"time_down needs one flag per level transition: 2"):
        dataclasses.replace(cfg, time_down=(True,))
    with pytest.raises(ValueError, match="'unshuffle' needs channels divisible by 4"):
        dataclasses.replace(cfg, channels=(6, 8, 8), spatial_down="unshuffle")
    with pytest.raises(ConfigError, match="got 16 frames"):
        from_dict(Causal3dConfig, {"frames": 16})
    with pytest.raises(ConfigError, match="design: 'both' is not one of"):
        from_dict(Causal3dConfig, {"design": "both"})

    tok = small().eval()  # frames 9, f_t 4, 8 x 8
    with torch.no_grad():
        for T in (1, 5, 13):  # any 1 + 4k frames go through; the spec is for `frames`
            assert tok(clips(1, T)).shape == (1, 3, T, 8, 8)
            assert tok.encode(clips(1, T)).shape == (1, 1 + (T - 1) // 4, 2, 2)
        assert tok.decode(tok.encode(clips(1, 13))).shape == (1, 3, 13, 8, 8)
    with pytest.raises(ValueError, match=r"got 8 frames; this tokenizer takes 1 \+ 4k frames: 5 or 9"):
        tok.encode(clips(1, 8))
    with pytest.raises(ValueError, match=r"looks channels-last .*permute\(0, 4, 1, 2, 3\)"):
        tok.encode(torch.rand(1, 9, 8, 8, 3))
    with pytest.raises(ValueError, match=r"looks like \[B, T, C, H, W\]"):
        tok.encode(torch.rand(1, 9, 3, 8, 8))
    with pytest.raises(ValueError, match=r"these are images .*unsqueeze\(2\)"):
        tok.encode(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected clips \[B, 3, T, 8, 8\].*got \[1, 3, 9, 16, 16\]$"):
        tok.encode(torch.rand(1, 3, 9, 16, 16))
    with pytest.raises(ValueError, match=r"int64 codes \[B, 3, 2, 2\]"):
        tok.decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(KeyError, match="video"):
        tok.loss({"image": clips(1, 9)})


# --------------------------------------------------------------------------------------------
# Contracts
# --------------------------------------------------------------------------------------------

BOTTLENECKS = {
    "vq": VQConfig(codebook_size=16, dim=4, kmeans_iters=2),
    "fsq": FSQConfig(dim=4, levels=(5, 3)),
    "lfq": LFQConfig(dim=4, bits=4),
    "gaussian": GaussianConfig(dim=4, latent_channels=2),
}


@pytest.mark.parametrize("design,spatial,bottleneck", [
    ("joint", "strided", "vq"), ("joint", "unshuffle", "fsq"), ("factorised", "strided", "gaussian"),
    ("factorised", "unshuffle", "lfq"),
])
def test_contract_gradients_spec_and_save_load(tmp_path, design, spatial, bottleneck):
    tok = small(design=design, spatial_down=spatial, quantizer=BOTTLENECKS[bottleneck]).train()
    assert tok.quantizer.registry_name == bottleneck and tok.spec.grid == (3, 2, 2)
    x = clips(2, 9)
    q = tok.quantize(x)
    assert q.z_q.shape == (2, 3, 2, 2, 4)  # channels-last [B, t, h, w, d]
    out = tok.loss({"video": x})
    assert {"loss", "psnr"} <= set(out) and torch.isfinite(out["loss"])
    out["loss"].backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a gradient: {missing}"
    tok.eval()
    with torch.no_grad():
        z = tok.encode(x)
        kind = tok.spec.kind
        assert z.shape == ((2, 3, 2, 2) if kind == "discrete" else (2, 3, 2, 2, 2))
        recon = tok.decode(z)
        assert recon.shape == x.shape
        again = from_pretrained(save_pretrained(tok, tmp_path / "tok"))
        assert isinstance(again, Causal3dTokenizer) and again.config == tok.config
        assert torch.equal(again.encode(x), z) and torch.equal(again.decode(z), recon)


def test_registered_and_parsed_by_name():
    assert lookup("tokenizer", "causal3d") == (Causal3dConfig, Causal3dTokenizer)
    cfg = from_dict(Causal3dConfig, {"channels": [8, 16], "time_down": [True], "frames": 9, "image_size": 16,
                                     "quantizer": {"name": "vq", "codebook_size": 16}})
    assert cfg.time_down == (True,) and cfg.latent_grid == (5, 4, 4) and isinstance(cfg.quantizer, VQConfig)
    assert Causal3dConfig.layout == "video"


def test_param_counts_split_the_model():
    joint = Causal3dConfig(channels=(16, 32, 32), image_size=32, frames=9)
    counts = param_counts(joint)
    tok = Causal3dTokenizer(joint)
    assert counts == tok.param_counts()
    assert counts["total"] == sum(p.numel() for p in tok.parameters())
    assert counts["total"] == counts["encoder"] + counts["decoder"] + counts["quantizer"]
    # the factorised design's temporal convs all sit in its motion (de)compressors
    fact = Causal3dTokenizer(dataclasses.replace(joint, design="factorised"))
    temporal = [n for n, m in fact.named_modules() if isinstance(m, CausalTemporalConv)]
    assert temporal and all(n.startswith(("encoder.motion.", "decoder.motion.")) for n in temporal)


# --------------------------------------------------------------------------------------------
# Inflation from an image tokenizer
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bottleneck", ["vq", "fsq", "gaussian"])
def test_inflation_reproduces_the_image_tokenizer(bottleneck):
    """At step 0 the inflated video tokenizer reconstructs a one-frame clip as the image
    tokenizer reconstructs the image, and a still clip, frame by frame, the same; the latents
    are the image's at every latent frame."""
    qcfg = BOTTLENECKS[bottleneck]
    image = ConvTokenizer(ConvConfig(image_size=16, patch=2, channels=(8, 16, 16), blocks_per_level=2, quantizer=qcfg))
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    randomize(image, 0.1)
    image.loss({"image": x})  # a VQ codebook is k-means-initialised on the first training batch
    image.eval()
    video = Causal3dTokenizer.inflate_from(image, frames=9).eval()
    assert video.config.time_factor == 4 and video.config.channels == (8, 16, 16)
    with torch.no_grad():
        want, codes = image(x), image.encode(x)
        assert torch.allclose(video(x[:, :, None])[:, :, 0], want, atol=1e-5)
        still = x[:, :, None].expand(-1, -1, 9, -1, -1).contiguous()
        recon = video(still)
        for t in range(9):
            assert torch.allclose(recon[:, :, t], want, atol=1e-5), t
        z = video.encode(still)  # [B, 3, 2, 2(, C)]
        for j in range(3):
            assert torch.allclose(z[:, j].float(), codes.float(), atol=1e-5)
    # the inflated model trains: its temporal convs get gradients
    video.train()
    video.loss({"video": still})["loss"].backward()
    assert all(m.conv.weight.grad is not None for m in video.modules() if isinstance(m, CausalTemporalConv))


def test_inflation_refuses_mismatched_configs():
    image = ConvTokenizer(ConvConfig(image_size=16, patch=2, channels=(8, 16), quantizer=FSQConfig.tiny()))
    good = Causal3dConfig.from_image(image.config, frames=5)
    assert good.time_down == (True,) and good.quantizer == image.config.quantizer
    bad = dataclasses.replace(good, design="factorised", channels=(8, 8), spatial_down="unshuffle")
    with pytest.raises(ValueError, match=r"cannot inflate.*design 'factorised'.*spatial_down 'unshuffle'.*"
                                         r"channels \(8, 8\) != the image tokenizer's \(8, 16\)"):
        Causal3dTokenizer.inflate_from(image, bad)
    with pytest.raises(ValueError, match="quantizer"):
        Causal3dTokenizer.inflate_from(image, dataclasses.replace(good, quantizer=FSQConfig(dim=4, levels=(3, 3))))
    with pytest.raises(TypeError, match="needs a ConvTokenizer"):
        Causal3dTokenizer.inflate_from(small())


# --------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------

def moving_squares(n: int = 16, T: int = 9, S: int = 16, side: int = 5) -> torch.Tensor:
    """n fixed clips [n, 3, T, S, S] in [-1, 1]: a coloured square on black moving one pixel per
    frame diagonally, each clip its own colour, start and direction."""
    g = torch.Generator().manual_seed(0)
    x = -torch.ones(n, 3, T, S, S)
    span = S - side - (T - 1)  # starts that keep the square inside for all T frames
    for i in range(n):
        colour = torch.rand(3, generator=g) * 1.6 - 0.6
        v = [int(d) * 2 - 1 for d in torch.randint(0, 2, (2,), generator=g)]
        p0 = [int(torch.randint(0, span + 1, (1,), generator=g)) + (T - 1 if d < 0 else 0) for d in v]
        for t in range(T):
            r, c = p0[0] + v[0] * t, p0[1] + v[1] * t
            x[i, :, t, r:r + side, c:c + side] = colour[:, None, None]
    return x


@pytest.mark.parametrize("design", ["joint", "factorised"])
def test_learns_moving_squares(design, seed=0):
    """350 Adam steps on 8 fixed 5x16x16 clips (x4 space, x2 time: 3x4x4 FSQ codes of 1000):
    the reconstruction MSE falls below 0.025 (PSNR above 22 dB; about 0.011-0.013 is typical).
    A decoder that ignored the latents gets the mean clip's 0.124 at best, and one that kept
    each clip's content but not its motion, each clip's time-mean, 0.079."""
    torch.manual_seed(seed)
    x = moving_squares(8, 5)
    tok = Causal3dTokenizer(Causal3dConfig(frames=5, image_size=16, patch=2, channels=(16, 32), time_down=(True,),
                                           design=design, quantizer=FSQConfig(dim=8, levels=(8, 5, 5, 5))))
    opt = torch.optim.Adam(tok.parameters(), 3e-3)
    for _ in range(350):
        loss = tok.loss({"video": x})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        mse = F.mse_loss(tok(x), x)
    assert mse < 0.025, float(mse)


def test_p22_masking_blanks_whole_frames_and_masks_latent_vectors_in_training_only():
    """P22: the encoder sees blanked frames (never the first), the decoder masked latent vectors (a
    learned vector, at about the configured share); the target stays the full clip; eval is untouched."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(Causal3dConfig.tiny(), frames=9, frame_mask_p=0.5, token_mask_p=0.4)
    tok = Causal3dTokenizer(cfg)
    with torch.no_grad():
        tok.mask_latent.fill_(7.0)   # easy to recognise
    seen = {}
    tok.encoder.register_forward_hook(lambda m, args, out: seen.__setitem__("x", args[0]))
    tok.decoder.register_forward_hook(lambda m, args, out: seen.__setitem__("z", args[0]))
    x = torch.rand(64, 3, 9, 8, 8) * 2 - 1
    tok.train().loss({"video": x})
    blank = (seen["x"] == 0).flatten(3).all(-1).all(1)          # [B, T] frames the encoder saw as 0
    assert not blank[:, 0].any()
    assert 0.4 < float(blank[:, 1:].float().mean()) < 0.6
    assert torch.equal(seen["x"].transpose(1, 2)[~blank], x.transpose(1, 2)[~blank])  # shown frames intact
    masked = (seen["z"] == 7.0).all(1)                            # [B, t, h, w] latent vectors replaced
    assert 0.3 < float(masked.float().mean()) < 0.5
    tok.eval().loss({"video": x})
    assert torch.equal(seen["x"], x) and not (seen["z"] == 7.0).all(1).any()
    with pytest.raises(ValueError, match="frame_mask_p"):
        dataclasses.replace(cfg, frame_mask_p=1.0)
