"""`report.html`: one static page per run, readable from disk with no network.

Images are embedded as data URIs so the page survives being moved or mailed.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from latentforge.atomic import write_text
from latentforge.report.curves import plot_curves

# What the demo aims for (the foundation issue's targets); shown beside each value.
TARGETS = {
    ("tokenizer", "psnr"): (">=", 30.0),
    ("tokenizer", "codebook_usage"): (">=", 0.80),
    ("generator", "shape_acc"): (">=", 0.90),
    ("generator", "color_acc"): (">=", 0.90),
    ("generator", "size_acc"): (">=", 0.90),
    ("generator", "count_acc"): (">=", 0.95),
    ("generator", "relation_acc"): (">=", 0.85),
    ("generator", "scene_exact"): (">=", 0.60),
    ("generator", "diversity"): (">", 0.0),
}

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.92em; }
td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #11772d; } .fail { color: #b3261e; font-weight: bold; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }
"""


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return f"<p><em>{html.escape(alt)}: not produced</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = ["<tr><th>stage</th><th>metric</th><th>value</th><th>target</th></tr>"]
    for stage, values in metrics.items():
        for key, value in values.items():
            target = TARGETS.get((stage, key))
            cell = ""
            if target is not None and isinstance(value, (int, float)):
                op, bound = target
                ok = value >= bound if op == ">=" else value > bound
                cell = f'<span class="{"pass" if ok else "fail"}">{op} {bound:g} {"✓" if ok else "✗"}</span>'
            rows.append(f'<tr id="metric-{stage}-{key}"><td>{stage}</td><td>{key}</td>'
                        f'<td class="num">{_fmt(value)}</td><td>{cell}</td></tr>')
    return "<table>" + "\n".join(rows) + "</table>"


def write_report(run_dir: str | os.PathLike) -> Path:
    run = Path(run_dir)
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    plot_curves({"tokenizer": run / "tokenizer/train/log.jsonl", "generator": run / "generator/train/log.jsonl"},
                run / "curves.png",
                keys={"tokenizer": ["loss", "l2", "commitment", "codebook"], "generator": ["loss"]})
    infos = {s: json.loads((run / s / "train/train_info.json").read_text())
             for s in ("tokenizer", "generator") if (run / s / "train/train_info.json").exists()}
    train_rows = "".join(
        f"<tr><td>{s}</td><td class='num'>{i['parameters']:,}</td><td>{html.escape(i['precision'])}</td>"
        f"<td>{html.escape(i['precision_reason'])}</td></tr>" for s, i in infos.items())
    config = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
    info = json.loads((run / "sample_info.json").read_text()) if (run / "sample_info.json").exists() else None
    samples = ("<p><em>a tokenizer-only run: no generator, no samples</em></p>" if info is None else
               f"<p>{html.escape(info.get('shows', ''))}</p>\n" + _img(run / "samples.png", "samples"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>latentforge run: {html.escape(run.name)}</title>
<style>{CSS}</style></head><body>
<h1>latentforge run <code>{html.escape(run.name)}</code></h1>
<h2>Metrics</h2>
{_metrics_table(metrics) if metrics else "<p><em>no metrics yet: run the eval stage</em></p>"}
<h2>Samples</h2>
{samples}
<h2>Reconstructions</h2>
{_img(run / "reconstructions.png", "reconstructions")}
<h2>Training</h2>
<table><tr><th>stage</th><th>parameters</th><th>precision</th><th>why</th></tr>{train_rows}</table>
{_img(run / "curves.png", "training curves")}
<h2>Config</h2>
<pre>{html.escape(config)}</pre>
</body></html>
"""
    write_text(run / "report.html", page)
    return run / "report.html"
