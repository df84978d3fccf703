"""Training curves of a run's stages, from their log.jsonl files."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from latentforge.atomic import atomic_path  # noqa: E402
from latentforge.train.log import read_jsonl  # noqa: E402


def plot_curves(logs: dict[str, str | os.PathLike], path: str | os.PathLike,
                keys: dict[str, list[str]] | None = None) -> bool:
    """One panel per stage, one line per logged key; returns False when no log has records."""
    series = {stage: read_jsonl(p) for stage, p in logs.items()}
    series = {s: r for s, r in series.items() if r}
    if not series:
        return False
    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 3.6), squeeze=False)
    for ax, (stage, records) in zip(axes[0], series.items()):
        wanted = (keys or {}).get(stage) or ["loss"]
        steps = [r["step"] for r in records]
        for key in wanted:
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                ax.plot(steps, values, label=key)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True
