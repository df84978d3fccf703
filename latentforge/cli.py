"""`latentforge` command line: run | train | sample | eval | report | data.

    latentforge run configs/shapes_sg2im.yaml [--quick] [--restart] [key.path=value ...]
    torchrun --nproc_per_node 2 -m latentforge.cli train configs/shapes_sg2im.yaml
    latentforge sample runs/demo --graph g.json --n 8 --out x.png
    latentforge eval runs/demo [--metrics fid,kid,pr] [--n 1000] [--seed 0]
    latentforge eval train-probe shapes
    latentforge report runs/demo
    latentforge data shapes --n 16 --out grid.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latentforge.config import ConfigError


def _run(args: argparse.Namespace) -> int:
    from latentforge.recipes import STAGES, Run, load_recipe, remove_run
    from latentforge.train import distributed

    world = distributed.init_from_env()  # under torchrun: join the process group
    cfg = load_recipe(args.config, args.overrides, quick=args.quick)
    if args.restart and world.main:
        remove_run(cfg.run_dir)
    distributed.barrier()
    stages = STAGES[: STAGES.index("generator") + 1] if args.command == "train" else STAGES
    metrics = Run(cfg, progress=not args.no_progress).run(stages)
    if world.main:
        _print_metrics(metrics)
        print(f"run folder: {cfg.run_dir}" if args.command == "train" else f"report: {cfg.run_dir / 'report.html'}")
    return 0


def _print_metrics(metrics: dict) -> None:
    def shown(values: dict) -> str:
        return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in values.items() if not isinstance(v, (dict, list)))

    for stage in ("tokenizer", "generator"):
        if stage in metrics:
            print(f"{stage}: {shown(metrics[stage])}")
    dist = metrics.get("distribution")
    if dist:
        f = dist["features"]
        print(f"distribution ({dist['n']} images a set, seed {dist['seed']}, {f['name']} features {f['hash']}):")
        sets = ([("model", dist["model"])] if "model" in dist else []) + list(dist.get("baselines", {}).items())
        for name, values in sets:
            print(f"  {name}: {shown(values)}")
    skipped = metrics.get("eval", {}).get("skipped")
    if skipped:
        print("not measured: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))


def _recipe_of(run_dir: str):
    from latentforge.config import from_dict, load_yaml
    from latentforge.recipes import RecipeConfig, Run, link

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder ({path} is missing)")
    cfg = link(from_dict(RecipeConfig, load_yaml(path)))
    # the folder may have been moved: trust its location over the recorded one
    cfg.out_dir, cfg.name = str(Path(run_dir).parent), Path(run_dir).name
    return Run(cfg)


def _eval(args: argparse.Namespace) -> int:
    import dataclasses

    from latentforge.atomic import write_json
    from latentforge.eval.run_metrics import evaluate_run
    from latentforge.recipes import METRIC_GROUPS
    from latentforge.report.html import write_report

    if args.run == "train-probe":
        return _train_probe(args)
    if args.rest:
        raise ConfigError(f"eval takes one run folder, got also: {' '.join(args.rest)}")
    run = _recipe_of(args.run)
    run.progress = run.dataset.progress = not args.no_progress
    if run.cfg.generator is not None and not (run.dir / "samples.npz").exists():
        run.stage_sample()
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else list(METRIC_GROUPS)
    changes = {"metrics": tuple(metrics)}
    for key in ("n", "seed", "inception_weights"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    try:
        ecfg = dataclasses.replace(run.cfg.eval, **changes)
    except ValueError as err:
        raise ConfigError(f"eval: {err}") from None
    result = evaluate_run(run, ecfg, progress=run.progress)
    write_json(run.dir / "metrics.json", result)
    write_report(run.dir)
    _print_metrics(result)
    print(f"metrics: {run.dir / 'metrics.json'}\nreport: {run.dir / 'report.html'}")
    return 0


def _train_probe(args: argparse.Namespace) -> int:
    import shutil

    from latentforge.config import apply_overrides, from_dict
    from latentforge.eval.probe import (
        ProbeTrainConfig,
        probe_dir,
        probe_info,
        train_probe,
    )
    from latentforge.registry import lookup, names

    if not args.rest:
        raise ConfigError(f"eval train-probe needs a data set: one of {', '.join(names('dataset'))}")
    name, overrides = args.rest[0], args.rest[1:]
    try:
        config_cls = lookup("dataset", name)[0]
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    data_cfg = from_dict(config_cls, apply_overrides({"name": name}, overrides), path="data")
    folder = probe_dir(data_cfg)
    if args.force and folder.exists():
        shutil.rmtree(folder)
    if (folder / "model.safetensors").exists():
        print(f"probe already trained: {folder} (--force retrains it)")
    else:
        train = ProbeTrainConfig(steps=args.steps) if args.steps else ProbeTrainConfig()
        try:
            train_probe(data_cfg, train, progress=not args.no_progress)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    info = probe_info(folder)
    accuracy = ", ".join(f"{h} {v:.2%}" for h, v in info["test_accuracy"].items())
    print(f"{name} probe in {folder}\ntest accuracy ({info['test_images']} images): {accuracy}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from latentforge.report.html import write_report

    print(write_report(args.run))
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from latentforge.data.shapes import SceneGraph, encode_graphs
    from latentforge.pipeline import Pipeline
    from latentforge.report.grids import save_captioned_grid

    run = _recipe_of(args.run)
    try:
        raw = json.loads(Path(args.graph).read_text())
    except FileNotFoundError:
        raise ConfigError(f"scene graph file not found: {args.graph}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{args.graph}: not valid JSON: {err}") from None
    raw_graphs = raw if isinstance(raw, list) else [raw]
    try:
        graphs = [SceneGraph.from_json(g) for g in raw_graphs]
    except ValueError as err:
        raise ConfigError(f"{args.graph}: {err}") from None
    max_objects = run.cfg.data.max_objects
    too_big = [i for i, g in enumerate(graphs) if len(g.objects) > max_objects]
    if too_big:
        raise ConfigError(f"{args.graph}: graph {too_big[0]} has {len(graphs[too_big[0]].objects)} objects; "
                          f"this run was trained with at most {max_objects}")
    repeated = [g for g in graphs for _ in range(args.n)]
    cond = encode_graphs(repeated, max_objects)
    pipe = Pipeline.from_run(run.dir, str(run.device))
    s = run.cfg.sample
    images = pipe.generate(cond, generator=torch.Generator().manual_seed(args.seed),
                           temperature=args.temperature if args.temperature is not None else s.temperature,
                           top_k=args.top_k if args.top_k is not None else s.top_k,
                           top_p=args.top_p if args.top_p is not None else s.top_p,
                           cfg_scale=args.cfg_scale if args.cfg_scale is not None else s.cfg_scale)
    out = Path(args.out)
    save_captioned_grid(images, [g.caption() for g in repeated], out, ncols=min(args.n, 8))
    print(f"wrote {len(images)} samples to {out}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from latentforge.data.shapes import ShapesConfig, render_batch, sample_scene
    from latentforge.report.grids import save_captioned_grid

    cfg = ShapesConfig(size=args.size, max_objects=args.max_objects, seed=args.seed)
    scenes = [sample_scene(cfg, args.split, i) for i in range(args.n)]
    images = render_batch(cfg, args.split, range(args.n))
    save_captioned_grid(images, [s.caption() for s in scenes], args.out,
                        title=f"Shapes, {args.split} split, seed {args.seed}")
    print(f"wrote {args.n} scenes to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentforge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    for name, text in (("run", "run a recipe end to end (stages are cached in runs/<name>/)"),
                       ("train", "only the training stages of a recipe (data, tokenizer, encode, generator); "
                                 "under `torchrun --nproc_per_node N -m latentforge.cli train ...` data-parallel")):
        r = sub.add_parser(name, help=text)
        r.add_argument("config", help="recipe YAML, e.g. configs/shapes_sg2im.yaml")
        r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. generator_train.steps=500")
        r.add_argument("--quick", action="store_true", help="apply the recipe's `quick` overrides (a smoke run)")
        r.add_argument("--restart", action="store_true", help="delete the run folder first")
        r.add_argument("--no-progress", action="store_true", help="no progress bars")
        r.set_defaults(func=_run)

    s = sub.add_parser("sample", help="sample images for scene graphs given in a JSON file")
    s.add_argument("run", help="run folder, e.g. runs/demo")
    s.add_argument("--graph", required=True, help="JSON scene graph (or a list of them); format in README")
    s.add_argument("--n", type=int, default=8, help="samples per graph")
    s.add_argument("--out", default="samples.png")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--cfg-scale", type=float)
    s.set_defaults(func=_sample)

    e = sub.add_parser("eval", help="recompute metrics.json and the report of a run; "
                       "`eval train-probe DATASET` trains a data set's probe network",
                       description="latentforge eval RUN [--metrics fid,kid,pr,...] [--n N] [--seed S]\n"
                       "latentforge eval train-probe DATASET [key=value ...] [--steps N] [--force]",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run", help="run folder, e.g. runs/demo; or `train-probe`")
    e.add_argument("rest", nargs="*", help="train-probe: the data set and its config overrides (size=64)")
    e.add_argument("--metrics", help="comma-separated groups: recon, val, adherence, diversity, speed, "
                   "fid, kid, pr (default: all)")
    e.add_argument("--n", type=int, help="images per set for fid / kid / pr (default: eval.n of the run)")
    e.add_argument("--seed", type=int, help="seed of the samples and subsets (default: eval.seed)")
    e.add_argument("--inception-weights", help="Inception-v3 weights file (pytorch-fid or torchvision "
                   "format): standard FID instead of the probe's")
    e.add_argument("--steps", type=int, help="train-probe: training steps (default 2000)")
    e.add_argument("--force", action="store_true", help="train-probe: retrain even if cached")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_eval)

    rep = sub.add_parser("report", help="rewrite report.html of a run")
    rep.add_argument("run")
    rep.set_defaults(func=_report)

    d = sub.add_parser("data", help="look at a data set")
    dsub = d.add_subparsers(dest="dataset", required=True)
    sh = dsub.add_parser("shapes", help="write a labelled grid of Shapes scenes")
    sh.add_argument("--n", type=int, default=16)
    sh.add_argument("--out", default="shapes.png")
    sh.add_argument("--split", default="train", choices=["train", "val", "test"])
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--size", type=int, default=32)
    sh.add_argument("--max-objects", type=int, default=3)
    sh.set_defaults(func=_data)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after flags (`run cfg.yaml --quick a.b=1`), which argparse leaves over
    if args.command in ("run", "train"):
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if e not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"latentforge: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
