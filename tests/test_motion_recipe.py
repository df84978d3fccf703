"""Motion through the same stages, CLI and report as images: configs/motion_mogo.yaml, tiny."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentforge.cli import main
from latentforge.data.store import load_split

TINY = ["data.train_size=64", "data.val_size=16", "data.window=32",
        "tokenizer.channels=[16,16,32]", "tokenizer.blocks_per_level=1", "tokenizer.quantizer.codebook_size=16",
        "tokenizer.quantizer.dim=8", "tokenizer.quantizer.depth=2", "tokenizer_train.steps=4",
        "tokenizer_train.batch_size=8", "generator.dim=32", "generator.depth=1", "generator.heads=2",
        "generator.depth_dim=32", "generator.depth_layers=1", "generator.depth_heads=2",
        "generator.conditioner.dim=32", "generator_train.steps=4", "generator_train.batch_size=8",
        "sample.conditions=4", "sample.per_graph=2", "eval.recon_images=8", "eval.n=16", "eval.show=4",
        "eval.speed_batch=4"]


@pytest.fixture(scope="module")
def motion_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "configs/motion_mogo.yaml", "--no-progress", f"out_dir={out}", "name=m", *TINY]) == 0
    return out / "m"


@pytest.mark.slow
def test_motion_recipe_runs_every_stage(motion_run):
    for name in ["samples.npz", "samples.gif", "samples_strip.png", "real.gif", "real_strip.png", "reconstructions.gif",
                 "metrics.json", "report.html", "tokenizer/model.safetensors", "generator/model.safetensors"]:
        assert (motion_run / name).is_file(), name
    metrics = json.loads((motion_run / "metrics.json").read_text())
    tok, gen, dist = metrics["tokenizer"], metrics["generator"], metrics["distribution"]
    assert tok["mpjpe"] > 0 and len(tok["mpjpe_by_levels"]) == 2 and tok["codebook_size"] == 16
    assert 0 <= gen["action_acc"] <= 1 and gen["real_action_acc"] >= 0 and "skating_ratio" in gen
    assert dist["features"]["name"] == "motion-probe" and dist["noun"] == "clips"
    assert {"real (test split)", "mean pose", "per-frame gaussian", "train copies"} <= set(dist["baselines"])
    with np.load(motion_run / "samples.npz") as f:
        assert f["samples"].shape == (8, 32, 18, 3) and f["samples"].dtype == np.float32
        assert np.array_equal(f["label"], np.repeat(load_split(motion_run, "val")["label"][:4], 2))
    html = (motion_run / "report.html").read_text()
    assert "data:image/gif;base64," in html and "clips a set" in html


@pytest.mark.slow
def test_sample_reads_actions_through_the_data_set(motion_run, tmp_path, capsys):
    out = tmp_path / "walk.png"
    assert main(["sample", str(motion_run), "--condition", '{"class": "walk"}', "--n", "2", "--out", str(out),
                 "sample.cfg_scale=2"]) == 0
    assert (tmp_path / "walk.gif").stat().st_size > 1000 and (tmp_path / "walk_strip.png").is_file()
    with np.load(tmp_path / "walk.npz") as f:
        assert f["samples"].shape == (2, 32, 18, 3) and f["label"].tolist() == [0, 0]
    assert main(["sample", str(motion_run), "--condition", '{"class": "moonwalk"}', "--out", str(out)]) == 2
    assert "unknown class 'moonwalk'" in capsys.readouterr().err
    assert main(["sample", str(motion_run), "--out", str(out)]) == 2
    assert "--condition" in capsys.readouterr().err


def test_data_command_previews_motion(tmp_path):
    out = tmp_path / "clips.png"
    assert main(["data", "stickfigure", "--n", "3", "--out", str(out), "window=16", "val_size=4"]) == 0
    assert (tmp_path / "clips.gif").is_file() and (tmp_path / "clips_strip.png").is_file()


@pytest.mark.slow
def test_the_app_samples_a_motion_run_as_animations(motion_run, tmp_path):
    """`latentforge serve`'s sampler on a motion run: skeleton animations, drawn for an action."""
    from latentforge.app.sampler import RunSampler, SampleRequest
    from latentforge.cli import _recipe_of

    sampler = RunSampler(_recipe_of(str(motion_run)))
    condition = sampler.examples()[0][1]
    result = sampler.sample(SampleRequest(condition, n=2, cfg_scale=1.5, steps=None, temperature=1.0, seed=0),
                            tmp_path / "app")
    assert result.samples.ndim == 4 and result.samples.shape[0] == 2 and result.samples.shape[-1] == 3  # [N, T, J, 3]
    assert [p.suffix for p in result.pictures] == [".gif", ".png"] and all(p.is_file() for p in result.pictures)
    assert result.captions[0] and not result.clips
