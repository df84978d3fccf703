"""Paper-comparable image metrics: latentforge's FID, sFID and Inception Score against torch-fidelity
and clean-fid, on the same images and the same Inception weights.

No Inception weights may be downloaded here, so every library reads one file of *randomly
initialised* weights in pytorch-fid's layout (He-initialised convolutions, random batch-norm
statistics: tests/test_paper_metrics.py's `random_fid_inception`). The numbers are therefore not
ImageNet-Inception FIDs; what is measured is whether the implementations agree on the same
network and images, convention by convention:
- "tf1" (ours) vs torch-fidelity: TF1 bilinear resize; FID, IS (its `logits_unbiased`, 10 splits
  after its RandomState(2020) shuffle) and sFID (torch-fidelity's network, Mixed_6d's first 7
  channels read by a hook, and the TTUR/ADM Fréchet code as clean-fid ships it, scipy's sqrtm);
- "clean-fid" (ours) vs clean-fid "clean": PIL bicubic resize on float32, (x - 128) / 128;
- "pytorch-fid" (ours, the default) vs clean-fid "legacy_pytorch": torch bilinear;
- an ADM reference batch written with our statistics (tf1), read back and scored against.
Images: `--n` 64-px crops of the photos data set's val photographs (the "real" set) and `--n` of
its unseen test photographs (the "generated" set), so FID is well above zero. clean-fid's
resizers run on the arrays as its ResizeDataset would run them on lossless PNGs of them.

    python benchmarks/paper_metrics.py [--n 100] [--size 64] [--threads 1]

Writes benchmarks/results/paper_metrics.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# the reference constructions (torchvision stand-in, weight file reading) are the agreement tests'
from test_paper_metrics import (  # noqa: E402
    clean_fid_features,
    random_fid_inception,
    reference_libraries,
    torch_fidelity_outputs,
)

from latentforge.atomic import write_json, write_text  # noqa: E402
from latentforge.data.base import build_dataset  # noqa: E402
from latentforge.data.sets import PhotosDataConfig  # noqa: E402
from latentforge.eval.distribution import fid  # noqa: E402
from latentforge.eval.inception import InceptionFeatures  # noqa: E402
from latentforge.eval.inception_score import inception_score  # noqa: E402
from latentforge.eval.reference_batch import (  # noqa: E402
    evaluate_against_reference,
    read_reference_batch,
    write_reference_batch,
)


def _say(msg: str) -> None:
    print(f"[paper_metrics] {msg}", flush=True)


def _timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _row(metric: str, convention: str, ours: float, ref: float, reference: str) -> dict[str, Any]:
    return {"metric": metric, "convention": convention, "reference": reference, "ours": ours, "reference_value": ref,
            "abs_diff": abs(ours - ref), "rel_diff": abs(ours - ref) / max(abs(ref), 1e-300)}


def _feature_gap(ours: torch.Tensor, ref: np.ndarray) -> dict[str, float]:
    diff = np.abs(ours.numpy() - ref)
    scale = float(np.abs(ref).mean())
    return {"max_abs": float(diff.max()), "max_abs_over_mean_abs": float(diff.max()) / scale, "mean_abs_value": scale}


def photos(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = build_dataset(PhotosDataConfig(size=size, train_size=8, val_size=n, seed=seed))
    return data.split("val")["images"][:n], data.split("test")["images"][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="images per set (real = val crops, generated = test crops)")
    ap.add_argument("--size", type=int, default=64, help="crop size in pixels (32 or 64)")
    ap.add_argument("--seed", type=int, default=0, help="crops and random Inception weights")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/paper_metrics.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n

    real, fake = photos(n, args.size, args.seed)
    images = np.concatenate([real, fake])  # [2n, S, S, 3] uint8
    _say(f"{len(real)} real + {len(fake)} generated {args.size}px photo crops")
    reference_libraries()
    work = Path(tempfile.mkdtemp(prefix="paper_metrics_"))
    weights = work / "pt_inception-random.pth"
    torch.save(random_fid_inception(args.seed).state_dict(), weights)

    rows: list[dict[str, Any]] = []
    times: dict[str, float] = {}
    gaps: dict[str, dict[str, float]] = {}
    ours_fid: dict[str, float] = {}

    # ---- tf1 vs torch-fidelity: FID, IS, sFID
    _say("ours (tf1) ...")
    ours, t = _timed(InceptionFeatures.from_file(weights, resize="tf1").outputs, images)
    times["ours tf1"] = t / len(images)
    _say("torch-fidelity ...")
    tf_out, t = _timed(torch_fidelity_outputs, weights, images)
    times["torch-fidelity"] = t / len(images)
    ref = reference_libraries()
    gaps["pool (tf1 vs torch-fidelity)"] = _feature_gap(ours.pool, tf_out["pool"])
    gaps["spatial (tf1 vs torch-fidelity)"] = _feature_gap(ours.spatial, tf_out["spatial"])
    gaps["logits_unbiased (tf1 vs torch-fidelity)"] = _feature_gap(ours.logits_unbiased, tf_out["logits_unbiased"])

    _say("Fréchet distances (2048-dim square roots: slow on one core) ...")
    ours_fid["tf1"] = fid(ours.pool[:n], ours.pool[n:])
    stats = [ref.tf_fid.fid_features_to_statistics(torch.from_numpy(f)) for f in (tf_out["pool"][:n],
                                                                                    tf_out["pool"][n:])]
    rows.append(_row("FID", "tf1", ours_fid["tf1"],
                     ref.tf_fid.fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"],
                     "torch-fidelity"))
    ours_is = inception_score(ours.logits_unbiased[n:], splits=10, shuffle_seed=2020)
    tf_is = ref.tf_isc.isc_features_to_metric(torch.from_numpy(tf_out["logits_unbiased"][n:]), splits=10)
    rows.append(_row("IS", "tf1, 10 splits, shuffle 2020", ours_is["is"], tf_is["inception_score_mean"],
                     "torch-fidelity"))
    rows.append(_row("IS std", "tf1, 10 splits, shuffle 2020", ours_is["is_std"], tf_is["inception_score_std"],
                     "torch-fidelity"))
    # the random network's IS sits near 1 (its docstring), so the IS maths is also compared where IS is large
    spread = torch.randn(2 * n, 1008, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64) * 4
    ours_spread = inception_score(spread, splits=10, shuffle_seed=2020)
    tf_spread = ref.tf_isc.isc_features_to_metric(spread, splits=10)
    rows.append(_row("IS", "logits N(0, 4^2), 10 splits", ours_spread["is"], tf_spread["inception_score_mean"],
                     "torch-fidelity (maths only)"))
    sa, sb = tf_out["spatial"][:n], tf_out["spatial"][n:]
    sfid_ref = float(ref.cf_fid.frechet_distance(sa.mean(0), np.cov(sa, rowvar=False), sb.mean(0),
                                                 np.cov(sb, rowvar=False)))
    sfid_ours = fid(ours.spatial[:n], ours.spatial[n:])
    rows.append(_row("sFID", "tf1", sfid_ours, sfid_ref,
                     "torch-fidelity network + ADM/TTUR Fréchet (scipy sqrtm)"))

    # ---- clean-fid: "clean" and "legacy_pytorch"
    for mode, resize in (("clean", "clean-fid"), ("legacy_pytorch", "pytorch-fid")):
        _say(f"ours ({resize}) vs clean-fid {mode} ...")
        got, t = _timed(InceptionFeatures.from_file(weights, resize=resize), images)
        times[f"ours {resize}"] = t / len(images)
        want, t = _timed(clean_fid_features, weights, images, mode)
        times[f"clean-fid {mode}"] = t / len(images)
        gaps[f"pool ({resize} vs clean-fid {mode})"] = _feature_gap(got, want)
        ours_fid[resize] = fid(got[:n], got[n:])
        rows.append(_row("FID", resize, ours_fid[resize], float(ref.cf_fid.fid_from_feats(want[:n], want[n:])),
                         f"clean-fid {mode}"))

    # ---- ADM reference batch: write (with our tf1 statistics), read, score the generated set against it
    _say("ADM reference batch round trip ...")
    features = InceptionFeatures.from_file(weights, resize="tf1")
    path = work / "ref_batch.npz"
    _, t_write = _timed(write_reference_batch, path, real, features)
    batch = read_reference_batch(path)
    samples = type(ours)(ours.pool[n:], ours.spatial[n:], ours.logits[n:], ours.logits_unbiased[n:])
    scores, t_eval = _timed(evaluate_against_reference, features, batch, samples)
    adm = {"fid": scores["fid"], "sfid": scores["sfid"], "is": scores["is"],
           "reference_statistics": scores["reference_statistics"], "file_mb": path.stat().st_size / 2**20,
           "write_s": t_write, "evaluate_s": t_eval,
           "fid_vs_features_rel": abs(scores["fid"] - ours_fid["tf1"]) / ours_fid["tf1"],
           "sfid_vs_features_rel": abs(scores["sfid"] - sfid_ours) / sfid_ours}

    result = {"n_per_set": n, "size": args.size, "seed": args.seed, "threads": args.threads,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "weights": "random (He init, random BN stats), pytorch-fid layout, 1008 classes",
              "rows": rows, "feature_gaps": gaps, "seconds_per_image": times, "fid_by_convention": ours_fid,
              "adm_reference_batch": adm}
    out = Path(args.out)
    write_json(out, result)
    write_text(out.with_suffix(".md"), markdown(result))
    _say(f"wrote {out} and {out.with_suffix('.md')}")
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Same random Inception weights file, {r['n_per_set']} + {r['n_per_set']} {r['size']}px photo crops, "
             f"{r['threads']} thread(s).", "",
             "| metric | convention | reference | ours | reference value | abs diff | rel diff |",
             "|---|---|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['metric']} | {row['convention']} | {row['reference']} | {row['ours']:.6g} | "
                     f"{row['reference_value']:.6g} | {row['abs_diff']:.2e} | {row['rel_diff']:.2e} |")
    lines += ["", "| features | max abs diff | max abs diff / mean abs value | mean abs value |", "|---|---:|---:|---:|"]
    for name, g in r["feature_gaps"].items():
        lines.append(f"| {name} | {g['max_abs']:.2e} | {g['max_abs_over_mean_abs']:.2e} | {g['mean_abs_value']:.3g} |")
    lines += ["", "| network pass (resize included) | s / image |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["seconds_per_image"].items()]
    lines += ["", "FID of the same images by resize convention (ours): "
              + ", ".join(f"{k} {v:.4g}" for k, v in r["fid_by_convention"].items()), ""]
    a = r["adm_reference_batch"]
    lines.append(f"ADM reference batch (arr_0 + mu, sigma, mu_s, sigma_s; {a['file_mb']:.1f} MB): written in "
                 f"{a['write_s']:.1f} s (network pass included), read back and the generated set's features "
                 f"scored in {a['evaluate_s']:.1f} s with its "
                 f"{a['reference_statistics']} statistics: FID {a['fid']:.6g}, sFID {a['sfid']:.6g}, IS {a['is']:.5g} "
                 f"(rel. diff. to the features' FID {a['fid_vs_features_rel']:.1e}, sFID {a['sfid_vs_features_rel']:.1e}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
