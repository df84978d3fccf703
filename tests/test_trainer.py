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
    assert cpu_native_bf16({"avx512f", "avx512_bf16"}, "AVX512", onednn_isa="")[0] is True  # "": ignore the env
    assert cpu_native_bf16({"amx_bf16", "amx_tile"}, "AVX512", onednn_isa="")[0] is True
    # a oneDNN cap below bf16 (emulating an AVX2 machine) wins over the flags; a cap above it does not
    native, reason = cpu_native_bf16({"avx512f", "avx512_bf16"}, "AVX2", onednn_isa="avx2")
    assert not native and "ONEDNN_MAX_CPU_ISA=AVX2" in reason
    assert cpu_native_bf16({"amx_bf16"}, "AVX512", onednn_isa="avx512_core_amx")[0] is True
    native, reason = cpu_native_bf16({"avx512f", "avx512bw"}, "AVX512", onednn_isa="")
    assert not native and "without amx_bf16/avx512_bf16" in reason
    assert resolve_precision("fp32", "cpu").dtype is None
    assert resolve_precision("bf16", "cpu").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 training needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", "cpu")
    auto = resolve_precision("auto", "cpu")
    assert auto.name in ("fp32", "bf16") and auto.reason


# --- issue 6: EMA, accumulation, FLOPs, compile, anomaly mode -----------------------------------

class Deterministic(nn.Module):
    """No dropout: the same data give the same gradients however the batch is cut."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss(self, batch):
        return {"loss": (self.net(batch["x"]) - batch["y"]).pow(2).mean()}


def test_ema_known_answer():
    from latentforge.train.ema import EMA, ema_decay_at

    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999
    model = nn.Linear(2, 1)
    ema = EMA(model, 0.5)
    start = model.weight.detach().clone()
    expected = start.clone()
    for step in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model, step)
        d = ema_decay_at(step, 0.5)
        expected = d * expected + (1 - d) * model.weight.detach()
    torch.testing.assert_close(ema.shadow["weight"], expected)
    ema.copy_to(model)
    torch.testing.assert_close(model.weight.detach(), expected)
    with pytest.raises(ValueError, match="EMA decay must be in"):
        EMA(model, 1.0)


def test_ema_weights_are_what_training_leaves_and_resume_keeps_them(tmp_path):
    cfg = TrainConfig(steps=40, lr=1e-2, warmup=2, log_every=10, ckpt_every=20, precision="fp32", ema_decay=0.9)
    torch.manual_seed(0)
    whole = Deterministic()
    Trainer(whole, cfg, tmp_path / "a", batch_fn, progress=False).fit()
    torch.manual_seed(0)
    raw = Deterministic()
    Trainer(raw, TrainConfig(**{**vars(cfg), "ema_decay": 0.0}), tmp_path / "c", batch_fn, progress=False).fit()
    assert not torch.equal(whole.net[0].weight, raw.net[0].weight)  # the average, not the last step

    def dies_at_20(step):
        if step == 20:
            raise Killed
        return batch_fn(step)

    torch.manual_seed(0)
    with pytest.raises(Killed):
        Trainer(Deterministic(), cfg, tmp_path / "b", dies_at_20, progress=False).fit()
    resumed = Deterministic()
    Trainer(resumed, cfg, tmp_path / "b", batch_fn, progress=False).fit()
    for p, q in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    results = []
    for accumulate in (1, 4):
        torch.manual_seed(0)
        model = Deterministic()
        cfg = TrainConfig(steps=10, lr=1e-2, warmup=1, precision="fp32", accumulate=accumulate, grad_clip=0.0)
        Trainer(model, cfg, tmp_path / str(accumulate), batch_fn, progress=False).fit()
        results.append(model)
    for p, q in zip(results[0].parameters(), results[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not split into accumulate=3"):
        TrainConfig(batch_size=8, accumulate=3)


def test_flops_throughput_and_tokens_are_logged(tmp_path):
    class TwoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"grid": (2, 3)})()  # 6 tokens a sample, as a generator says
            self.a, self.b = nn.Linear(64, 32, bias=False), nn.Linear(32, 1, bias=False)

        def loss(self, batch):
            return {"loss": self.b(torch.relu(self.a(batch["x"]))).pow(2).mean()}

    def wide(step):
        return {"x": torch.randn(8, 64)}

    cfg = TrainConfig(steps=4, warmup=1, log_every=2, precision="fp32")
    trainer = Trainer(TwoLayers(), cfg, tmp_path, wide, progress=False)
    trainer.fit()
    # forward 2*8*(64*32 + 32); backward: both weight gradients, and the input gradient of the
    # second layer only (the data need none)
    assert trainer.flops_per_step == 2 * 8 * (64 * 32 + 32) + 2 * 8 * (64 * 32 + 32) + 2 * 8 * 32
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert record["tokens_per_s"] == pytest.approx(record["samples_per_s"] * 6)
    assert record["flops_per_s"] == pytest.approx(trainer.flops_per_step / record["sec_per_step"])
    assert json.loads((tmp_path / "train_info.json").read_text())["flops_per_step"] == trainer.flops_per_step


def test_tensorboard_event_files_when_installed(tmp_path):
    cfg = TrainConfig(steps=4, warmup=1, log_every=2, precision="fp32")
    Trainer(Deterministic(), cfg, tmp_path, batch_fn, progress=False).fit()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_compile_trains_like_eager_or_says_why_not(tmp_path, capsys):
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Deterministic()
        cfg = TrainConfig(steps=6, lr=1e-2, warmup=1, precision="fp32", compile=compiled)
        Trainer(model, cfg, tmp_path / str(compiled), batch_fn, progress=False).fit()
        results.append(model)
    err = capsys.readouterr().err
    assert "torch.compile: compiled" in err or "torch.compile unavailable here, training eagerly" in err
    for p, q in zip(results[0].parameters(), results[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_compile_falls_back_with_a_message(tmp_path, capsys, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    cfg = TrainConfig(steps=2, warmup=1, precision="fp32", compile=True)
    Trainer(Deterministic(), cfg, tmp_path, batch_fn, progress=False).fit()
    assert "torch.compile unavailable here, training eagerly (RuntimeError: no C++ compiler found)" in \
        capsys.readouterr().err


def test_anomaly_mode_names_the_operation(tmp_path):
    class SqrtOfNegative(Deterministic):
        def loss(self, batch):
            return {"loss": (self.net(batch["x"]) - 100).sqrt().mean()}

    cfg = TrainConfig(steps=2, warmup=1, precision="fp32", detect_anomaly=True)
    with pytest.raises(RuntimeError, match="SqrtBackward0"):
        Trainer(SqrtOfNegative(), cfg, tmp_path, batch_fn, progress=False).fit()
