"""Layout sampling options on a trained Shapes run: rules broken by the layouts, then adherence.

For the run's first `--graphs` validation graphs: how many of the data's placement rules
(`data.shapes.layout_violations`) the sampled layouts break with each option, and the scene parser's
scores of images drawn with each (2 per graph). Options: "plain" (as trained), "constrained"
(`layout_constrained`), "rejectK" (`layout_rejection: K`), "constrained+rejectK" (both). The images
are drawn with the run's sampling section (CFG scale, temperature, top-k / top-p) unless `--sample`
overrides some of its keys.

    python benchmarks/layout_sampling.py runs/demo [--graphs 200] [--options plain,constrained,reject16,constrained+reject16]
                                         [--sample '{"temperature": 1.0, "top_p": null}'] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentforge.atomic import write_json  # noqa: E402
from latentforge.data.shapes import layout_violations  # noqa: E402
from latentforge.eval.judges import shapes_judge  # noqa: E402
from latentforge.pipeline import Pipeline, condition_tensors, sampling_options  # noqa: E402
from latentforge.recipes import Run, load_recipe  # noqa: E402

KEYS = ("scene_exact", "count_acc", "shape_acc", "color_acc", "size_acc", "relation_acc",
        "scene_exact_1obj", "scene_exact_2obj", "scene_exact_3obj")


def configure(conditioner, option: str) -> None:
    conditioner.config.layout_constrained = "constrained" in option
    reject = [p for p in option.split("+") if p.startswith("reject")]
    conditioner.config.layout_rejection = int(reject[0][len("reject"):]) if reject else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--graphs", type=int, default=200)
    ap.add_argument("--options", default="plain,constrained,reject16,constrained+reject16")
    ap.add_argument("--sample", default="{}", help="JSON: keys of the run's sample section to override")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/layout_sampling.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_recipe(Path(args.run) / "config.yaml")
    run = Run(cfg, progress=False)
    pipe = Pipeline.from_run(args.run, run.modality)
    conditioner = pipe.generator.conditioner
    split = run.load_split("val")
    rows = {k: v[: args.graphs] for k, v in split.items() if k != "images"}
    cond = condition_tensors(run.dataset, run.dataset.for_sampling(rows), pipe.generator)
    conditioner.layout_critic = run.dataset.layout_critic()
    twice = {k: np.repeat(v, 2, axis=0) for k, v in rows.items()}
    real = np.repeat(split["images"][: args.graphs], 2, axis=0)
    options = sampling_options(pipe.generator, dataclasses.replace(cfg.sample, **json.loads(args.sample)))
    result = {"run": args.run, "graphs": args.graphs, "date": time.strftime("%Y-%m-%d"), "sampling": options,
              "options": {}}
    for option in args.options.split(","):
        configure(conditioner, option)
        xy = conditioner.sample_centres(cond, generator=torch.Generator().manual_seed(0))
        broken = layout_violations(cond, xy).float()
        t = time.perf_counter()
        samples, given = pipe.sample(twice, 2 * args.graphs, seed=0, dataset=run.dataset, options=options)
        scores = shapes_judge(run.dataset, samples, given, real)
        row = {"graphs_breaking_a_rule": float((broken > 0).float().mean()), "rules_broken_per_graph": float(broken.mean()),
               "sample_s": time.perf_counter() - t, **{k: scores[k] for k in KEYS if k in scores}}
        result["options"][option] = row
        print(option, {k: round(v, 3) for k, v in row.items()}, flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
