"""`report.html`: one static page per run, readable from disk with no network.

The page knows no modality: the stages list the preview files they wrote (`sample_info.json`'s
`previews`, `metrics.json`'s `eval.previews`: PNG grids for images, an animated GIF and a
filmstrip for motion) and the page embeds them as data URIs, so it survives being moved or mailed.
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
figure.clip { display: inline-block; margin: 4px 8px 4px 0; } figure.clip figcaption { font-size: 0.8em; }
pre { background: #f6f6f6; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }
"""


_MIME = {".png": "image/png", ".gif": "image/gif", ".webp": "image/webp", ".jpg": "image/jpeg"}
_AUDIO = {".wav": "audio/wav"}


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return f"<p><em>{html.escape(alt)}: not produced</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    if path.suffix.lower() in _AUDIO:  # a clip to play, named beside its player
        return (f'<figure class="clip"><audio controls preload="none" src="data:{_AUDIO[path.suffix.lower()]};'
                f'base64,{data}"></audio><figcaption>{html.escape(alt)}</figcaption></figure>')
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        return f"<p><em>{html.escape(alt)}: {html.escape(path.name)} is not a picture</em></p>"
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


def _previews(run: Path, names: list[str] | None, fallback: str) -> str:
    """The listed preview files of a stage (or the one file older runs wrote), each named by its
    file: samples, real, samples strip, ..."""
    return "\n".join(_img(run / name, Path(name).stem.replace("_", " ")) for name in (names or [fallback]))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
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


# how to read each distribution metric: which way is better
_DIRECTION = {"fid": "lower", "kid": "lower", "precision": "higher", "recall": "higher",
              "density": "≈ 1", "coverage": "higher", "nearest_train_ratio": "≈ 1 (≪ 1: copies)"}


def distribution_table(dist: dict[str, Any]) -> str:
    """The model's FID/KID/PR beside the floor (real vs real) and the trivial baselines."""
    columns = ([("model", dist["model"])] if "model" in dist else []) + list(dist.get("baselines", {}).items())
    keys = [k for k in _DIRECTION if any(k in values for _, values in columns)]
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    rows = [f"<tr><th>metric</th>{head}<th>better</th></tr>"]
    for k in keys:
        cells = "".join(f'<td class="num">{_fmt(values[k]) if k in values else ""}'
                        f'{" ± " + _fmt(values["kid_std"]) if k == "kid" and values.get("kid_std") else ""}</td>'
                        for _, values in columns)
        rows.append(f'<tr id="dist-{k}"><td>{k}</td>{cells}<td>{_DIRECTION[k]}</td></tr>')
    f = dist["features"]
    extra = ""
    if f.get("test_accuracy"):
        extra = "; the probe's own test accuracy: " + ", ".join(f"{h} {v:.1%}" for h, v in f["test_accuracy"].items())
    noun = dist.get("noun", "images")
    note = (f"<p>{dist['n']} {noun} a set, seed {dist['seed']}, against the first {dist['n']} {noun} of the "
            f"{html.escape(dist['reference'])}. Features: {html.escape(f['name'])} "
            f"(<code>{html.escape(f['source'])}</code>, sha256 {html.escape(f['hash'])}){html.escape(extra)}. "
            "<em>real (test split)</em> is the floor a perfect model reaches at this N; the other "
            "columns are trivial models any trained one must beat (per-pixel or per-frame Gaussians, "
            f"the mean pose); <em>train copies</em> is a model that memorised its training {noun}, which "
            "is why nearest_train_ratio sits beside FID.</p>")
    return "<table>" + "\n".join(rows) + "</table>" + note


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
               f"<p>{html.escape(info.get('shows', ''))}</p>\n"
               + _previews(run, info.get("previews"), "samples.png"))
    recon_files = metrics.get("eval", {}).get("previews", {}).get("reconstructions")
    tables = {k: v for k, v in metrics.items() if k in ("tokenizer", "generator")}
    dist = metrics.get("distribution")
    distribution = (distribution_table(dist) if dist else
                    "<p><em>no FID / KID / precision-recall: run <code>latentforge eval "
                    f"{html.escape(str(run))}</code></em></p>")
    left_out = metrics.get("eval", {}).get("skipped", {})
    skipped = ("<p>Not measured: " + "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in left_out.items())
               + "</p>") if left_out else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>latentforge run: {html.escape(run.name)}</title>
<style>{CSS}</style></head><body>
<h1>latentforge run <code>{html.escape(run.name)}</code></h1>
<h2>Metrics</h2>
{metrics_table(tables) if tables else "<p><em>no metrics yet: run the eval stage</em></p>"}
{skipped}
<h2>Sample quality</h2>
{distribution}
<h2>Samples</h2>
{samples}
<h2>Reconstructions</h2>
{_previews(run, recon_files, "reconstructions.png")}
<h2>Training</h2>
<table><tr><th>stage</th><th>parameters</th><th>precision</th><th>why</th></tr>{train_rows}</table>
{_img(run / "curves.png", "training curves")}
<h2>Config</h2>
<pre>{html.escape(config)}</pre>
</body></html>
"""
    write_text(run / "report.html", page)
    return run / "report.html"
