import json

import pytest
import torch
from torch import nn

from latentforge.train.checkpoint import list_checkpoints
from latentforge.train.precision import cpu_native_bf16, resolve_precision
from latentforge.train.trainer import NonFiniteLoss, TrainConfig, Trainer, lr_at


class Regressor(nn.Module):
    """y = W x + noise-free target; dropout makes the model's own randomness matter for resume."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.Linear(16, 1))

    def loss(self, batch):
        pred = self.net(batch["x"])
        return {"loss": (pred - batch["y"]).pow(2).mean()}


def batch_fn(step):
    x = torch.randn(8, 4)
    return {"x": x, "y": x.sum(1, keepdim=True)}


def test_lr_schedule_known_values():
    cfg = TrainConfig(steps=110, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_training_reduces_loss_and_logs(tmp_path):
    torch.manual_seed(0)
    model = Regressor()
    cfg = TrainConfig(steps=200, lr=1e-2, warmup=10, log_every=50, ckpt_every=100, precision="fp32")
    last = Trainer(model, cfg, tmp_path, batch_fn, progress=False).fit()
    records = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150, 200]
    assert records[-1]["loss"] < 0.3 * records[0]["loss"]
    assert last["loss"] == records[-1]["loss"]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt-00000100", "ckpt-00000200"]
    info = json.loads((tmp_path / "train_info.json").read_text())
    assert info["precision"] == "fp32" and info["parameters"] == sum(p.numel() for p in model.parameters())


class Killed(Exception):
    pass


def test_resume_is_exact(tmp_path):
    """A run killed after step 30's checkpoint and resumed gives bitwise the parameters of an
    uninterrupted run."""
    cfg = TrainConfig(steps=60, lr=1e-2, warmup=5, log_every=10, ckpt_every=30, precision="fp32")
    torch.manual_seed(0)
    whole = Regressor()
    Trainer(whole, cfg, tmp_path / "a", batch_fn, progress=False).fit()

    def dies_at_30(step):
        if step == 30:
            raise Killed
        return batch_fn(step)

    torch.manual_seed(0)
    with pytest.raises(Killed):
        Trainer(Regressor(), cfg, tmp_path / "b", dies_at_30, progress=False).fit()
    torch.manual_seed(123)  # a fresh process: other init, other global RNG state
    resumed = Regressor()
    Trainer(resumed, cfg, tmp_path / "b", batch_fn, progress=False).fit()
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50, 60]


def test_non_finite_loss_stops_with_the_step_and_terms(tmp_path):
    class Exploding(Regressor):
        def loss(self, batch):
            out = super().loss(batch)
            return {"loss": out["loss"] * float("nan"), "mse": out["loss"]}

    cfg = TrainConfig(steps=5, warmup=1, precision="fp32")
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 0: \{'loss': nan, 'mse'"):
        Trainer(Exploding(), cfg, tmp_path, batch_fn, progress=False).fit()


def test_precision_choice_logic():
    assert cpu_native_bf16({"avx2", "fma"}, "AVX2")[0] is False
    assert cpu_native_bf16({"avx512f", "avx512_bf16"}, "AVX512")[0] is True
    assert cpu_native_bf16({"amx_bf16", "amx_tile"}, "AVX512")[0] is True
    native, reason = cpu_native_bf16({"avx512f", "avx512bw"}, "AVX512")
    assert not native and "without amx_bf16/avx512_bf16" in reason
    assert resolve_precision("fp32", "cpu").dtype is None
    assert resolve_precision("bf16", "cpu").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 training needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", "cpu")
    auto = resolve_precision("auto", "cpu")
    assert auto.name in ("fp32", "bf16") and auto.reason
