"""Training batches from stored splits: StepBatches (step k's rows from (seed, k) alone, read
ahead by workers or not, each process reading only its rows) and write_split (a split stored
piece by piece, atomically)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from latentforge.data.base import build_dataset
from latentforge.data.motion import StickFigureConfig
from latentforge.data.sets import ShapesDataConfig
from latentforge.data.store import load_split, write_split
from latentforge.train.batches import StepBatches, step_seed
from latentforge.train.distributed import World
from latentforge.train.trainer import TrainConfig, Trainer


def stored(tmp_path, n=40):
    """A split of n rows written in pieces of 16 and read back memory-mapped."""
    g = np.random.default_rng(0)
    x = g.normal(size=(n, 4)).astype(np.float32)
    label = np.arange(n) % 3
    text = np.array([f"row {i}" for i in range(n)])
    pieces = ({"x": x[i:i + 16], "label": label[i:i + 16], "text": text[i:i + 16]} for i in range(0, n, 16))
    write_split(tmp_path / "data" / "train", pieces, n)
    return load_split(tmp_path, "train"), (x, label, text)


def test_write_split_stores_the_pieces_as_one_memory_mapped_split(tmp_path):
    split, (x, label, text) = stored(tmp_path)
    assert isinstance(split["x"], np.memmap) and np.array_equal(split["x"], x)
    assert np.array_equal(split["label"], label) and split["text"].tolist() == text.tolist()
    assert sorted(p.name for p in (tmp_path / "data" / "train").iterdir()) == ["label.npy", "text.npy", "x.npy"]


@pytest.mark.parametrize(("pieces", "total", "message"), [
    ([{"x": np.zeros((3, 2), np.float32)}, {"x": np.zeros((3, 5), np.float32)}], 6, r"entry 'x' is float32 \[5\]"),
    ([{"x": np.zeros((3, 2), np.float32)}], 5, "hold 3 rows, 5 were announced"),
    ([{"x": np.zeros((3, 2), np.float32)}, {"x": np.zeros((3, 2), np.float32)}], 4, "more than the 4 rows"),
    ([{"x": np.zeros((3, 2)), "y": np.zeros(2)}], 3, "differ in length"),
    ([{"x": np.zeros((3, 2))}, {"z": np.zeros((3, 2))}], 6, r"entries \['z'\]"),
])
def test_write_split_names_a_bad_piece_and_leaves_no_file(tmp_path, pieces, total, message):
    folder = tmp_path / "data" / "train"
    with pytest.raises(ValueError, match=message):
        write_split(folder, iter(pieces), total)
    assert list(folder.iterdir()) == []  # nothing half-written, no temporary file left


@pytest.mark.parametrize("config", [ShapesDataConfig(size=16, train_size=10, val_size=4),
                                    StickFigureConfig(window=16, train_size=10, val_size=4)], ids=["shapes", "stick"])
def test_generated_sets_make_the_same_rows_in_any_pieces(config):
    data = build_dataset(config)
    whole = data.split("train")
    data.chunk_rows = 4
    total, pieces = data.split_pieces("train")
    pieces = list(pieces)
    assert total == 10 and [len(data.examples(p)) for p in pieces] == [4, 4, 2]
    for key, value in whole.items():
        joined = np.concatenate([p[key] for p in pieces])
        assert np.array_equal(joined, value, equal_nan=value.dtype.kind == "f"), key  # padding slots are NaN


def test_step_batches_draw_the_trainers_indices_and_read_those_rows(tmp_path):
    split, (x, label, _) = stored(tmp_path)
    batches = StepBatches({"x": split["x"], "label": split["label"]}, batch_size=8, seed=3)
    torch.manual_seed(step_seed(3, 5))
    idx = torch.randint(40, (8,))  # what a batch_fn drawing from the step-seeded global RNG gets
    assert torch.equal(batches.indices(5), idx)
    batch = batches[5]
    assert torch.equal(batch["x"], torch.from_numpy(x[idx.numpy()])) and batch["label"].tolist() == label[idx].tolist()
    assert not torch.equal(batches.indices(6), idx)


def test_each_process_reads_its_slice_of_the_step(tmp_path):
    split, _ = stored(tmp_path)
    batches = StepBatches({"x": split["x"]}, batch_size=8, seed=0)
    whole = batches.indices(2)
    parts = []
    for rank in range(2):
        batches.world = World(rank=rank, size=2)
        parts.append(batches.indices(2))
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="one length"):
        StepBatches({"x": np.zeros(4), "y": np.zeros(5)}, 2, 0)


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))

    def loss(self, batch):
        return {"loss": (self.net(batch["x"]) - batch["label"].float()[:, None]).pow(2).mean()}


def test_workers_reading_ahead_train_exactly_as_the_loop_reading(tmp_path):
    """workers is a runtime switch (not in the fingerprint): it must not change what is trained."""
    split, _ = stored(tmp_path)
    batches = StepBatches({"x": split["x"], "label": split["label"]}, batch_size=8, seed=0)
    ahead = list(batches.ahead(range(3, 9), workers=2))
    assert all(torch.equal(a["x"], batches[k]["x"]) for a, k in zip(ahead, range(3, 9)))
    params = []
    for workers in (0, 2):
        torch.manual_seed(0)
        model = Regressor()
        cfg = TrainConfig(steps=12, lr=1e-2, warmup=2, log_every=4, ckpt_every=6, precision="fp32", workers=workers,
                          tensorboard=False)
        Trainer(model, cfg, tmp_path / f"w{workers}", batches, progress=False).fit()
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert json.loads((tmp_path / f"w{workers}" / "train_info.json").read_text())["config"]["workers"] == workers
    assert torch.equal(params[0], params[1])
    assert TrainConfig(workers=2).identity() == TrainConfig().identity()
    with pytest.raises(ValueError, match="StepBatches seeded 0, training seed 1"):
        Trainer(Regressor(), TrainConfig(steps=1, seed=1), tmp_path / "bad", batches, progress=False).fit()
