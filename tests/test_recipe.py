"""A tiny end-to-end run of the default recipe: every stage, every output file, the CLI."""

import json

import numpy as np
import pytest

from latentforge.cli import main
from latentforge.config import ConfigError
from latentforge.recipes import Run, load_recipe

TINY = [
    "data.train_size=256", "data.val_size=32",
    "tokenizer.channels=[16, 32]", "tokenizer.quantizer.codebook_size=64", "tokenizer.quantizer.dim=8",
    "tokenizer_train.steps=6", "tokenizer_train.batch_size=16", "tokenizer_train.log_every=3",
    "tokenizer_train.ckpt_every=3",
    "generator.dim=32", "generator.depth=1", "generator.heads=2",
    "generator.conditioner.dim=32", "generator.conditioner.depth=1", "generator.conditioner.heads=2",
    "generator_train.steps=6", "generator_train.batch_size=16", "generator_train.log_every=3",
    "sample.conditions=4", "sample.per_graph=2", "eval.recon_images=32", "eval.show=8",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "configs/shapes_sg2im.yaml", "--no-progress", f"out_dir={out}", "name=tiny", *TINY]) == 0
    return out / "tiny"


@pytest.mark.slow
def test_run_writes_every_output(run_dir):
    for name in ["config.yaml", "stages.json", "samples.npz", "metrics.json", "reconstructions.png",
                 "samples.png", "real.png", "curves.png", "report.html", "tokenizer/config.json",
                 "tokenizer/model.safetensors", "generator/config.json", "generator/model.safetensors"]:
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ["psnr", "ssim", "codebook_usage", "perplexity"]:
        assert key in metrics["tokenizer"]
    for key in ["bits_per_token", "scene_exact", "count_acc", "shape_acc", "color_acc", "size_acc",
                "relation_acc", "diversity", "unique_frac", "samples_per_s"]:
        assert key in metrics["generator"]
        if key not in ("bits_per_token", "samples_per_s"):
            assert 0.0 <= metrics["generator"][key] <= 1.0
    assert metrics["generator"]["real_images_scene_exact"] == 1.0
    with np.load(run_dir / "samples.npz") as f:
        assert f["samples"].dtype == np.uint8 and f["samples"].shape == (8, 32, 32, 3)
        assert len(f["graphs"]) == 8 and "objects" in json.loads(f["graphs"][0])
    html = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in html and 'id="metric-generator-scene_exact"' in html
    # each saved model's card names its data and carries the run's metrics after the eval stage
    for stage in ("tokenizer", "generator"):
        card = (run_dir / stage / "README.md").read_text()
        assert "- dataset: shapes" in card and "- modality: image" in card and "- steps: 6" in card
        assert f"| tokenizer.psnr | {metrics['tokenizer']['psnr']:.4g} |" in card
        assert "| generator.scene_exact |" in card


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_refuses_changed_training(run_dir, capsys):
    cfg = load_recipe("configs/shapes_sg2im.yaml", [f"out_dir={run_dir.parent}", "name=tiny", *TINY])
    before = (run_dir / "generator" / "model.safetensors").stat().st_mtime_ns
    Run(cfg, progress=False).run()
    assert "stage generator: done already, skipped" in capsys.readouterr().err
    assert (run_dir / "generator" / "model.safetensors").stat().st_mtime_ns == before
    changed = load_recipe("configs/shapes_sg2im.yaml",
                          [f"out_dir={run_dir.parent}", "name=tiny", *TINY, "generator_train.lr=0.5"])
    with pytest.raises(ConfigError, match="already holds a generator trained with another config"):
        Run(changed, progress=False).run()


@pytest.mark.slow
def test_interrupted_training_resumes(tmp_path, capsys, monkeypatch):
    import latentforge.train.trainer as trainer_mod

    cfg = load_recipe("configs/shapes_sg2im.yaml", [f"out_dir={tmp_path}", "name=r", *TINY])
    real_save = trainer_mod.save_checkpoint

    def save_then_die(*args, **kwargs):  # the process is killed right after the step-3 checkpoint
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Run(cfg, progress=False).run(stages=("data", "tokenizer"))
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    Run(cfg, progress=False).run(stages=("data", "tokenizer"))
    err = capsys.readouterr().err
    assert "stage data: done already, skipped" in err and "resumed from ckpt-00000003 (step 3)" in err
    steps = [json.loads(l)["step"] for l in (tmp_path / "r/tokenizer/train/log.jsonl").read_text().splitlines()]
    assert steps == [3, 6]
    assert (tmp_path / "r/tokenizer/model.safetensors").is_file()


@pytest.mark.slow
def test_sample_and_eval_commands(run_dir, tmp_path, capsys):
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps({"objects": [{"shape": "circle", "color": "red", "size": "large"},
                                             {"shape": "square", "color": "blue", "size": "small"}],
                                 "relations": [[0, "left of", 1]]}))
    out = tmp_path / "x.png"
    assert main(["sample", str(run_dir), "--graph", str(graph), "--n", "3", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main(["sample", str(run_dir), "--graph", str(graph), "--n", "2", "--int8", "--out", str(out)]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"objects": [{"shape": "hexagon", "color": "red", "size": "large"}]}))
    assert main(["sample", str(run_dir), "--graph", str(bad), "--out", str(out)]) == 2
    assert "objects[0].shape: 'hexagon' is not one of" in capsys.readouterr().err
    # a run trained on graphs of at most 3 objects draws graphs of up to 6, and refuses 7 by name
    five = [{"shape": s, "color": c, "size": "small"} for s, c in zip(["circle", "square", "triangle"] * 2,
                                                                   ["red", "green", "blue", "yellow", "cyan"])]
    graph.write_text(json.dumps({"objects": five, "relations": [[0, "left of", 1]]}))
    assert main(["sample", str(run_dir), "--graph", str(graph), "--n", "2", "--out", str(out)]) == 0
    graph.write_text(json.dumps({"objects": five + five[:2]}))
    assert main(["sample", str(run_dir), "--graph", str(graph), "--out", str(out)]) == 2
    assert "has 7 objects; Shapes scenes hold at most 6" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--metrics", "recon,adherence", "--no-progress"]) == 0
    assert "scene_exact" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_command_writes_every_metric_deterministically(run_dir, shapes_probe, capsys):
    args = ["eval", str(run_dir), "--n", "40", "--seed", "3", "--no-progress"]
    assert main(args) == 0
    first = json.loads((run_dir / "metrics.json").read_text())
    dist = first["distribution"]
    assert dist["n"] == 40 and dist["seed"] == 3 and dist["features"]["name"] == "probe"
    assert len(dist["features"]["hash"]) == 16 and dist["features"]["test_accuracy"]["count"] >= 0.95
    for values in (dist["model"], *dist["baselines"].values()):
        assert {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"} <= set(values)
    # a 6-step model is far from the data: worse than the floor; the floor beats the Gaussian
    floor, gaussian = dist["baselines"]["real (test split)"], dist["baselines"]["pixel gaussian"]
    assert floor["fid"] < dist["model"]["fid"] and floor["fid"] < gaussian["fid"]
    assert floor["precision"] > gaussian["precision"]
    assert {"ms_ssim", "psnr_low", "psnr_high_1", "rfid"} <= set(first["tokenizer"])
    assert {"samples_per_s", "ms_per_step", "steps_per_batch"} <= set(first["generator"])
    assert first["generator"]["steps_per_batch"] == 64  # one per code of the 8x8 grid (KV cache)
    assert first["eval"] == {"metrics": ["recon", "val", "adherence", "diversity", "speed", "fid", "kid", "pr"],
                             "n": 40, "seed": 3, "skipped": {},
                             "previews": {"reconstructions": ["reconstructions.png"]}}
    out = capsys.readouterr().out
    assert "real (test split): fid=" in out
    html = (run_dir / "report.html").read_text()
    assert 'id="dist-fid"' in html and dist["features"]["hash"] in html
    # the same n and seed give the same numbers (timings aside)
    assert main(args) == 0
    second = json.loads((run_dir / "metrics.json").read_text())
    timing = {"samples_per_s", "ms_per_step"}
    assert second["distribution"] == first["distribution"] and second["tokenizer"] == first["tokenizer"]
    assert {k: v for k, v in second["generator"].items() if k not in timing} == \
        {k: v for k, v in first["generator"].items() if k not in timing}
    assert main([*args[:-2], "4", "--no-progress"]) == 0  # another seed, other samples
    assert json.loads((run_dir / "metrics.json").read_text())["distribution"]["model"] != dist["model"]


def test_eval_command_errors(tmp_path, capsys):
    assert main(["eval", "train-probe", "photos", "--steps", "2"]) == 2
    assert "no labels to train a probe on" in capsys.readouterr().err
    assert main(["eval", "train-probe", "mnist"]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err
    assert main(["eval", "train-probe", "digits", "sizes=16"]) == 2
    assert "unknown config key 'data.sizes'" in capsys.readouterr().err


@pytest.mark.slow
def test_train_probe_command(capsys):
    assert main(["eval", "train-probe", "digits", "size=16", "--steps", "30", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "digits probe in" in out and "test accuracy (179 images): class" in out
    assert main(["eval", "train-probe", "digits", "size=16"]) == 0
    assert "probe already trained" in capsys.readouterr().out


def test_cli_config_errors(tmp_path, capsys):
    assert main(["run", "configs/shapes_sg2im.yaml", f"out_dir={tmp_path}", "tokenizer.chanels=[8]"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'tokenizer.chanels'" in err and "channels" in err
    assert main(["run", "configs/shapes_sg2im.yaml", f"out_dir={tmp_path}", "data.max_objects=9"]) == 2
    assert "max_objects" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert main(["eval", str(tmp_path)]) == 2


def test_data_command_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["data", "shapes", "--n", "6", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


@pytest.mark.slow
def test_train_command_runs_the_training_stages_only(tmp_path, capsys):
    assert main(["train", "configs/shapes_sg2im.yaml", "--no-progress", f"out_dir={tmp_path}", "name=t", *TINY]) == 0
    stages = json.loads((tmp_path / "t" / "stages.json").read_text())
    assert list(stages) == ["data", "tokenizer", "encode", "generator"]
    assert (tmp_path / "t" / "generator" / "model.safetensors").is_file()
    assert not (tmp_path / "t" / "samples.npz").exists()
    assert f"run folder: {tmp_path / 't'}" in capsys.readouterr().out


def test_fingerprints_ignore_run_time_switches_and_survive_new_defaults():
    def fingerprints(*overrides):
        run = Run(load_recipe("configs/shapes_sg2im.yaml", ["name=demo", *overrides]))
        return run.fingerprint("tokenizer"), run.fingerprint("generator")

    # what `make demo` recorded before the trainer gained accumulate / ema_decay / compile / ... and
    # the quantizer its collapse defences: those runs still match, so they resume instead of being
    # refused. The recipe itself changed with issue 14 (500 -> 450 tokenizer steps, 1150 -> 1350
    # generator steps, best of 32 layouts instead of 16; README "Command line"); with the old values
    # the fingerprints are the old ones
    old = ("tokenizer_train.steps=500", "generator_train.steps=1150", "generator.conditioner.layout_rejection=16")
    assert fingerprints(*old) == ("8ca50ba8dd89a100", "c11a4a32d7542fe8")
    assert fingerprints() == ("8ce5f4e7aa6aab24", "a917f3dd0fed9496")
    assert fingerprints("generator_train.compile=true", "generator_train.tensorboard=false",
                        "tokenizer_train.detect_anomaly=true") == fingerprints()
    assert fingerprints("generator_train.ema_decay=0.999")[1] != fingerprints()[1]
    # the quantizer's collapse defences (issue 14) joined later too: off, they leave the
    # fingerprint alone; on, they change it (and so the generator's, which reads those codes)
    for switch in ("simvq=true", "entropy_weight=0.01", "kmeans_usage=true"):
        changed = fingerprints(f"tokenizer.quantizer.{switch}")
        assert changed[0] != fingerprints()[0] and changed[1] != fingerprints()[1], switch


@pytest.mark.slow
def test_eval_with_inception_weights_reports_sfid_is_and_a_reference_batch(run_dir, tmp_path):
    """Paper metrics in a run's eval: sFID and IS beside FID, and the samples scored against an ADM
    reference batch. The batch holds the very val images the eval compares with, so its FID and sFID
    must equal the eval's own."""
    import torch
    from test_inception import _random_state

    from latentforge.eval.inception import FID_CLASSES, InceptionFeatures, InceptionV3
    from latentforge.eval.reference_batch import write_reference_batch
    from latentforge.recipes import load_split

    weights = tmp_path / "pt_inception.pth"
    torch.save(_random_state(InceptionV3(FID_CLASSES, fid=True)), weights)
    run = Run(load_recipe("configs/shapes_sg2im.yaml", [f"out_dir={run_dir.parent}", "name=tiny", *TINY]))
    real = run.dataset.examples(load_split(run_dir, "val"))[:10]
    ref = tmp_path / "ref.npz"
    write_reference_batch(ref, np.ascontiguousarray(real), InceptionFeatures.from_file(weights, resize="tf1"))
    assert main(["eval", str(run_dir), "--no-progress", "--metrics", "fid", "--n", "10", "--inception-weights",
                 str(weights), "--inception-resize", "tf1", "--reference-batch", str(ref), "eval.baselines=false"]) == 0
    dist = json.loads((run_dir / "metrics.json").read_text())["distribution"]
    assert dist["features"]["name"] == "inception" and dist["features"]["resize"] == "tf1"
    model = dist["model"]
    assert model["sfid"] > 0 and 1.0 <= model["is"] <= 1008
    against = model["reference_batch"]
    assert against["reference_statistics"] == "stored" and against["resize"] == "tf1"
    assert against["fid"] == pytest.approx(model["fid"], rel=1e-6)
    assert against["sfid"] == pytest.approx(model["sfid"], rel=1e-6)
    assert against["is"] == pytest.approx(model["is"], rel=1e-9)
