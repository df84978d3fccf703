"""A recipe = data + tokenizer + generator + training + sampling + evaluation, as cached stages.

    data -> tokenizer -> encode -> generator -> sample -> eval -> report      (runs/<name>/)

Each stage records a fingerprint of the config sections it depends on in `stages.json`. A
re-run skips stages whose fingerprint is unchanged; an interrupted training stage resumes
from its last checkpoint; cheap stages (encode, sample, eval, report) simply re-run when
their inputs change. A training stage whose config changed is never silently thrown away:
the run stops and says so (use a new `name=` or `--restart`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from latentforge.atomic import atomic_path, write_json, write_text
from latentforge.config import (ConfigError, apply_overrides, from_dict, load_yaml, to_dict)
from latentforge.data.shapes import SceneGraph, ShapesConfig, encode_graphs, render_batch, sample_scene
from latentforge.generators.base import GeneratorConfig
from latentforge.pipeline import Pipeline, to_float
from latentforge.registry import lookup
from latentforge.serialization import from_pretrained, save_pretrained
from latentforge.tokenizers.base import TokenizerConfig
from latentforge.train.trainer import TrainConfig, Trainer

STAGES = ("data", "tokenizer", "encode", "generator", "sample", "eval", "report")
TRAINING_STAGES = ("tokenizer", "generator")


# ---------------------------------------------------------------------------------- config

@dataclass
class ShapesDataConfig:
    name: str = "shapes"
    size: int = 32
    min_objects: int = 1
    max_objects: int = 3
    supersample: int = 4
    seed: int = 0
    train_size: int = 20000
    val_size: int = 1000

    def __post_init__(self) -> None:
        if self.name != "shapes":
            raise ValueError(f"data.name {self.name!r} is not available yet; valid: shapes")
        if self.train_size < 1 or self.val_size < 1:
            raise ValueError("train_size and val_size must be >= 1")
        self.shapes()  # validates size and object counts

    def shapes(self) -> ShapesConfig:
        return ShapesConfig(size=self.size, min_objects=self.min_objects, max_objects=self.max_objects,
                            supersample=self.supersample, seed=self.seed)


@dataclass
class SampleConfig:
    graphs: int = 200                # validation scene graphs to sample for
    per_graph: int = 2               # samples per graph (>= 2 measures diversity)
    batch_size: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    seed: int = 0


@dataclass
class EvalConfig:
    recon_images: int = 1000         # validation images for the tokenizer metrics
    show: int = 16                   # images in each picture of the report


@dataclass
class RecipeConfig:
    name: str = "run"
    out_dir: str = "runs"
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    threads: int = 0                 # torch CPU threads; 0 keeps torch's default
    data: ShapesDataConfig = field(default_factory=ShapesDataConfig)
    tokenizer: TokenizerConfig = field(default_factory=lambda: lookup("tokenizer", "conv")[0]())
    tokenizer_train: TrainConfig = field(default_factory=TrainConfig)
    generator: GeneratorConfig = field(default_factory=lambda: lookup("generator", "autoregressive")[0]())
    generator_train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    quick: dict = field(default_factory=dict)   # dotted overrides applied by --quick

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                quick: bool = False) -> RecipeConfig:
    """YAML file (optional) + `--quick` overrides + command-line overrides -> RecipeConfig."""
    data = load_yaml(path) if path is not None else {}
    if quick:
        data = apply_overrides(data, data.get("quick") or {})
    data = apply_overrides(data, overrides or [])
    cfg = from_dict(RecipeConfig, data, path="")
    return link(cfg)


def link(cfg: RecipeConfig) -> RecipeConfig:
    """Derive the fields one component takes from another: the generator's grid and vocabulary
    from the tokenizer, the scene-graph encoder's object slots from the data."""
    tok_cls = lookup("tokenizer", cfg.tokenizer.name)[1]
    spec = _spec_of(tok_cls, cfg.tokenizer)
    if getattr(cfg.tokenizer, "image_size", cfg.data.size) != cfg.data.size:
        raise ConfigError(f"tokenizer.image_size {cfg.tokenizer.image_size} differs from data.size {cfg.data.size}")
    gen_updates: dict[str, Any] = {"grid": spec.grid}
    if hasattr(cfg.generator, "vocab_size") and (spec.kind != "discrete" or spec.depth != 1):
        raise ConfigError(
            f"generator {cfg.generator.name!r} models one discrete code per position, but tokenizer "
            f"{cfg.tokenizer.name!r} with quantizer {cfg.tokenizer.quantizer.name!r} gives {spec.kind} latents"
            + (f" with {spec.depth} levels" if spec.depth > 1 else "")
            + ": pick a single-level discrete quantizer (vq, fsq, lfq, gumbel) for it")
    if hasattr(cfg.generator, "vocab_size") and spec.vocab_size is not None:
        gen_updates["vocab_size"] = spec.vocab_size
    cond = cfg.generator.conditioner
    if cond is not None and hasattr(cond, "max_objects"):
        gen_updates["conditioner"] = dataclasses.replace(cond, max_objects=cfg.data.max_objects)
    cfg.generator = dataclasses.replace(cfg.generator, **gen_updates)
    return cfg


def _spec_of(tok_cls: type, tok_cfg: TokenizerConfig):
    # the LatentSpec without building the network: build on the meta device
    with torch.device("meta"):
        return tok_cls(tok_cfg).spec


# ---------------------------------------------------------------------------------- run

def _say(message: str) -> None:
    print(f"[latentforge] {message}", file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


class Run:
    """One run folder and its stages."""

    def __init__(self, cfg: RecipeConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.dir = cfg.run_dir
        self.device = resolve_device(cfg.device)
        self.progress = progress
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)

    # -- bookkeeping -----------------------------------------------------------------
    def _sections(self, stage: str) -> dict[str, Any]:
        """The config sections a stage depends on: its own and those of every stage before it."""
        own = {"data": ["data"], "tokenizer": ["tokenizer", "tokenizer_train"],
               "generator": ["generator", "generator_train"], "sample": ["sample"], "eval": ["eval"]}
        c = to_dict(self.cfg)
        upto = STAGES[: STAGES.index(stage) + 1]
        return {k: c[k] for s in upto for k in own.get(s, [])}

    def fingerprint(self, stage: str) -> str:
        blob = json.dumps(self._sections(stage), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _stages(self) -> dict[str, str]:
        path = self.dir / "stages.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _mark(self, stage: str) -> None:
        done = self._stages()
        done[stage] = self.fingerprint(stage)
        write_json(self.dir / "stages.json", done)

    def check_compatible(self) -> None:
        """Stop before doing anything if a training stage was started with another config."""
        for stage in TRAINING_STAGES:
            path = self.dir / stage / "train" / "fingerprint.txt"
            if path.exists() and path.read_text().strip() != self.fingerprint(stage):
                raise ConfigError(
                    f"{self.dir} already holds a {stage} trained with another config; "
                    f"choose a new run name (name=...) or pass --restart to delete the old run")

    # -- driver ----------------------------------------------------------------------
    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.check_compatible()
        write_text(self.dir / "config.yaml", _yaml(to_dict(self.cfg)))
        done = self._stages()
        t0 = time.perf_counter()
        for stage in stages:
            if done.get(stage) == self.fingerprint(stage):
                _say(f"stage {stage}: done already, skipped")
                continue
            _say(f"stage {stage} ...")
            t = time.perf_counter()
            getattr(self, f"stage_{stage}")()
            self._mark(stage)
            _say(f"stage {stage}: finished in {time.perf_counter() - t:.1f} s")
        _say(f"run {self.dir} complete in {time.perf_counter() - t0:.1f} s")
        metrics = self.dir / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.exists() else {}

    # -- stages ----------------------------------------------------------------------
    def _data_path(self, split: str) -> Path:
        return self.dir / "data" / f"{split}.npz"

    def stage_data(self) -> None:
        d = self.cfg.data
        scfg = d.shapes()
        for split, n in (("train", d.train_size), ("val", d.val_size)):
            graphs = [sample_scene(scfg, split, i) for i in range(n)]
            images = render_batch(scfg, split, range(n))
            cond = encode_graphs(graphs, d.max_objects)
            with atomic_path(self._data_path(split)) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, images=images, graphs=np.array([json.dumps(g.to_json()) for g in graphs]),
                             **{k: v.numpy() for k, v in cond.items()})

    def load_split(self, split: str) -> dict[str, Any]:
        with np.load(self._data_path(split)) as f:
            return {k: f[k] for k in f.files}

    def _train(self, stage: str, model: torch.nn.Module, tcfg: TrainConfig, batch_fn: Callable,
               loss_fn: Callable | None = None) -> None:
        folder = self.dir / stage / "train"
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "fingerprint.txt", self.fingerprint(stage))
        trainer = Trainer(model, tcfg, folder, batch_fn, loss_fn, device=self.device, desc=stage,
                          progress=self.progress)
        trainer.fit()
        save_pretrained(model, self.dir / stage, extra={"precision": trainer.precision.name})

    def stage_tokenizer(self) -> None:
        cfg = self.cfg
        images = torch.from_numpy(self.load_split("train")["images"])  # uint8 [N, H, W, 3]
        tcls = lookup("tokenizer", cfg.tokenizer.name)[1]
        model = tcls(cfg.tokenizer)
        B = cfg.tokenizer_train.batch_size

        def batch_fn(step: int) -> dict[str, torch.Tensor]:
            idx = torch.randint(len(images), (B,))
            return {"image": to_float(images[idx])}

        self._train("tokenizer", model, cfg.tokenizer_train, batch_fn)

    def stage_encode(self) -> None:
        tok = from_pretrained(self.dir / "tokenizer", self.device)
        out = {}
        with torch.no_grad():
            for split in ("train", "val"):
                images = self.load_split(split)["images"]
                codes = [tok.encode(to_float(images[i:i + 500]).to(self.device)).cpu()
                         for i in range(0, len(images), 500)]
                out[split] = torch.cat(codes).numpy()
        with atomic_path(self.dir / "latents.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **out)

    def load_latents(self, split: str) -> torch.Tensor:
        with np.load(self.dir / "latents.npz") as f:
            return torch.from_numpy(f[split])

    def condition(self, split: str, data: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        data = self.load_split(split) if data is None else data
        return {k: torch.from_numpy(v) for k, v in data.items() if k.startswith(("obj_", "rel_"))}

    def stage_generator(self) -> None:
        cfg = self.cfg
        codes = self.load_latents("train")
        cond = self.condition("train")
        model = lookup("generator", cfg.generator.name)[1](cfg.generator)
        B = cfg.generator_train.batch_size

        def batch_fn(step: int) -> dict[str, torch.Tensor]:
            idx = torch.randint(len(codes), (B,))
            return {"codes": codes[idx], **{k: v[idx] for k, v in cond.items()}}

        def loss_fn(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return model.loss(batch["codes"], model.encode_condition(batch))

        self._train("generator", model, cfg.generator_train, batch_fn, loss_fn)

    def stage_sample(self) -> None:
        s = self.cfg.sample
        val = self.load_split("val")
        n_graphs = min(s.graphs, len(val["images"]))
        # the graphs only: the true object centres stay hidden, so layouts are the model's own (P1)
        cond = {k: v[:n_graphs].repeat_interleave(s.per_graph, 0) for k, v in self.condition("val", val).items()
                if k not in ("obj_x", "obj_y")}
        pipe = Pipeline.from_run(self.dir, str(self.device))
        gen = torch.Generator(device=self.device).manual_seed(s.seed)
        t = time.perf_counter()
        images = pipe.generate(cond, generator=gen, batch_size=s.batch_size, temperature=s.temperature,
                               top_k=s.top_k, top_p=s.top_p, cfg_scale=s.cfg_scale)
        seconds = time.perf_counter() - t
        # as conditioned on: without the true centres
        hidden = [json.dumps(SceneGraph.from_json(json.loads(g)).without_positions().to_json())
                  for g in val["graphs"][:n_graphs]]
        graphs = np.repeat(np.array(hidden), s.per_graph)
        groups = np.repeat(np.arange(n_graphs), s.per_graph)
        with atomic_path(self.dir / "samples.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, graphs=graphs, groups=groups)
        write_json(self.dir / "sample_info.json", {"images": len(images), "seconds": seconds,
                                                   "images_per_s": len(images) / seconds})
        from latentforge.report.grids import save_captioned_grid

        show = self._show_indices(groups)
        captions = [SceneGraph.from_json(json.loads(graphs[i])).caption() for i in show]
        save_captioned_grid(images[show], captions, self.dir / "samples.png",
                            title=f"samples (cfg scale {s.cfg_scale}, temperature {s.temperature})")

    def _show_indices(self, groups: np.ndarray) -> np.ndarray:
        """The first `eval.show` samples, taking up to two per graph so diversity is visible."""
        picked = [i for i in range(len(groups)) if (groups[:i] == groups[i]).sum() < 2]
        return np.array(picked[: self.cfg.eval.show])

    def stage_eval(self) -> None:
        from latentforge.eval.run_metrics import evaluate_run

        metrics = evaluate_run(self)
        write_json(self.dir / "metrics.json", metrics)

    def stage_report(self) -> None:
        from latentforge.report.html import write_report

        write_report(self.dir)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def remove_run(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)
