"""Video through the house's stages: a tiny Moving Shapes run (causal 3D tokenizer, P16's 3D-RoPE DiT
with caption cross-attention) end to end, its judge's numbers, and the report's animated previews in a
real browser."""

import json

import numpy as np
import pytest
from PIL import Image
from test_report_browser import report_page

from latentforge.cli import main
from latentforge.config import ConfigError
from latentforge.recipes import load_recipe

TINY_VIDEO = [
    "data.size=16", "data.frames=5", "data.train_size=64", "data.val_size=16",
    "tokenizer.channels=[8, 16]", "tokenizer.quantizer.dim=8", "tokenizer.quantizer.latent_channels=4",
    "tokenizer_train.steps=4", "tokenizer_train.batch_size=8", "tokenizer_train.log_every=2",
    "generator.dim=32", "generator.depth=1", "generator.heads=2",
    "generator.conditioner.dim=32", "generator.conditioner.depth=1", "generator.conditioner.heads=2",
    "generator_train.steps=4", "generator_train.batch_size=8", "generator_train.log_every=2",
    "sample.conditions=4", "sample.per_graph=2", "sample.options={steps: 2}",
    "eval.recon_images=8", "eval.show=4", "eval.speed_batch=4",
    "eval.metrics=[recon, val, adherence, diversity, speed]",
]


def test_the_recipe_links_video_data_to_a_video_tokenizer():
    cfg = load_recipe("configs/video_moving_shapes.yaml")
    assert (cfg.tokenizer.frames, cfg.tokenizer.image_size) == (9, 32)
    assert cfg.generator.grid == (5, 8, 8) and cfg.generator.channels == 8 and cfg.generator.patch_grid == (5, 4, 4)
    with pytest.raises(ConfigError, match="reads video data, but data 'shapes' holds image"):
        load_recipe("configs/video_moving_shapes.yaml", ["data.name=shapes"])
    with pytest.raises(ConfigError, match="1 \\+ 2k frames: 7 or 9"):
        load_recipe("configs/video_moving_shapes.yaml", ["data.frames=8"])
    mnist = load_recipe("configs/video_moving_mnist.yaml")
    assert mnist.generator.grid == (9, 8, 8) and "three" in mnist.generator.conditioner.vocab


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "configs/video_moving_shapes.yaml", "--no-progress", f"out_dir={out}", "name=vid",
                 *TINY_VIDEO]) == 0
    return out / "vid"


@pytest.mark.slow
def test_a_tiny_video_run_goes_through_every_stage(video_run):
    metrics = json.loads((video_run / "metrics.json").read_text())
    tok, gen = metrics["tokenizer"], metrics["generator"]
    assert {"psnr", "ssim", "psnr_first_frame", "temporal_error"} <= set(tok)
    assert gen["real_clips_motion_exact"] == 1.0          # the judge reads real clips exactly
    assert 0.0 <= gen["motion_exact"] <= 1.0 and gen["n_samples"] == 8
    samples = np.load(video_run / "samples.npz")["samples"]
    assert samples.shape == (8, 5, 16, 16, 3) and samples.dtype == np.uint8
    assert Image.open(video_run / "samples.gif").n_frames == 5


@pytest.mark.slow
def test_the_video_report_plays_its_clips_in_headless_chromium(video_run):
    with report_page(video_run / "report.html") as (page, problems, _):
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth, "
                                                  "e.src.slice(0, 15)])")
        rows = page.eval_on_selector_all("tr[id^=metric-]", "els => els.map(e => e.id)")
    alts = [alt for alt, *_ in images]
    assert alts[:5] == ["samples", "samples strip", "real", "real strip", "reconstructions"]
    assert all(complete and width > 0 for _, complete, width, _ in images), images
    assert images[0][3] == "data:image/gif;"                      # the samples animate
    assert {"metric-generator-motion_exact", "metric-tokenizer-temporal_error"} <= set(rows)
    assert problems == []


@pytest.mark.slow
def test_the_app_samples_a_video_run_as_animations(video_run, tmp_path):
    """`latentforge serve`'s sampler on a video run: clips shown as an animation and a filmstrip."""
    from latentforge.app.sampler import RunSampler, SampleRequest
    from latentforge.cli import _recipe_of

    sampler = RunSampler(_recipe_of(str(video_run)))
    examples = sampler.examples()
    condition = examples[0][1] if examples else ""
    result = sampler.sample(SampleRequest(condition, n=2, cfg_scale=1.5, steps=None, temperature=1.0, seed=0),
                            tmp_path / "app")
    assert result.samples.ndim == 5 and result.samples.dtype == np.uint8  # [N, T, H, W, 3]
    assert {p.suffix for p in result.pictures} >= {".gif"} and all(p.is_file() for p in result.pictures)
    assert not result.clips
