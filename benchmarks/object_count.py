"""Adherence by object count on a trained Shapes run, past the counts it was trained on.

The run's generator draws scenes for fresh validation graphs of exactly k objects, k = 1 .. 6 (the
most a Shapes scene holds), whatever its data's `max_objects`; the scene parser scores them. Graphs
are sampled as the data set samples them (`sample_scene` with min = max = k), centres hidden, so the
layout is the model's own (with the recipe's layout options). Nothing is tuned for the larger counts.

    python benchmarks/object_count.py runs/demo [--graphs 100] [--out benchmarks/results/object_count.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentforge.atomic import write_json  # noqa: E402
from latentforge.data.shapes import MAX_OBJECTS, ShapesConfig, sample_scene  # noqa: E402
from latentforge.eval.shapes import scene_adherence  # noqa: E402
from latentforge.pipeline import Pipeline, sampling_options  # noqa: E402
from latentforge.recipes import Run, load_recipe  # noqa: E402

KEYS = ("scene_exact", "count_acc", "shape_acc", "color_acc", "size_acc", "relation_acc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--graphs", type=int, default=100, help="graphs per object count (2 samples each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/object_count.json")
    args = ap.parse_args()
    cfg = load_recipe(Path(args.run) / "config.yaml")
    run = Run(cfg, progress=False)
    pipe = Pipeline.from_run(args.run, run.modality)
    options = sampling_options(pipe.generator, cfg.sample)  # the run's own: CFG, temperature, top-k / top-p
    result = {"run": args.run, "trained_max_objects": cfg.data.max_objects, "graphs": args.graphs,
              "date": time.strftime("%Y-%m-%d"), "by_count": {}}
    for k in range(1, MAX_OBJECTS + 1):
        scenes = [sample_scene(ShapesConfig(min_objects=k, max_objects=k), "val", i) for i in range(args.graphs)]
        scenes = [s for s in scenes for _ in range(2)]
        raw = [s.without_positions().to_json() for s in scenes]
        rows = run.dataset.parse_conditions(raw, f"{k}-object graphs")
        t = time.perf_counter()
        try:
            samples, _ = pipe.sample(rows, len(scenes), seed=args.seed, dataset=run.dataset, options=options)
        except ValueError as err:  # a run from before any-size graphs has slots for its training count only
            print(f"{k} objects: refused ({err})")
            break
        scores = scene_adherence(samples, scenes)
        result["by_count"][k] = {**{key: scores[key] for key in KEYS}, "sample_s": time.perf_counter() - t}
        print(f"{k} objects: " + ", ".join(f"{key} {scores[key]:.3f}" for key in KEYS), flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
