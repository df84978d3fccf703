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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from latentforge.conditioning.base import Context
from latentforge.generators.sampling import guide


@dataclass(frozen=True)
class Guidance:
    n: int                                   # samples drawn
    context: Context | None                  # [rows] contexts: [cond; null] when guided
    scale: float | Sequence[float] = 1.0     # as the caller gave it (hierarchical: one per level)
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
        if isinstance(s, Sequence):
            raise TypeError(f"cfg_scale must be one number here, got {s!r} (one per level is a hierarchical "
                            "generator's option)")
        return out.chunk(2)[0] if s == 1.0 else guide(out, s)

    def __call__(self, model: Callable[..., Tensor], *inputs: Tensor, scale: float | None = None) -> Tensor:
        """The guided model call: `model` on per-row copies of per-sample `inputs` [n, ...], mixed to [n, ...]."""
        return self.mix(model(*(self.rows_of(x) for x in inputs)), scale)
