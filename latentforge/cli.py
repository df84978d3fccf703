"""`latentforge` command line: run | train | sample | eval | report | serve | convert | data.

    latentforge run configs/shapes_sg2im.yaml [--quick] [--restart] [key.path=value ...]
    torchrun --nproc_per_node 2 -m latentforge.cli train configs/shapes_sg2im.yaml
    latentforge sample runs/demo --condition g.json --n 8 --out x.png [--int8] [sample.cfg_scale=2 ...]
    latentforge eval runs/demo [--metrics fid,kid,pr] [--n 1000] [--seed 0] [eval.n=500 ...]
    latentforge eval train-probe shapes
    latentforge report runs/demo
    latentforge serve runs/demo [--port 7860] [--host 127.0.0.1]
    latentforge convert sd-vae-ft-ema/ vae/ [scaling_factor=0.18215 ...]
    latentforge data shapes --n 16 --out grid.png [size=64 ...]

Every command that reads a recipe (run, train, sample, eval) takes the same dotted overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latentforge.config import ConfigError
from latentforge.serialization import CorruptFileError


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
        print(f"distribution ({dist['n']} {dist.get('noun', 'images')} a set, seed {dist['seed']}, "
              f"{f['name']} features {f['hash']}):")
        sets = ([("model", dist["model"])] if "model" in dist else []) + list(dist.get("baselines", {}).items())
        for name, values in sets:
            print(f"  {name}: {shown(values)}")
    skipped = metrics.get("eval", {}).get("skipped")
    if skipped:
        print("not measured: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))


def _recipe_of(run_dir: str, overrides: list[str] | None = None):
    """The Run of a run folder, its recorded recipe changed by dotted `overrides`."""
    from latentforge.config import apply_overrides, from_dict, load_yaml
    from latentforge.recipes import RecipeConfig, Run, link

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder ({path} is missing)")
    cfg = link(from_dict(RecipeConfig, apply_overrides(load_yaml(path), overrides or []), path=""))
    # the folder may have been moved: trust its location over the recorded one
    cfg.out_dir, cfg.name = str(Path(run_dir).parent), Path(run_dir).name
    return Run(cfg)


def _eval(args: argparse.Namespace) -> int:
    import dataclasses

    from latentforge.atomic import write_json
    from latentforge.eval.run_metrics import evaluate
    from latentforge.recipes import METRIC_GROUPS
    from latentforge.report.html import write_report

    if args.run == "train-probe":
        return _train_probe(args)
    stray = [r for r in args.rest if "=" not in r]
    if stray:
        raise ConfigError(f"eval takes one run folder and key=value overrides, got also: {' '.join(stray)}")
    run = _recipe_of(args.run, args.rest)
    run.progress = run.dataset.progress = not args.no_progress
    if run.cfg.generator is not None and not (run.dir / "samples.npz").exists():
        run.stage_sample()
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else list(METRIC_GROUPS)
    changes = {"metrics": tuple(metrics)}
    for key in ("n", "seed", "inception_weights", "inception_resize", "reference_batch"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    try:
        ecfg = dataclasses.replace(run.cfg.eval, **changes)
    except ValueError as err:
        raise ConfigError(f"eval: {err}") from None
    result = evaluate(run.eval_inputs(), ecfg, progress=run.progress)
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


def _read_conditions(text: str) -> tuple[object, str]:
    """`--condition`: a JSON file, or JSON given inline (`'{"label": 3}'`)."""
    path = Path(text)
    if path.suffix == ".json" or path.is_file():
        try:
            return json.loads(path.read_text()), str(path)
        except FileNotFoundError:
            raise ConfigError(f"condition file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON: {err}") from None
    try:
        return json.loads(text), "--condition"
    except json.JSONDecodeError as err:
        raise ConfigError(f"--condition: neither a file nor valid JSON ({err})") from None


def _sample(args: argparse.Namespace) -> int:
    """Samples of a run for conditions read through its data set (unconditional runs: --n samples)."""
    import numpy as np

    from latentforge.atomic import write_npz

    run = _recipe_of(args.run, args.overrides)
    pipe = run.pipeline()
    if args.int8:
        pipe.quantize_int8()
    if args.size is not None:
        try:
            pipe.set_decode_size(args.size)
        except ValueError as err:
            raise ConfigError(f"--size: {err}") from None
    conditional = pipe.generator.conditioner is not None
    if conditional and args.condition is None:
        raise ConfigError(f"{args.run} samples {run.dataset.condition_text.lower()[:-1] or 'for conditions'}: "
                          "give them with --condition FILE.json (README: conditions)")
    if not conditional and args.condition is not None:
        raise ConfigError(f"{args.run} was trained unconditionally: drop --condition")
    if conditional:
        raw, where = _read_conditions(args.condition)
        try:
            rows = run.dataset.parse_conditions(raw, where)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        rows = {k: np.repeat(v, args.n, axis=0) for k, v in rows.items()}
        total = len(next(iter(rows.values())))
    else:
        rows, total = {}, args.n
    prompts = frames = None
    if args.prompt is not None:
        prompts, frames = _prompts(args, run, pipe, total)
    try:
        samples, given = pipe.sample(rows, total, args.seed, run.dataset, run.sampling(pipe),
                                     run.cfg.sample.batch_size, prompts=prompts, frames=frames)
    except ValueError as err:
        if prompts is None:
            raise
        raise ConfigError(f"--prompt: {err}") from None
    out = Path(args.out)
    captions = run.dataset.captions(given) if given else None
    files = run.modality.preview(samples, captions, out.with_suffix(""), title=f"{run.dir.name}: samples")
    write_npz(out.with_suffix(".npz"), samples=samples, **given)
    print(f"wrote {len(samples)} {run.modality.noun} to {', '.join(str(out.parent / f) for f in files)} "
          f"and {out.with_suffix('.npz')}")
    return 0


def _prompts(args: argparse.Namespace, run, pipe, total: int):
    """--prompt FILE (audio runs): the clip, resampled to the run's rate, once per sample, and the
    latent frames to continue it to (--seconds; default the trained clip length)."""
    import numpy as np

    if run.modality.name != "audio":
        raise ConfigError(f"--prompt continues audio clips; {args.run} holds {run.modality.name}")
    from latentforge.data.audio_folder import load_clip

    path = Path(args.prompt)
    if not path.is_file():
        raise ConfigError(f"--prompt: {path} is not a file")
    try:
        clip, _ = load_clip(path, run.modality.sample_rate)
    except Exception as err:  # soundfile raises several types for unreadable files
        raise ConfigError(f"--prompt: {path} is not a readable audio file ({type(err).__name__}: {err})") from None
    hop = run.modality.length // pipe.tokenizer.spec.grid[0]
    frames = None if args.seconds is None else max(1, int(round(args.seconds * run.modality.sample_rate / hop)))
    return np.repeat(np.clip(clip, -1, 1)[None], total, axis=0), frames


def _serve(args: argparse.Namespace) -> int:
    """The interactive app: a local web page that samples the run (latentforge.app)."""
    from latentforge.app.server import serve

    serve(_recipe_of(args.run, args.overrides), host=args.host, port=args.port)
    return 0


def _convert(args: argparse.Namespace) -> int:
    """A peer's weights (diffusers, LDM, taming, LlamaGen, DiT) -> a latentforge model folder."""
    import yaml

    from latentforge.peers.convert import convert

    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    try:
        out = convert(args.source, args.out, **overrides)
    except (ValueError, TypeError) as err:  # an unknown layout, a pickle-only file, a bad override: say which
        print(f"latentforge convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} (config.json, model.safetensors, README.md); load it with latentforge.from_pretrained")
    return 0


def _data(args: argparse.Namespace) -> int:
    """A preview of a data set's split, captioned: what a recipe would train on."""
    from latentforge.config import apply_overrides, from_dict
    from latentforge.data.base import build_dataset
    from latentforge.registry import lookup, names

    try:
        config_cls = lookup("dataset", args.dataset)[0]
    except KeyError:
        raise ConfigError(f"unknown data set {args.dataset!r}; available: {', '.join(names('dataset'))}") from None
    cfg = from_dict(config_cls, apply_overrides({"name": args.dataset, "seed": args.seed}, args.overrides), path="data")
    dataset = build_dataset(cfg)
    arrays = {k: v[: args.n] for k, v in dataset.split(args.split).items()}
    modality = dataset.modality
    out = Path(args.out)
    files = modality.preview(dataset.examples(arrays), dataset.captions(arrays), out.with_suffix(""),
                             title=f"{args.dataset}, {args.split} split, seed {args.seed}")
    print(f"wrote {len(dataset.examples(arrays))} {modality.noun} to {', '.join(str(out.parent / f) for f in files)}")
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

    s = sub.add_parser("sample", help="sample a trained run for conditions given as JSON (scene graphs, labels, "
                       "captions, actions; none for unconditional runs)")
    s.add_argument("run", help="run folder, e.g. runs/demo")
    s.add_argument("overrides", nargs="*", help="dotted overrides of the run's recipe, e.g. sample.cfg_scale=2")
    s.add_argument("--condition", "--graph", dest="condition",
                   help="JSON file or inline JSON: one condition or a list (README: conditions)")
    s.add_argument("--n", type=int, default=8, help="samples per condition (unconditional runs: in all)")
    s.add_argument("--out", default="samples.png", help="preview file; the samples also go to the same name .npz")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--prompt", help="audio runs: a WAV/FLAC/OGG/MP3 clip to continue (its codes stay unchanged)")
    s.add_argument("--seconds", type=float, help="with --prompt: the length to continue to (default: the trained clip)")
    s.add_argument("--size", type=int, help="decode at this many pixels a side (tokenizers with a continuous "
                   "decoder: tokenizer.name implicit, DDMI); default: the trained size")
    s.add_argument("--int8", action="store_true", help="sample with int8 Linear weights (CPU inference: "
                   "~4x less weight memory; benchmarks/inference.py measures speed and error)")
    s.set_defaults(func=_sample)

    e = sub.add_parser("eval", help="recompute metrics.json and the report of a run; "
                       "`eval train-probe DATASET` trains a data set's probe network",
                       description="latentforge eval RUN [--metrics fid,kid,pr,...] [--n N] [--seed S]\n"
                       "latentforge eval train-probe DATASET [key=value ...] [--steps N] [--force]",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run", help="run folder, e.g. runs/demo; or `train-probe`")
    e.add_argument("rest", nargs="*", help="dotted overrides of the run's recipe (eval.n=500); train-probe: the "
                   "data set and its config overrides (size=64)")
    e.add_argument("--metrics", help="comma-separated groups: recon, val, adherence, diversity, speed, "
                   "fid, kid, pr (default: all)")
    e.add_argument("--n", type=int, help="images per set for fid / kid / pr (default: eval.n of the run)")
    e.add_argument("--seed", type=int, help="seed of the samples and subsets (default: eval.seed)")
    e.add_argument("--inception-weights", help="Inception-v3 weights file (pytorch-fid or torchvision "
                   "format): standard FID instead of the probe's")
    e.add_argument("--inception-resize", choices=["pytorch-fid", "tf1", "clean-fid"],
                   help="with --inception-weights: the resize convention to match (tf1: ADM's evaluator and "
                   "torch-fidelity; clean-fid; pytorch-fid, the default)")
    e.add_argument("--reference-batch", help="an ADM reference batch .npz (arr_0 and/or mu, sigma, mu_s, sigma_s): "
                   "FID, sFID and IS of the samples against it, as the papers report them (with --inception-weights)")
    e.add_argument("--steps", type=int, help="train-probe: training steps (default 2000)")
    e.add_argument("--force", action="store_true", help="train-probe: retrain even if cached")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_eval)

    sv = sub.add_parser("serve", help="a local web page that samples a trained run: conditions, guidance, steps, "
                        "temperature, seed; the samples and the run's metrics (needs latentforge[app])")
    sv.add_argument("run", help="run folder, e.g. runs/demo")
    sv.add_argument("overrides", nargs="*", help="dotted overrides of the run's recipe, e.g. device=cuda")
    sv.add_argument("--port", type=int, default=7860)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only; "
                    "0.0.0.0 opens the page to the network, with no authentication)")
    sv.set_defaults(func=_serve)

    cv = sub.add_parser("convert", help="a peer's weights from a local path (diffusers AutoencoderKL / VQModel / "
                        "DiT folders; LDM, taming VQGAN, LlamaGen VQ, facebookresearch DiT files) -> a latentforge "
                        "model folder; pickle-only files are refused")
    cv.add_argument("source", help="the peer's folder or weights file (.safetensors, .ckpt, .pt, .pth, .bin)")
    cv.add_argument("out", help="folder to write")
    cv.add_argument("overrides", nargs="*", help="config fields the file does not record, e.g. "
                    "scaling_factor=0.2325 (bare LDM files), heads=12 (DiT widths outside S/B/L/XL)")
    cv.set_defaults(func=_convert)

    rep = sub.add_parser("report", help="rewrite report.html of a run")
    rep.add_argument("run")
    rep.set_defaults(func=_report)

    d = sub.add_parser("data", help="look at a data set: a captioned preview of its first examples")
    d.add_argument("dataset", help="a registered data set: shapes, digits, photos, ...")
    d.add_argument("overrides", nargs="*", help="its config fields, e.g. size=64 max_objects=4")
    d.add_argument("--n", type=int, default=16)
    d.add_argument("--out", default="data.png", help="preview file (motion: .gif and a filmstrip .png)")
    d.add_argument("--split", default="val", choices=["train", "val", "test"])
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_data)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after flags (`run cfg.yaml --quick a.b=1`), which argparse leaves over
    if args.command in ("run", "train", "sample", "serve", "convert", "data"):
        args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if e not in args.overrides]
    elif args.command == "eval":
        args.rest += [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if e not in args.rest]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, CorruptFileError) as err:
        print(f"latentforge: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
