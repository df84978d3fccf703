"""The implicit (DDMI, P8) tokenizer: continuous-resolution decoding, the adaptive positional
embedding as a bilinear sample of the basis planes, coarse-to-fine injection, scale injection,
the multi-scale training target, the Fourier baseline, and learning."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import build_generator, few_steps, randomize

from latentforge.quantize.gaussian import GaussianConfig
from latentforge.tokenizers.base import LatentSpec
from latentforge.tokenizers.implicit import ImplicitConfig, ImplicitTokenizer, pixel_grid, sample_planes


def small(**kw) -> ImplicitTokenizer:
    """32 px images, an 8 x 8 x 4 latent, planes at 8, 16 and 32, perturbed weights (so that no
    zero-initialised path hides a dependence)."""
    cfg = dict(channels=(8, 16), decoder_channels=(16, 8, 8), plane_channels=4, width=16, scale_dim=8,
               quantizer=GaussianConfig(dim=8, latent_channels=4))
    torch.manual_seed(0)
    return randomize(ImplicitTokenizer(ImplicitConfig(**{**cfg, **kw})))


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def capture_embeddings(tok: ImplicitTokenizer) -> list:
    """Records the embeddings the INR receives on each call."""
    seen = []
    tok.inr.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    return seen


# ------------------------------------------------------------------------------- shapes

def test_spec_and_decoding_at_any_resolution():
    tok = small()
    x = images()
    assert tok.spec == LatentSpec(grid=(8, 8), kind="continuous", channels=4)
    with torch.no_grad():
        z = tok.encode(x)
        assert z.shape == (2, 8, 8, 4)
        assert tok.decode(z).shape == x.shape
        for size in (16, 24, 64):
            assert tok.decode_at(z, size).shape == (2, 3, size, size)
        assert tok.decode_at(z[:1], 128).shape == (1, 3, 128, 128)
        # the contract's decode is the field sampled at the training resolution
        assert torch.equal(tok.decode_at(z, 32), tok.decode(z))
        assert torch.allclose(tok(x), tok.decode(z), atol=1e-6)
        planes = tok.basis_planes(tok.quantizer.lookup(z))
    assert [tuple(p.shape) for p in planes] == [(2, 4, 8, 8), (2, 4, 16, 16), (2, 4, 32, 32)]
    with pytest.raises(ValueError, match=r"float latents \[B, 8, 8, 4\]"):
        tok.decode_at(torch.zeros(2, 8, 8, 3), 64)


def test_pixel_grid_is_the_pixel_centres_in_raster_order():
    g = pixel_grid(4)
    assert g.shape == (16, 2)
    # row 0, column 1: x = (1 + 0.5) / 4 * 2 - 1, y = (0 + 0.5) / 4 * 2 - 1
    assert torch.allclose(g[1], torch.tensor([-0.25, -0.75]))
    assert torch.allclose(g[4], torch.tensor([-0.75, -0.25]))  # row 1, column 0


# ------------------------------------------------------------------------------- positional embedding

def bilinear_by_hand(plane: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """plane [P, R, R] at (x, y) in [-1, 1] (pixel-centre convention), inside the border."""
    R = plane.shape[-1]
    u, v = ((x + 1) * R - 1) / 2, ((y + 1) * R - 1) / 2   # column, row in texel units
    j, i = int(u // 1), int(v // 1)
    b, a = u - j, v - i
    return ((1 - a) * (1 - b) * plane[:, i, j] + (1 - a) * b * plane[:, i, j + 1]
            + a * (1 - b) * plane[:, i + 1, j] + a * b * plane[:, i + 1, j + 1])


def test_sample_planes_known_answers():
    # a linear ramp 3 * row + 5 * column is reproduced exactly by bilinear interpolation
    R = 8
    rows, cols = torch.meshgrid(torch.arange(R).float(), torch.arange(R).float(), indexing="ij")
    plane = (3 * rows + 5 * cols)[None, None]                                  # [1, 1, R, R]
    x, y = 0.3, -0.55
    u, v = ((x + 1) * R - 1) / 2, ((y + 1) * R - 1) / 2
    out = sample_planes([plane], torch.tensor([[[x, y]]]))[0]
    assert out.shape == (1, 1, 1)
    assert torch.allclose(out[0, 0, 0], torch.tensor(3 * v + 5 * u))
    # at a pixel centre of a plane of the output's side, the sample is that texel
    random_plane = torch.randn(1, 2, R, R)
    centre = pixel_grid(R)[2 * R + 5]                                          # row 2, column 5
    assert torch.allclose(sample_planes([random_plane], centre.view(1, 1, 2))[0][0, 0], random_plane[0, :, 2, 5])


def test_the_inr_reads_bilinear_samples_of_the_basis_planes():
    tok = small()
    seen = capture_embeddings(tok)
    with torch.no_grad():
        z_q = tok.quantizer.lookup(tok.encode(images()))
        planes = tok.basis_planes(z_q)
        coords = torch.tensor([[[0.137, -0.42], [-0.61, 0.275]]]).expand(2, -1, -1)   # off any texel centre
        tok.render(z_q, coords)
    embeddings = seen[-1]
    assert len(embeddings) == 3
    for level, (pe, plane) in enumerate(zip(embeddings, planes)):
        for b in range(2):
            for n, (x, y) in enumerate(coords[b].tolist()):
                want = bilinear_by_hand(plane[b], x, y)
                assert torch.allclose(pe[b, n], want, atol=1e-5), (level, b, n)


# ------------------------------------------------------------------------------- coarse to fine

@pytest.mark.parametrize("level", [0, 1, 2])
def test_levels_enter_coarse_to_fine(level):
    """Changing plane l changes the outputs of blocks l.. and leaves blocks < l untouched: block 1
    reads the coarse level alone, block 2 adds the middle one, block 3 the fine one."""
    tok = small()
    with torch.no_grad():
        z_q = tok.quantizer.lookup(tok.encode(images()))
        planes = tok.basis_planes(z_q)
        coords = pixel_grid(32).expand(2, -1, -1)
        style = tok.style(1.0, 2, z_q.device)
        before = tok.inr.hidden(sample_planes(planes, coords), style)
        changed = [p + torch.randn_like(p) if i == level else p for i, p in enumerate(planes)]
        after = tok.inr.hidden(sample_planes(changed, coords), style)
    for block in range(3):
        same = torch.equal(before[block], after[block])
        assert same == (block < level), f"plane {level} changed, block {block + 1}: same={same}"


def test_dropping_the_fine_level_keeps_only_its_mean():
    tok = small()
    seen = capture_embeddings(tok)
    with torch.no_grad():
        z = tok.encode(images())
        full = tok.decode_at(z, 32)
        coarse = tok.decode_at(z, 32, drop_levels=1)
    kept, dropped = seen[0], seen[1]
    assert torch.equal(kept[0], dropped[0]) and torch.equal(kept[1], dropped[1])
    assert torch.allclose(dropped[2], kept[2].mean(1, keepdim=True).expand_as(kept[2]))
    assert not torch.allclose(full, coarse)
    with pytest.raises(ValueError, match="drop_levels must be in 0..2"):
        tok.decode_at(z, 32, drop_levels=3)


# ------------------------------------------------------------------------------- scale injection

def test_scale_injection_changes_the_output_and_defaults_to_the_output_side():
    tok = small()
    with torch.no_grad():
        z_q = tok.quantizer.lookup(tok.encode(images()))
        coords = pixel_grid(16).expand(2, -1, -1)
        half, one = tok.render(z_q, coords, scale=0.5), tok.render(z_q, coords, scale=1.0)
        assert (half - one).abs().amax() > 1e-3, "the style must depend on the resolution scale"
        # a 16 px output stands for scale 16/32; above the training side the style stays at 1
        assert torch.allclose(tok.render_grid(z_q, 16).flatten(2).transpose(1, 2), half, atol=1e-6)
        sixty_four = tok.render(z_q, pixel_grid(64).expand(2, -1, -1), scale=1.0)
        assert torch.allclose(tok.render_grid(z_q, 64).flatten(2).transpose(1, 2), sixty_four, atol=1e-6)
        assert not torch.allclose(tok.render_grid(z_q, 64, scale=2.0), tok.render_grid(z_q, 64))


def test_training_targets_are_area_downsampled_at_a_random_side():
    """With every pixel scored, the training loss at side s is the error of the field rendered at
    s (scale s / 32) against the area-downsampled image."""
    tok = small(full_size_share=0.0, min_train_size=24, train_points=0)
    tok.train()
    tok.quantizer.eval()  # the posterior mean: a deterministic latent to compare against
    x = images()
    torch.manual_seed(3)
    sizes = set()
    for _ in range(6):
        with torch.no_grad():
            out = tok.loss({"image": x})
            size = int(out["train_size"])
            sizes.add(size)
            want = F.mse_loss(tok.render_grid(tok.quantize(x).z_q, size), F.interpolate(x, size=size, mode="area"))
        assert 24 <= size < 32 and torch.allclose(out["l2"], want, atol=1e-6)
    assert len(sizes) > 1, "the side is drawn at random"
    tok.eval()
    assert int(tok.loss({"image": x})["train_size"]) == 32, "evaluation scores the training resolution"


def test_random_points_estimate_the_full_grid_loss():
    """train_points pixels per image: the loss is the mean over a random subset, near the full one."""
    full = small(full_size_share=1.0, train_points=0)
    part = small(full_size_share=1.0, train_points=256)
    for tok in (full, part):
        tok.train()
        tok.quantizer.eval()
    x = images(8)
    with torch.no_grad():
        whole = full.loss({"image": x})["l1"]
        subsets = torch.stack([part.loss({"image": x})["l1"] for _ in range(8)])
    assert not torch.allclose(subsets[0], subsets[1]), "a new subset each step"
    assert abs(float(subsets.mean() / whole) - 1) < 0.05


# ------------------------------------------------------------------------------- the baseline

def test_fourier_baseline_matches_in_size_and_trains_every_parameter():
    hdbf = ImplicitTokenizer(ImplicitConfig())
    fourier = ImplicitTokenizer(ImplicitConfig(positional="fourier"))
    n_h, n_f = (sum(p.numel() for p in m.parameters()) for m in (hdbf, fourier))
    assert abs(n_f / n_h - 1) < 0.10, (n_h, n_f)
    tok = small(positional="fourier", global_dim=8, global_hidden=16).train()
    out = tok.loss({"image": images()})
    out["loss"].backward()
    missing = [n for n, p in tok.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    with pytest.raises(ValueError, match="basis planes exist only"):
        tok.basis_planes(torch.zeros(1, 8, 8, 8))
    # the embedding is a fixed function of the coordinate: the latent reaches the field only
    # through the global modulation
    seen = capture_embeddings(tok.eval())
    with torch.no_grad():
        z = tok.encode(images())
        tok.decode(z)
        tok.decode(z + 1.0)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1]))


def test_config_errors():
    with pytest.raises(ValueError, match="image_size 30 is not a multiple"):
        ImplicitConfig(image_size=30)
    with pytest.raises(ValueError, match="positional must be"):
        ImplicitConfig(positional="sine")
    with pytest.raises(ValueError, match="min_train_size must be in 1..image_size"):
        ImplicitConfig(min_train_size=40)
    with pytest.raises(ValueError, match="at least one basis level"):
        ImplicitConfig(decoder_channels=())
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 32, 32\]"):
        small().encode(torch.rand(2, 3, 16, 16))


# ------------------------------------------------------------------------------- learning

def test_implicit_tokenizer_overfits_a_few_images():
    """200 Adam steps on 8 fixed 16 px Shapes images (random sides 8..16, 128 random pixels per
    image and step): at 16 px the mean absolute error falls below half the mean image's and the
    PSNR above 22 dB (measured: 0.051 and 24.9 dB; the mean image gives 0.147). One thread: these
    small ops gain nothing from two, and lose a lot when the cores are shared."""
    from latentforge.data.shapes import ShapesConfig, render_batch
    from latentforge.modalities.image import ImageModality

    x = ImageModality(16).to_model(render_batch(ShapesConfig(size=16), "train", range(8)))
    torch.manual_seed(0)
    cfg = ImplicitConfig(image_size=16, channels=(16, 32), decoder_channels=(32, 16, 8), plane_channels=8,
                         width=32, scale_dim=16, min_train_size=8, train_points=128,
                         quantizer=GaussianConfig(dim=16, latent_channels=4))
    tok = ImplicitTokenizer(cfg)
    opt = torch.optim.Adam(tok.parameters(), 2e-3)
    for _ in range(200):
        out = tok.loss({"image": x})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        out = tok.loss({"image": x})
    mean_image_l1 = float((x - x.mean(0)).abs().mean())
    assert float(out["l1"]) < 0.5 * mean_image_l1, (float(out["l1"]), mean_image_l1)
    assert float(out["psnr"]) > 22.0, float(out["psnr"])


def test_a_continuous_generator_models_the_latents_and_they_decode_at_any_side():
    """DDMI's stage 2 is latent diffusion over the embeddings' latents: the DiT links to the spec
    and its samples decode at 64 px (untrained: the interface, not the quality)."""
    tok = small().eval()
    gen = build_generator("dit", **build_generator("dit").config.fields_for(tok.spec, "tokenizer 'implicit'")).eval()
    z = gen.sample(2, generator=torch.Generator().manual_seed(0), **few_steps(gen))
    assert z.shape == (2, 8, 8, 4)
    with torch.no_grad():
        assert tok.decode_at(z, 64).shape == (2, 3, 64, 64)


def test_config_round_trips_through_dataclass_replace():
    cfg = dataclasses.replace(ImplicitConfig.tiny(), positional="fourier")
    assert ImplicitTokenizer(cfg).spec.grid == (2, 2)


@pytest.mark.slow
def test_a_ddmi_recipe_samples_at_any_size(tmp_path):
    """configs/shapes_ddmi.yaml end to end at a tiny size (implicit tokenizer + DiT on its latents),
    then `latentforge sample --size 64` decodes the samples at twice the trained side; a tokenizer
    without a continuous decoder refuses --size with the reason."""
    import json

    import numpy as np

    from latentforge.cli import main

    tiny = ["data.train_size=64", "data.val_size=16", "tokenizer.channels=[8, 16]",
            "tokenizer.decoder_channels=[16, 8, 8]", "tokenizer.plane_channels=4", "tokenizer.width=16",
            "tokenizer_train.steps=4", "tokenizer_train.batch_size=8", "generator.dim=32", "generator.depth=1",
            "generator.heads=2", "generator.conditioner.dim=32", "generator.conditioner.depth=1",
            "generator.conditioner.heads=2", "generator.conditioner.layout_rejection=2", "generator_train.steps=4",
            "generator_train.batch_size=8", "sample.conditions=4", "sample.options.steps=2", "eval.recon_images=16",
            "eval.show=4", "eval.n=10", "eval.metrics=[recon]"]
    assert main(["run", "configs/shapes_ddmi.yaml", "--no-progress", f"out_dir={tmp_path}", "name=d", *tiny]) == 0
    graph = json.dumps({"objects": [{"shape": "circle", "color": "red", "size": "large"}], "relations": []})
    out = tmp_path / "big.png"
    assert main(["sample", str(tmp_path / "d"), "--condition", graph, "--n", "2", "--size", "64",
                 "--out", str(out)]) == 0
    with np.load(out.with_suffix(".npz")) as f:
        assert f["samples"].shape == (2, 64, 64, 3) and f["samples"].dtype == np.uint8
    with pytest.raises(ValueError, match="decodes at its trained size only"):
        from latentforge.pipeline import Pipeline
        from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

        pipe = Pipeline.__new__(Pipeline)
        pipe.tokenizer = ConvTokenizer(ConvConfig.tiny())
        pipe.set_decode_size(64)
