"""Classifier-free guidance, batched once per sampling run.

Legend: n samples, rows = n (unguided) or 2n (guided: [cond; null]), ... any trailing axes.

`Generator.guidance` builds a `Guidance` from the caller's condition and scale; every family's
sampler then makes its model calls through it, never looking at cfg_scale itself:

    g.context            the context of every row: cond [n], or [cond; null] [2n] when guided
    g.rows_of(x)         per-sample input [n, ...] -> per-row [rows, ...] (both halves see the same tokens)
    g.mix(out)           per-row model output [rows, ...] -> guided output [n, ...], fp32: u + s (c - u)
    g(model, *inputs)    the guided model call: mix(model(*rows_of(inputs)))

A scale of exactly 1 on a guided run (one level of a hierarchical model, an early step of MAR's
linear schedule) returns the conditional half as it is rather than u + 1 (c - u), which differs
from it by float rounding.

A scale may also be a `GuidanceSchedule`: a scale per step, from the sampling progress p in [0, 1]
(0 at the start, 1 when sampling is done). What p measures is the family's: for diffusion / flow
one minus the noise level of the step's model call (noise.py, `progress`), for the token families
the fraction of tokens fixed once the step's draws are made (MAR's and Muse's ramps reach the full
scale at the last step). Guidance only inside an interval of p (Kynkäänniemi et al. 2024) keeps
the early, layout-setting steps unguided (diversity) and the late ones too (they barely move);
a ramp (MUSE, MAR) lets the scale grow with p. A family asks `g.at(progress)` for each step's
Guidance: inside the interval a guided one with that step's number, outside it an unguided one
over the conditional rows alone, so those steps run the model on n rows instead of 2n (the speed
win). Families whose decoding keeps per-row caches (causal decoders) must keep the null rows up
to date and ask `at(..., keep_rows=True)`: same numbers, no saving. A plain number never changes
with the step: `at` returns the run's Guidance as it is, so today's results stay bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from torch import Tensor

from latentforge.conditioning.base import Context
from latentforge.generators.sampling import guide


@dataclass(frozen=True)
class GuidanceSchedule:
    """A classifier-free guidance scale per sampling step, from the progress p in [0, 1].

    Outside `interval` (closed, in p) the scale is 1: no guidance, and the step skips the null
    rows. Inside it, `ramp` "constant" gives `scale`, "linear" 1 + (scale - 1) p, "power"
    1 + (scale - 1) p^power (the scale rises with progress, as MUSE and MAR grow it).
    """

    scale: float
    interval: tuple[float, float] = (0.0, 1.0)
    ramp: Literal["constant", "linear", "power"] = "constant"
    power: float = 1.0                       # the "power" ramp's exponent

    def __post_init__(self) -> None:
        lo, hi = self.interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"guidance interval must be 0 <= lo <= hi <= 1 in sampling progress, got {self.interval}")
        if self.ramp not in ("constant", "linear", "power"):
            raise ValueError(f"guidance ramp must be 'constant', 'linear' or 'power', got {self.ramp!r}")
        if self.power <= 0:
            raise ValueError(f"the power ramp's exponent must be > 0, got {self.power}")

    def at(self, done: float, total: float = 1.0) -> float:
        """The scale of a step at progress p = done / total (a count of tokens fixed, or p itself)."""
        p = done / total
        lo, hi = self.interval
        if not lo <= p <= hi:
            return 1.0
        if self.ramp == "constant":
            return self.scale
        if self.ramp == "linear":
            return 1 + (self.scale - 1) * done / total   # MAR's expression, so its schedule stays bit for bit
        return 1 + (self.scale - 1) * p ** self.power


Scale = float | Sequence[float] | GuidanceSchedule
T = TypeVar("T")


@dataclass(frozen=True)
class Guidance:
    n: int                                   # samples drawn
    context: Context | None                  # [rows] contexts: [cond; null] when guided
    scale: Scale = 1.0                       # as the caller gave it (hierarchical: one per level; a schedule)
    guided: bool = False                     # rows are [cond; null]

    @property
    def rows(self) -> int:
        return 2 * self.n if self.guided else self.n

    def rows_of(self, x: Tensor) -> Tensor:
        """A per-sample tensor [n, ...] for every row [rows, ...]: the null half gets the same values
        (as in `mix`, the leading axis may be a multiple of n)."""
        return x.repeat(2, *[1] * (x.dim() - 1)) if self.guided else x

    def mix(self, out: Tensor, scale: float | None = None) -> Tensor:
        """Model outputs of every row [rows, ...] -> guided outputs [n, ...] in fp32.

        The leading axis may also be a multiple of the rows laid out the same way, [cond...; null...]
        (MAR's head draws k tokens per sample: [2nk, C] -> [nk, C]). `scale` overrides the run's
        scale for this call (a per-level or per-step schedule).
        """
        out = out.float()
        if not self.guided:
            return out
        s = self.scale if scale is None else scale
        if isinstance(s, GuidanceSchedule):
            raise TypeError("this guidance has a per-step schedule: mix through the step's Guidance, g.at(progress)")
        if isinstance(s, Sequence):
            raise TypeError(f"cfg_scale must be one number here, got {s!r} (one per level is a hierarchical "
                            "generator's option)")
        return out.chunk(2)[0] if s == 1.0 else guide(out, s)

    def __call__(self, model: Callable[..., Tensor], *inputs: Tensor, scale: float | None = None) -> Tensor:
        """The guided model call: `model` on per-row copies of per-sample `inputs` [n, ...], mixed to [n, ...]."""
        return self.mix(model(*(self.rows_of(x) for x in inputs)), scale)

    def at(self, done: float, total: float = 1.0, *, keep_rows: bool = False) -> Guidance:
        """The Guidance of one step at progress done / total (see `GuidanceSchedule.at`).

        A plain-number run returns itself. A scheduled one returns a Guidance with this step's
        number; where that is 1 (outside the interval), an unguided one over the n conditional
        rows, whose model calls skip the null half, unless `keep_rows` (decoders whose per-row
        caches must see every step): then the rows stay [cond; null] and `mix` keeps the cond half.
        """
        if not self.guided or not isinstance(self.scale, GuidanceSchedule):
            return self
        s = self.scale.at(done, total)
        if s != 1.0 or keep_rows:
            return dataclasses.replace(self, scale=s)
        return Guidance(self.n, _first_rows(self.context, self.n), 1.0, guided=False)


def by_rows(prepare: Callable[[Context | None], T]) -> Callable[[Guidance], T]:
    """`prepare(context)` (a family's per-run condition features: pooled vectors, cross-attention
    keys and values) computed once per row layout a run's steps use: [cond; null] and, on the steps
    a schedule leaves unguided, cond alone."""
    done: dict[int, T] = {}

    def get(step: Guidance) -> T:
        if step.rows not in done:
            done[step.rows] = prepare(step.context)
        return done[step.rows]

    return get


def _first_rows(context: Context | None, n: int) -> Context | None:
    """The conditional half [n] of a guided run's [cond; null] contexts."""
    if context is None:
        return None
    spatial = None if context.spatial is None else context.spatial[:n]
    return Context(context.tokens[:n], context.mask[:n], spatial)
