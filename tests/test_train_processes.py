"""Training across processes: exact resume after SIGKILL, and DDP / FSDP over 2 CPU processes
(torchrun, gloo) against one process over the same global batch."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from latentforge.serialization import load_state_dict

WORKER = '''
import sys, time
import torch
from torch import nn

torch.set_num_threads(1)
from latentforge.serialization import save_state_dict
from latentforge.train import distributed
from latentforge.train.trainer import TrainConfig, Trainer


class Model(nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(dropout), nn.Linear(32, 1))

    def loss(self, batch):
        return {"loss": (self.net(batch["x"]) - batch["y"]).pow(2).mean()}


folder, delay, mode, steps = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
world = distributed.init_from_env()


def batch_fn(step):
    time.sleep(delay)
    x = torch.randn(8, 4)
    return {"x": x, "y": x.sum(1, keepdim=True).sin()}


if mode.endswith("-stream"):  # a stored data set read by StepBatches: each rank reads its own rows only
    from latentforge.train.batches import StepBatches

    mode = mode.removesuffix("-stream")
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(9))
    batch_fn = StepBatches({"x": x, "y": x.sum(1, keepdim=True).sin()}, batch_size=8, seed=0)


torch.manual_seed(0)
# dropout draws from the step's seed: exact resume must replay it; across processes it would
# differ from one process (each rank draws for its own rows), so the DDP check runs without it
model = Model(0.2 if mode == "single" else 0.0)
cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-2, warmup=2, log_every=5, ckpt_every=5, precision="fp32",
                  ema_decay=0.9 if mode == "single" else 0.0, distributed="fsdp" if mode == "fsdp" else "ddp",
                  grad_clip=0.0, tensorboard=False)
Trainer(model, cfg, folder, batch_fn, progress=False).fit()
if world.main:
    save_state_dict(dict(model.state_dict()), folder + "/final.safetensors")
'''


@pytest.fixture()
def worker(tmp_path):
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def _run(worker, folder, *, delay=0.0, mode="single", steps=30, procs=1):
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] \
        if procs > 1 else [sys.executable]
    return subprocess.run([*launch, str(worker), str(folder), str(delay), mode, str(steps)], env=_env(),
                          capture_output=True, text=True, timeout=300)


def _same(a, b, exact=True):
    sa, sb = load_state_dict(a), load_state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        if exact:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(worker, tmp_path):
    whole = tmp_path / "whole"
    done = _run(worker, whole)
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(worker), str(killed), "0.1", "single", "30"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "ckpt-00000010").is_dir():
        assert time.time() < deadline and proc.poll() is None, "the worker never reached step 10"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.safetensors").exists()
    resumed = _run(worker, killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from ckpt-0000001" in resumed.stderr
    _same(whole / "final.safetensors", killed / "final.safetensors", exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp", "ddp-stream"])
def test_two_processes_match_one_over_the_same_global_batch(worker, tmp_path, mode):
    stream = "-stream" if mode.endswith("-stream") else ""
    one = _run(worker, tmp_path / "one", mode="ddp" + stream, steps=10)
    assert one.returncode == 0, one.stderr
    two = _run(worker, tmp_path / "two", mode=mode, steps=10, procs=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"{mode.removesuffix('-stream').upper()} over 2 processes, 4 examples each per step" in two.stderr
    _same(tmp_path / "one" / "final.safetensors", tmp_path / "two" / "final.safetensors", exact=False)
