"""What the video benchmark scripts share (long_video.py, video_inpainting.py): a short training loop,
a cache of trained stages keyed by their settings, a stage timer, Moving Shapes rows and the clip <->
model-tensor conversions.

    info = cached(cache_dir, "tokenizer", settings_dict, model, lambda m: fit(m, loss_fn, steps, lr))

Trained weights are cached as safetensors beside a JSON of the key and what training reported, so
a second call with the same settings loads them and only re-measures; never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from latentforge.atomic import write_json
from latentforge.data.moving_shapes import MovingShapesConfig, moving_shapes_rows
from latentforge.modalities.video import VideoModality
from latentforge.serialization import load_state_dict, save_state_dict


def moving_shapes(size: int, frames: int, max_objects: int, seed: int, split: str, n: int) -> dict[str, np.ndarray]:
    """Rows 0..n-1 of a Moving Shapes split (1..max_objects objects): clips and their answers."""
    cfg = MovingShapesConfig(size=size, frames=frames, min_objects=1, max_objects=max_objects,
                             train_size=max(n, 1), val_size=max(n, 1), seed=seed)
    return moving_shapes_rows(cfg, split, range(n))


class Laps:
    """Wall-clock seconds per stage: `lap(name)` closes the stage that ran since the previous call."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._tick = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._tick, 1)
        self._tick = now
        print(f"[{name}] {self.timings[name]:.0f} s", flush=True)


def to_model(clips: np.ndarray) -> Tensor:
    return VideoModality(clips.shape[1], clips.shape[2]).to_model(clips)  # [N, 3, T, S, S] in [-1, 1]


def to_clips(x: Tensor) -> np.ndarray:
    return VideoModality(x.shape[2], x.shape[3]).from_model(x)  # uint8 [N, T, S, S, 3]


def fit(model: nn.Module, loss_fn: Callable[[torch.Generator], Tensor], steps: int, lr: float,
        warmup: int = 30, clip: float = 1.0) -> dict[str, float]:
    """AdamW with linear warmup then cosine decay to lr/10; loss_fn draws its batch from the generator
    it is given, the model's own random draws (masks, dropped conditions) come from the global seed."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * step / max(steps, 1)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        loss = loss_fn(g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    tail = losses[-max(1, steps // 10):]
    return {"steps": steps, "seconds": time.perf_counter() - start, "final_loss": float(np.mean(tail))}


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached(cache: Path, name: str, key: dict, model: nn.Module, train: Callable[[nn.Module], dict]) -> dict:
    """Train `model` (train(model) -> info) or load its weights from a previous run with the same key."""
    path = cache / f"{name}-{digest(key)}.safetensors"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        model.load_state_dict(load_state_dict(path))
        model.eval()
        return {**json.loads(meta.read_text())["info"], "cached": True}
    info = train(model)
    save_state_dict(model.state_dict(), path)
    write_json(meta, {"key": key, "info": info})
    print(f"  {name}: {info}", flush=True)
    return info
