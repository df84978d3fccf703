"""Issue 13, bad input: a truncated or corrupt saved model or checkpoint names the file; a training
stage falls back to its previous good checkpoint; nothing in the run folder is lost."""

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from latentforge import from_pretrained, save_pretrained
from latentforge.quantize.vq import VQConfig
from latentforge.serialization import CorruptFileError, load_state_dict
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer
from latentforge.train.checkpoint import list_checkpoints, read_checkpoint, set_aside
from latentforge.train.trainer import TrainConfig, Trainer


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path):
    path.write_bytes(os.urandom(max(64, path.stat().st_size)))


def empty(path):
    path.write_bytes(b"")


@pytest.fixture
def saved(tmp_path):
    tok = ConvTokenizer(ConvConfig(channels=(8, 16), quantizer=VQConfig(codebook_size=32, dim=8)))
    return save_pretrained(tok, tmp_path / "tok")


# --- a saved model folder ------------------------------------------------------------------------

@pytest.mark.parametrize("damage", [truncate, random_bytes, empty])
def test_corrupt_weights_name_the_file(saved, damage):
    weights = saved / "model.safetensors"
    damage(weights)
    for load in (lambda: from_pretrained(saved), lambda: load_state_dict(weights)):
        with pytest.raises(CorruptFileError, match="truncated or corrupt safetensors file") as info:
            load()
        assert isinstance(info.value, ValueError) and info.value.path == weights
        assert str(weights) in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__  # no raw SafetensorError below


@pytest.mark.parametrize("text", [b'{"kind": "tokenizer", "na', b"", b"\x80\xff\x00 not text", b"[1, 2]", b'{"kind": "x"}'],
                         ids=["truncated", "empty", "binary", "not-an-object", "missing-keys"])
def test_bad_config_json_names_the_file(saved, text):
    (saved / "config.json").write_bytes(text)
    with pytest.raises(CorruptFileError) as info:
        from_pretrained(saved)
    assert str(saved / "config.json") in str(info.value)


def test_error_pickles_with_its_path(tmp_path):
    err = pickle.loads(pickle.dumps(CorruptFileError(tmp_path / "x", "bad x")))
    assert str(err) == "bad x" and err.path == tmp_path / "x"


def test_cli_prints_one_line_and_returns_2(saved, tmp_path, capsys, monkeypatch):
    """Any subcommand that meets a corrupt file: one line on stderr, not a traceback."""
    import latentforge.report.html
    from latentforge.cli import main

    truncate(saved / "model.safetensors")
    monkeypatch.setattr(latentforge.report.html, "write_report", lambda run: from_pretrained(saved))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latentforge: error: truncated or corrupt safetensors file")
    assert str(saved / "model.safetensors") in err[0]


def test_cli_sample_with_a_truncated_tokenizer(saved, tmp_path, capsys):
    """End to end: `sample` loads the run's tokenizer first; a truncated one is one line."""
    from latentforge.cli import main
    from latentforge.data.shapes import ShapesConfig, sample_scene

    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    shutil.copy(Path(__file__).parents[1] / "configs" / "shapes_sg2im.yaml", run / "config.yaml")
    shutil.copytree(saved, run / "tokenizer")
    shutil.copytree(saved, run / "generator")
    truncate(run / "tokenizer" / "model.safetensors")
    graph = tmp_path / "g.json"
    graph.write_text(json.dumps(sample_scene(ShapesConfig(), "train", 0).to_json()))
    assert main(["sample", str(run), "--condition", str(graph), "--n", "1", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latentforge: error: truncated or corrupt safetensors file")
    assert str(run / "tokenizer" / "model.safetensors") in err[0]


# --- resuming training ---------------------------------------------------------------------------

class Regressor(nn.Module):
    """Dropout: the model's own randomness must be restored for the resume to be exact."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))

    def loss(self, batch):
        return {"loss": (self.net(batch["x"]) - batch["y"]).pow(2).mean()}


def batch_fn(step):
    x = torch.randn(8, 4)
    return {"x": x, "y": x.sum(1, keepdim=True)}


class Killed(Exception):
    pass


CFG = TrainConfig(steps=30, lr=1e-2, warmup=2, log_every=10, ckpt_every=10, keep_checkpoints=2,
                  precision="fp32", tensorboard=False)


def killed_after_20(folder):
    """A run stopped after its step-20 checkpoint: keeps ckpt 10 and 20."""
    def dies(step):
        if step == 20:
            raise Killed
        return batch_fn(step)

    torch.manual_seed(0)
    with pytest.raises(Killed):
        Trainer(Regressor(), CFG, folder, dies, progress=False).fit()
    return list_checkpoints(folder / "checkpoints")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The weights of the run trained through in one go."""
    torch.manual_seed(0)
    whole = Regressor()
    Trainer(whole, CFG, tmp_path_factory.mktemp("whole"), batch_fn, progress=False).fit()
    return whole.state_dict()


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", [
    lambda ck: truncate(ck / "model.safetensors"),
    lambda ck: random_bytes(ck / "optimizer.safetensors"),
    lambda ck: truncate(ck / "extra.safetensors"),
    lambda ck: (ck / "state.json").write_text('{"step": 20, "optim'),
    lambda ck: (ck / "state.json").write_text('{"step": 20}'),
], ids=["model-truncated", "optimizer-random", "extra-truncated", "state-truncated", "state-incomplete"])
def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, capsys, damage, uninterrupted):
    folder = tmp_path / "run"
    ckpts = killed_after_20(folder)
    assert [c.name for c in ckpts] == ["ckpt-00000010", "ckpt-00000020"]
    damage(ckpts[-1])
    bad = snapshot(ckpts[-1])
    capsys.readouterr()

    torch.manual_seed(123)  # a fresh process
    resumed = Regressor()
    Trainer(resumed, CFG, folder, batch_fn, progress=False).fit()
    for name, p in resumed.state_dict().items():
        assert torch.equal(p, uninterrupted[name]), name

    err = capsys.readouterr().err
    assert "resumed from ckpt-00000010 (step 10)" in err
    warnings = [l for l in err.splitlines() if "warning" in l]
    assert len(warnings) == 1 and str(ckpts[-1]) in warnings[0]
    assert "kept as ckpt-00000020.corrupt, resuming from ckpt-00000010" in warnings[0]
    aside = folder / "checkpoints" / "ckpt-00000020.corrupt"
    assert snapshot(aside) == bad  # kept byte for byte
    assert [c.name for c in list_checkpoints(folder / "checkpoints")] == ["ckpt-00000020", "ckpt-00000030"]
    steps = [json.loads(l)["step"] for l in (folder / "log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]


def test_no_readable_checkpoint_is_a_clear_error_and_changes_nothing(tmp_path):
    folder = tmp_path / "run"
    ckpts = killed_after_20(folder)
    truncate(ckpts[0] / "model.safetensors")
    (ckpts[1] / "state.json").write_bytes(os.urandom(32))
    before = snapshot(folder)
    with pytest.raises(CorruptFileError) as info:
        Trainer(Regressor(), CFG, folder, batch_fn, progress=False).fit()
    message = str(info.value)
    assert str(ckpts[0] / "model.safetensors") in message and str(ckpts[1] / "state.json") in message
    assert f"move {folder / 'checkpoints'} aside" in message
    assert snapshot(folder) == before


def test_read_checkpoint_names_a_missing_file_and_set_aside_never_overwrites(tmp_path):
    folder = tmp_path / "run"
    ckpt = killed_after_20(folder)[-1]
    (ckpt / "optimizer.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="optimizer.safetensors is missing"):
        read_checkpoint(ckpt)
    (ckpt.parent / "ckpt-00000020.corrupt").mkdir()
    assert set_aside(ckpt).name == "ckpt-00000020.corrupt-2"
    assert (ckpt.parent / "ckpt-00000020.corrupt").is_dir()
