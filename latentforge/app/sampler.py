"""A trained run, loaded once, sampled on request: what the app's page asks for, checked first.

    sampler = RunSampler(run)                          # run: recipes.Run of a run folder
    request = SampleRequest(condition='{"label": 3}', n=4, cfg_scale=1.5, steps=None,
                            temperature=0.7, seed=0)
    result = sampler.sample(request, folder)           # preview files written by the modality

The page is a thin layer over this class, which knows no web framework: a request is checked
field by field (`check` raises a `RequestError` that names the field and the allowed range), the
condition is read by the run's data set exactly as `latentforge sample --condition` reads it,
and the samples come through `Pipeline.sample` (the only sampling path), so a request draws the
same examples as the command line for the same seed and settings. The modality writes the
previews (image grids, GIFs and filmstrips, WAV clips and spectrograms), as it does for the report.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentforge.config import ConfigError
from latentforge.recipes import Run

MAX_SAMPLES = 64        # samples per request, all conditions together: a page shows at most this many
MAX_STEPS = 1000        # sampler steps (diffusion, masked decoding): past this a CPU request runs for minutes
MAX_SEED = 2**63 - 1    # torch.Generator.manual_seed takes a signed 64-bit seed
PICTURES = (".png", ".gif", ".webp", ".jpg")
CLIPS = (".wav",)


class RequestError(ValueError):
    """A request the run cannot sample: the message names the field and what it accepts."""


@dataclass
class SampleRequest:
    condition: str          # JSON as `latentforge sample --condition` reads it; ignored when unconditional
    n: int                  # samples per condition
    cfg_scale: float        # classifier-free guidance scale (conditional runs)
    steps: int | None       # sampler steps, for generators that take them (None: the recipe's or the default)
    temperature: float      # for generators that take one
    seed: int


@dataclass
class SampleResult:
    samples: np.ndarray     # in the modality's stored layout (images: uint8 [N, H, W, 3])
    pictures: list[Path]    # images, GIFs, filmstrips, spectrograms: in the modality's display order
    clips: list[Path]       # audio files, one per sample
    captions: list[str]     # what each sample was drawn for ('' when unconditional)
    seconds: float          # sampling and decoding, without writing the previews
    options: dict[str, Any]  # what the generator's `sample` was given


class RunSampler:
    """The run's pipeline, data set and metrics, held for the server's lifetime."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.dataset = run.dataset
        self.modality = run.modality
        self.pipe = run.pipeline()
        self.generator = self.pipe.generator
        self.conditional = self.generator.conditioner is not None
        # what the condition feeds: "scene_graph", "class", "caption", ... (None: unconditional)
        self.conditioner: str | None = self.generator.config.conditioner.name if self.conditional else None
        self.defaults = run.sampling(self.pipe)   # the recipe's sample section, as `sample` kwargs
        self.accepts = self.generator.sampling_options()
        path = run.dir / "metrics.json"
        self.metrics: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    # -- what the page shows before any request ---------------------------------------------
    def default(self, name: str, fallback: Any = None) -> Any:
        """A sampling knob's starting value: the recipe's, else the generator's own default, else
        `fallback`."""
        if self.defaults.get(name) is not None:
            return self.defaults[name]
        param = inspect.signature(self.generator.sample).parameters.get(name)
        if param is None or param.default is inspect.Parameter.empty or param.default is None:
            return fallback
        return param.default

    def examples(self, k: int = 12) -> list[tuple[str, str]]:
        """Up to k conditions of the validation split as a user writes them: (caption, JSON text).
        Each is read back through `parse_conditions`, so every example offered is one the run
        accepts."""
        if not self.conditional:
            return []
        val = self.run.load_split("val")
        rows = self.dataset.for_sampling({key: np.array(v[:k]) for key, v in self.dataset.conditions(val).items()})
        captions = self.dataset.captions(rows)
        out, seen = [], set()
        for i in range(len(captions)):
            written = self._as_written({key: v[i] for key, v in rows.items()})
            if written is None:
                continue
            text = json.dumps(written)
            try:
                self.dataset.parse_conditions(written, "example")
            except ValueError:
                continue
            if text not in seen:
                seen.add(text)
                out.append((captions[i] or text, text))
        return out

    def _as_written(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """One split row as the condition JSON README documents: a scene graph, a caption (for a
        caption-conditioned generator) or a class."""
        if "graphs" in row:   # scene graphs are stored as the JSON a user writes
            return json.loads(str(row["graphs"]))
        if self.conditioner == "caption" and self.dataset.caption_key in row:
            return {"caption": str(row[self.dataset.caption_key])}
        if "label" in row:
            label = int(row["label"])
            names = self.dataset.class_names
            return {"class": names[label]} if label < len(names) else {"label": label}
        return None

    def classes(self) -> tuple[str, ...]:
        """The class names a user may pick, for a class-conditioned run (none otherwise)."""
        if self.conditioner != "class":
            return ()
        return tuple(self.dataset.class_names)

    def knobs(self) -> dict[str, bool]:
        """Which of the page's sampling controls this generator takes."""
        return {"cfg_scale": self.conditional and "cfg_scale" in self.accepts,
                "steps": "steps" in self.accepts, "temperature": "temperature" in self.accepts}

    # -- a request -----------------------------------------------------------------------------
    def check(self, r: SampleRequest) -> tuple[dict[str, np.ndarray], int, dict[str, Any]]:
        """The condition rows (each repeated n times), the sample count and the generator's sampling
        options of a request; a RequestError naming the first field that is wrong."""
        n = _integer(r.n, "samples per condition", 1, MAX_SAMPLES)
        seed = _integer(r.seed, "seed", 0, MAX_SEED)
        options = dict(self.defaults)
        knobs = self.knobs()
        if knobs["cfg_scale"]:
            options["cfg_scale"] = _number(r.cfg_scale, "guidance scale", low=0.0)
        if knobs["temperature"]:
            options["temperature"] = _number(r.temperature, "temperature", low=0.0, open_low=True)
        if r.steps is not None:
            if not knobs["steps"]:
                raise RequestError(f"steps: generator {self.generator.config.name!r} takes no steps setting "
                                   f"(it takes {', '.join(sorted(self.accepts))})")
            options["steps"] = _integer(r.steps, "steps", 1, MAX_STEPS)
        rows: dict[str, np.ndarray] = {}
        total = n
        if self.conditional:
            text = (r.condition or "").strip()
            if not text:
                raise RequestError(f"condition: empty; this run samples for conditions "
                                   f"({self.dataset.condition_text}) - pick an example or write one")
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                raise RequestError(f"condition: not valid JSON ({err})") from None
            try:
                parsed = self.dataset.parse_conditions(raw, "condition")
            except ValueError as err:
                raise RequestError(str(err)) from None
            if self.conditioner == "caption" and self.dataset.caption_key not in parsed:
                raise RequestError('condition: this run is conditioned on captions; give {"caption": "..."} '
                                   "(the examples menu has some)")
            rows = {k: np.repeat(v, n, axis=0) for k, v in parsed.items()}
            total = len(next(iter(rows.values())))
            if total > MAX_SAMPLES:
                raise RequestError(f"samples per condition: {total // n} conditions x {n} = {total} samples; "
                                   f"a request draws at most {MAX_SAMPLES}")
        return rows, total, {"seed": seed, **options}

    def sample(self, r: SampleRequest, folder: Path) -> SampleResult:
        """Check the request, draw its samples and write their previews into `folder`."""
        rows, total, options = self.check(r)
        seed = options.pop("seed")
        t = time.perf_counter()
        try:
            samples, given = self.pipe.sample(rows, total, seed, self.dataset, options,
                                              self.run.cfg.sample.batch_size)
        except ConfigError as err:
            raise RequestError(str(err)) from None
        seconds = time.perf_counter() - t
        captions = self.dataset.captions(given) if given else [""] * len(samples)
        folder.mkdir(parents=True, exist_ok=True)
        files = self.modality.preview(samples, captions if given else None, folder / "samples",
                                      title=f"{self.run.dir.name}: seed {seed}")
        paths = [folder / f for f in files]
        return SampleResult(samples=samples, pictures=[p for p in paths if p.suffix.lower() in PICTURES],
                            clips=[p for p in paths if p.suffix.lower() in CLIPS],
                            captions=captions, seconds=seconds, options={"seed": seed, **options})


def _integer(value: Any, name: str, low: int, high: int) -> int:
    """A whole number in [low, high] (a float with no fraction counts: web forms send 4.0)."""
    if isinstance(value, bool) or value is None:
        raise RequestError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name}: expected a whole number from {low} to {high}, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise RequestError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")
    if not low <= int(number) <= high:
        raise RequestError(f"{name}: {int(number)} is out of range; it takes {low} to {high}")
    return int(number)


def _number(value: Any, name: str, low: float, open_low: bool = False) -> float:
    """A finite number >= low (> low when open_low)."""
    bound = f"> {low:g}" if open_low else f">= {low:g}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name}: expected a number {bound}, got {value!r}") from None
    if not math.isfinite(number) or number < low or (open_low and number == low):
        raise RequestError(f"{name}: {value!r} is out of range; it takes a finite number {bound}")
    return number
