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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from latentforge.atomic import write_json, write_npz, write_text
from latentforge.conditioning.caption import CaptionConfig, build_vocab
from latentforge.config import (
    ADDED_LATER,
    ConfigError,
    apply_overrides,
    from_dict,
    identity,
    load_yaml,
    to_dict,
)
from latentforge.data.base import DataConfig, DataSet, build_dataset
from latentforge.data.sets import ShapesDataConfig
from latentforge.data.store import load_split, write_split
from latentforge.generators.base import GeneratorConfig
from latentforge.model_card import write_model_card
from latentforge.pipeline import Pipeline, SampleConfig, condition_tensors, sampling_options
from latentforge.registry import lookup
from latentforge.serialization import from_pretrained, read_weights, save_pretrained
from latentforge.tokenizers.base import TokenizerConfig
from latentforge.train import distributed
from latentforge.train.batches import StepBatches
from latentforge.train.repa import REPA, Aligned, RepaConfig, build_encoder
from latentforge.train.trainer import TrainConfig, Trainer

if TYPE_CHECKING:
    from latentforge.eval.run_metrics import EvalInputs

STAGES = ("data", "tokenizer", "encode", "generator", "sample", "eval", "report")
TRAINING_STAGES = ("tokenizer", "generator")


# ---------------------------------------------------------------------------------- config

# what `eval.metrics` may name; the eval stage computes those that apply to the run
METRIC_GROUPS = ("recon", "val", "adherence", "diversity", "speed", "fid", "kid", "pr")


@dataclass
class EvalConfig:
    recon_images: int = 1000         # validation examples for the tokenizer metrics
    show: int = 16                   # examples in each preview of the report
    metrics: tuple[str, ...] = METRIC_GROUPS
    n: int = 1000                    # examples per set for fid / kid / pr (capped by the val split)
    seed: int = 0                    # samples and subsets of the distribution metrics
    inception_weights: str = ""      # an Inception-v3 weights file: standard FID instead of the probe's
    # with Inception weights: the resize convention (pytorch-fid | tf1: ADM / torch-fidelity | clean-fid)
    inception_resize: str = field(default="pytorch-fid", metadata=ADDED_LATER)
    # an ADM reference batch (.npz: arr_0 and/or mu, sigma, mu_s, sigma_s) the samples are also scored
    # against (FID, sFID, IS, as the papers report them); needs inception_weights
    reference_batch: str = field(default="", metadata=ADDED_LATER)
    baselines: bool = True           # floor (real vs real) and trivial models beside fid / kid / pr
    speed_batch: int = 64            # examples per timed sampling call (speed)

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRIC_GROUPS]
        if unknown:
            raise ValueError(f"metrics: unknown {', '.join(map(repr, unknown))}; "
                             f"choose from {', '.join(METRIC_GROUPS)}")
        if self.n < 10:
            raise ValueError(f"n must be >= 10, got {self.n}")
        if self.inception_resize not in ("pytorch-fid", "tf1", "clean-fid"):
            raise ValueError(f"inception_resize must be pytorch-fid, tf1 or clean-fid, got {self.inception_resize!r}")
        if self.reference_batch and not self.inception_weights:
            raise ValueError("reference_batch needs inception_weights: ADM's statistics are Inception features")


@dataclass
class RecipeConfig:
    name: str = "run"
    out_dir: str = "runs"
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    threads: int = 0                 # torch CPU threads; 0 keeps torch's default
    data: DataConfig = field(default_factory=ShapesDataConfig)
    tokenizer: TokenizerConfig = field(default_factory=lambda: lookup("tokenizer", "conv")[0]())
    tokenizer_train: TrainConfig = field(default_factory=TrainConfig)
    # null: a tokenizer-only run (data -> tokenizer -> eval -> report)
    generator: GeneratorConfig | None = field(default_factory=lambda: lookup("generator", "autoregressive")[0]())
    generator_train: TrainConfig = field(default_factory=TrainConfig)
    # REPA (train/repa.py): align an early generator block with a frozen image encoder while training
    repa: RepaConfig | None = field(default=None, metadata=ADDED_LATER)
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
    """Derive the fields one component takes from another: the generator's grid and latent
    format from the tokenizer, the conditioner's object slots or classes from the data."""
    tok_cls = lookup("tokenizer", cfg.tokenizer.name)[1]
    dataset = build_dataset(cfg.data)
    modality = dataset.modality
    if cfg.tokenizer.layout != modality.layout:
        raise ConfigError(f"tokenizer {cfg.tokenizer.name!r} reads {cfg.tokenizer.layout} data, but data "
                          f"{cfg.data.name!r} holds {modality.name} ({modality.layout}): pick a "
                          f"{modality.layout} tokenizer")
    fields = modality.tokenizer_fields()  # the tokenizer is built for the data's examples
    if any(getattr(cfg.tokenizer, k) != v for k, v in fields.items()):
        try:
            cfg.tokenizer = dataclasses.replace(cfg.tokenizer, **fields)
        except ValueError as err:
            given = ", ".join(f"{k} {v}" for k, v in fields.items())
            raise ConfigError(f"data {cfg.data.name!r} gives {given}, which does not suit tokenizer "
                              f"{cfg.tokenizer.name!r}: {err}") from None
    spec = _spec_of(tok_cls, cfg.tokenizer)
    gen = cfg.generator
    if gen is None:
        return cfg
    quantizer = getattr(cfg.tokenizer, "quantizer", None)
    made = f"tokenizer {cfg.tokenizer.name!r}" + (f" with quantizer {quantizer.name!r}" if quantizer else "")
    try:
        updates = gen.fields_for(spec, made)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if gen.conditioner is not None and getattr(cfg.data, "labels", None) == "auto" and not dataset.condition_keys \
            and not isinstance(gen.conditioner, CaptionConfig):
        _say(f"data {cfg.data.name!r} has no classes (fewer than 2 labelled subfolders): the generator is unconditional")
        gen = dataclasses.replace(gen, conditioner=None)
    if isinstance(gen.conditioner, CaptionConfig):
        if dataset.caption_key is None:
            raise ConfigError(f"generator.conditioner 'caption' reads captions, which data {cfg.data.name!r} does not "
                              "provide" + (f"; its conditioner is {dataset.natural_conditioner!r}"
                                           if dataset.natural_conditioner else " (it is unlabelled)"))
        if not gen.conditioner.vocab:  # the data's own words, fixed in the config (and so in the saved model)
            updates["conditioner"] = dataclasses.replace(gen.conditioner, vocab=build_vocab(dataset.training_captions()))
    elif gen.conditioner is not None:
        cond_cls = lookup("conditioner", gen.conditioner.name)[1]
        missing = [k for k in cond_cls.keys if k not in dataset.condition_keys]
        if missing:
            raise ConfigError(
                f"generator.conditioner {gen.conditioner.name!r} reads {', '.join(cond_cls.keys)}, which data "
                f"{cfg.data.name!r} does not provide" + (f"; its conditioner is {dataset.natural_conditioner!r}"
                                                         if dataset.natural_conditioner else " (it is unlabelled)"))
        updates["conditioner"] = dataset.link_conditioner(gen.conditioner)
    cfg.generator = dataclasses.replace(gen, **updates)
    return cfg


def _spec_of(tok_cls: type, tok_cfg: TokenizerConfig):
    # the LatentSpec without building the network: build on the meta device
    with torch.device("meta"):
        return tok_cls(tok_cfg).spec


# ---------------------------------------------------------------------------------- run

def _say(message: str) -> None:
    if distributed.current().main:
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
        self.dataset: DataSet = build_dataset(cfg.data)
        self.dataset.run_dir = self.dir  # where a data set may cache what it decodes
        self.dataset.progress = progress
        self.modality = self.dataset.modality
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)

    # -- bookkeeping -----------------------------------------------------------------
    def _sections(self, stage: str) -> dict[str, Any]:
        """The config sections a stage depends on: its own and those of every stage before it."""
        own = {"data": ["data"], "tokenizer": ["tokenizer", "tokenizer_train"],
               "generator": ["generator", "generator_train", "repa"], "sample": ["sample"], "eval": ["eval"]}
        c = identity(self.cfg)
        for key in ("tokenizer_train", "generator_train"):
            c[key] = getattr(self.cfg, key).identity()
        upto = STAGES[: STAGES.index(stage) + 1]
        return {k: c[k] for s in upto for k in own.get(s, []) if k in c}  # c lacks fields left at ADDED_LATER defaults

    def fingerprint(self, stage: str) -> str:
        sections = self._sections(stage)
        content = self.dataset.content_key()
        if content:  # only data that lives outside the config (a user's folder) has one
            sections["data content"] = content
        blob = json.dumps(sections, sort_keys=True)
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
                    f"{self.dir} already holds a {stage} trained with another config or other data; "
                    f"choose a new run name (name=...) or pass --restart to delete the old run")

    # -- driver ----------------------------------------------------------------------
    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
        """Run `stages` in order, skipping finished ones. Under torchrun every process trains
        (data-parallel); the other stages run on rank 0 while the rest wait for it."""
        world = distributed.current()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.check_compatible()
        if world.main:
            write_text(self.dir / "config.yaml", _yaml(to_dict(self.cfg)))
        done = self._stages()
        t0 = time.perf_counter()
        if self.cfg.generator is None:  # a tokenizer-only run
            stages = tuple(s for s in stages if s not in ("encode", "generator", "sample"))
        for stage in stages:
            if done.get(stage) == self.fingerprint(stage):
                _say(f"stage {stage}: done already, skipped")
                continue
            _say(f"stage {stage} ...")
            t = time.perf_counter()
            if world.main or stage in TRAINING_STAGES:
                getattr(self, f"stage_{stage}")()
            if world.main:
                self._mark(stage)
            distributed.barrier()
            _say(f"stage {stage}: finished in {time.perf_counter() - t:.1f} s")
        _say(f"run {self.dir} complete in {time.perf_counter() - t0:.1f} s")
        metrics = self.dir / "metrics.json"
        return json.loads(metrics.read_text()) if metrics.exists() else {}

    # -- stages ----------------------------------------------------------------------
    def stage_data(self) -> None:
        for split in ("train", "val"):
            where = f"data {self.cfg.data.name!r}, {split} split"
            total, pieces = self.dataset.split_pieces(split)
            write_split(self.dir / "data" / split, pieces, total,
                        check=lambda piece, where=where: self.modality.check(self.dataset.examples(piece), where),
                        progress=self.progress, desc=f"data {split}")

    def load_split(self, split: str) -> dict[str, np.ndarray]:
        return load_split(self.dir, split)

    def _train(self, stage: str, model: torch.nn.Module, tcfg: TrainConfig, batch_fn: Callable | StepBatches,
               loss_fn: Callable | None = None, save: torch.nn.Module | None = None) -> None:
        """Train `model`; save `save` (default: the model itself; a part of it when training wraps it)."""
        folder = self.dir / stage / "train"
        folder.mkdir(parents=True, exist_ok=True)
        main = distributed.current().main
        if main:
            write_text(folder / "fingerprint.txt", self.fingerprint(stage))
        trainer = Trainer(model, tcfg, folder, batch_fn, loss_fn, device=self.device, desc=stage,
                          progress=self.progress)
        trainer.fit()
        if main:  # with EMA on, the model now holds the averaged weights: those are saved
            training = {k: getattr(tcfg, k) for k in ("steps", "batch_size", "lr", "warmup", "weight_decay",
                                                      "grad_clip", "accumulate", "seed")}
            save_pretrained(model if save is None else save, self.dir / stage, data=self.card_data(),
                            extra={"precision": trainer.precision.name, "ema_decay": tcfg.ema_decay,
                                   "training": training})

    def card_data(self) -> dict[str, Any]:
        """What the models' cards say about the data: the data set, its modality and its config."""
        scalars = {k: v for k, v in to_dict(self.cfg.data).items() if isinstance(v, (int, float, str, bool))}
        return {"dataset": self.cfg.data.name, "modality": self.modality.name, "recipe run": self.dir.name, **scalars}

    def stage_tokenizer(self) -> None:
        cfg = self.cfg
        split = self.load_split("train")
        examples = self.dataset.examples(split)  # memory-mapped, in the stored layout
        tcls = lookup("tokenizer", cfg.tokenizer.name)[1]
        torch.manual_seed(cfg.tokenizer_train.seed)  # the initial weights follow the seed, not what ran before
        model = tcls(self.perceptual_weights_filled(cfg.tokenizer))
        model.before_training()
        key, to_model = cfg.tokenizer.layout, self.modality.to_model
        extra = type(cfg.tokenizer).batch_keys
        missing = [k for k in extra if k not in split]
        if missing:
            raise ValueError(f"tokenizer {cfg.tokenizer.name!r} trains on {', '.join(extra)} beside the examples, but "
                             f"data {cfg.data.name!r} has no {', '.join(missing)}")
        batches = StepBatches({key: examples, **{k: split[k] for k in extra}}, cfg.tokenizer_train.batch_size,
                              cfg.tokenizer_train.seed,  # reads each step's rows only
                              convert=lambda rows: {key: to_model(rows[key]),
                                                    **{k: torch.as_tensor(np.asarray(rows[k])) for k in extra}})
        self._train("tokenizer", model, cfg.tokenizer_train, batches)

    def perceptual_weights_filled(self, tcfg: TokenizerConfig) -> TokenizerConfig:
        """The tokenizer config with a probe perceptual loss's empty weights path set to the data set's
        own probe (trained once and cached): the offline default. The recipe's config is left as it is,
        so the stage's fingerprint does not change."""
        perceptual = getattr(tcfg, "perceptual", None)
        if perceptual is None or perceptual.kind != "probe" or perceptual.backbone_weights:
            return tcfg
        from latentforge.eval.probe import has_probe, load_probe, probe_dir
        from latentforge.serialization import WEIGHTS_NAME

        if not has_probe(self.cfg.data):
            raise ConfigError(f"tokenizer.perceptual.kind 'probe' needs a probe network, and data "
                              f"{self.cfg.data.name!r} has none: set tokenizer.perceptual.backbone_weights to a "
                              "probe's model.safetensors (e.g. the Shapes probe's) or use kind 'lpips'")
        load_probe(self.cfg.data, progress=self.progress)
        path = str(probe_dir(self.cfg.data) / WEIGHTS_NAME)
        return dataclasses.replace(tcfg, perceptual=dataclasses.replace(perceptual, backbone_weights=path))

    def stage_encode(self) -> None:
        tok = from_pretrained(self.dir / "tokenizer", self.device)
        out = {}
        with torch.no_grad():
            for split in ("train", "val"):
                examples = self.dataset.examples(self.load_split(split))
                step = self.modality.inference_batch
                codes = [tok.encode(self.modality.to_model(examples[i:i + step]).to(self.device)).cpu()
                         for i in range(0, len(examples), step)]
                out[split] = torch.cat(codes).numpy()
        write_npz(self.dir / "latents.npz", **out)

    def load_latents(self, split: str) -> torch.Tensor:
        with np.load(self.dir / "latents.npz") as f:
            return torch.from_numpy(f[split])

    def condition(self, split: str, generator: torch.nn.Module) -> dict[str, torch.Tensor]:
        """A stored split's condition tensors for `generator`'s conditioner (empty if it has none)."""
        if generator.conditioner is None:
            return {}
        return condition_tensors(self.dataset, self.load_split(split), generator)

    def stage_generator(self) -> None:
        cfg = self.cfg
        codes = self.load_latents("train")
        torch.manual_seed(cfg.generator_train.seed)  # the initial weights follow the seed, not what ran before
        model = lookup("generator", cfg.generator.name)[1](cfg.generator)
        cond = self.condition("train", model)
        if model.latent_norm is not None:  # continuous latents: learn in unit-variance units
            model.latent_norm.fit(codes)
        if cfg.repa is not None:
            self.train_aligned(model, codes, cond)
            return
        batches = StepBatches({"codes": codes, **cond}, cfg.generator_train.batch_size, cfg.generator_train.seed)

        def loss_fn(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return model.loss(batch["codes"], model.encode_condition(batch))

        self._train("generator", model, cfg.generator_train, batches, loss_fn)

    def repa_encoder(self) -> tuple[torch.nn.Module, int]:
        """REPA's frozen encoder and its channels: from `repa.encoder_weights`, else the data's probe."""
        rc = self.cfg.repa
        path = rc.encoder_weights
        if not path:
            if rc.encoder != "probe":
                raise ConfigError(f"repa.encoder {rc.encoder!r} needs repa.encoder_weights (a weights file)")
            from latentforge.eval.probe import load_probe, probe_dir
            from latentforge.serialization import WEIGHTS_NAME

            load_probe(self.cfg.data, progress=self.progress)  # trained once per data set, then cached
            path = str(probe_dir(self.cfg.data) / WEIGHTS_NAME)
        return build_encoder(rc, read_weights(path))

    def train_aligned(self, model: torch.nn.Module, codes: torch.Tensor, cond: dict[str, torch.Tensor]) -> None:
        """The generator stage with REPA: each batch also holds its clean images (the same rows as the
        latents), the projector trains beside the generator, and the generator alone is saved."""
        cfg = self.cfg
        encoder, dim = self.repa_encoder()
        aligned = Aligned(model, REPA(cfg.repa, model, encoder, dim))
        images = self.dataset.examples(self.load_split("train"))  # memory-mapped; row i is latent i's image
        to_model = self.modality.to_model

        def convert(rows: dict[str, Any]) -> dict[str, torch.Tensor]:
            return {k: to_model(v) if k == "images" else torch.as_tensor(np.asarray(v)) for k, v in rows.items()}

        batches = StepBatches({"codes": codes, **cond, "images": images}, cfg.generator_train.batch_size,
                              cfg.generator_train.seed, convert=convert)
        self._train("generator", aligned, cfg.generator_train, batches, aligned.loss, save=model)
        aligned.repa.detach_hook()

    def pipeline(self) -> Pipeline:
        return Pipeline.from_run(self.dir, self.modality, self.device)

    def sampling(self, pipe: Pipeline) -> dict[str, Any]:
        return sampling_options(pipe.generator, self.cfg.sample)

    def stage_sample(self) -> None:
        s = self.cfg.sample
        val = self.load_split("val")
        rows = min(s.conditions, len(self.dataset.examples(val)))
        given = {k: np.repeat(v[:rows], s.per_graph, axis=0) for k, v in self.dataset.conditions(val).items()}
        groups = np.repeat(np.arange(rows), s.per_graph)
        pipe = self.pipeline()
        options = self.sampling(pipe)
        t = time.perf_counter()
        samples, given = pipe.sample(given, len(groups), s.seed, self.dataset, options, s.batch_size)
        seconds = time.perf_counter() - t
        conditional = bool(given)
        write_npz(self.dir / "samples.npz", samples=samples, groups=groups, **given)
        show = self._show_indices(groups)
        captions = self.dataset.captions({k: v[show] for k, v in given.items()}) if conditional else None
        shown = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None)
        previews = self.modality.preview(samples[show], captions, self.dir / "samples", title=f"samples ({shown})")
        noun = self.modality.noun
        if conditional:  # the data's own examples of the same conditions, to look at beside the samples
            real = self.dataset.examples(val)[groups[show]]
            previews += self.modality.preview(real, captions, self.dir / "real", title=f"real {noun}, same conditions")
        write_json(self.dir / "sample_info.json", {
            "samples": len(samples), "seconds": seconds, "samples_per_s": len(samples) / seconds, "noun": noun,
            "conditional": conditional, "previews": previews,
            "shows": self.dataset.condition_text if conditional else f"unconditional {noun}"})

    def _show_indices(self, groups: np.ndarray) -> np.ndarray:
        """The first `eval.show` samples, taking up to two per graph so diversity is visible."""
        picked = [i for i in range(len(groups)) if (groups[:i] == groups[i]).sum() < 2]
        return np.array(picked[: self.cfg.eval.show])

    def eval_inputs(self) -> "EvalInputs":
        """What the eval stage reads, as artifacts: the run folder's splits, models and samples."""
        from latentforge.eval.run_metrics import EvalInputs

        pipe = self.pipeline() if self.cfg.generator is not None else None
        samples = None
        if pipe is not None:
            with np.load(self.dir / "samples.npz") as f:
                # runs sampled before the modalities stored their samples as "images"
                samples = {"samples" if k == "images" else k: f[k] for k in f.files}
        return EvalInputs(
            # val is read whole (a few thousand rows at most), train stays memory-mapped
            folder=self.dir, dataset=self.dataset, train=self.load_split("train"),
            val={k: np.array(v) for k, v in self.load_split("val").items()},
            tokenizer=pipe.tokenizer if pipe is not None else from_pretrained(self.dir / "tokenizer", self.device),
            pipeline=pipe, val_latents=self.load_latents("val") if pipe is not None else None,
            samples=samples, sampling=self.sampling(pipe) if pipe is not None else {},
            batch_size=self.cfg.sample.batch_size, device=self.device)

    def stage_eval(self) -> None:
        from latentforge.eval.run_metrics import evaluate

        metrics = evaluate(self.eval_inputs(), self.cfg.eval, progress=self.progress)
        write_json(self.dir / "metrics.json", metrics)
        # the saved models' cards gain the numbers that describe them
        scores = {k: v for k, v in metrics.items() if k != "eval"}
        for stage in TRAINING_STAGES:
            if (self.dir / stage / "config.json").is_file():
                write_model_card(self.dir / stage, data=self.card_data(), metrics=scores)

    def stage_report(self) -> None:
        from latentforge.report.html import write_report

        write_report(self.dir)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def remove_run(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)
