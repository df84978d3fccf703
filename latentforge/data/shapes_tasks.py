"""Shapes-Tasks: image-to-image tasks on Shapes scenes, chosen in context by example pairs (P12 LaVin-DiT).

LaVin-DiT trains one diffusion transformer on many vision tasks and tells it which task to do by
showing 1-3 (input, target) example pairs next to the query. This is a procedural stand-in: every
task is a deterministic function of a Shapes scene, so every target is exact.

A task is a short chain of steps: first scene edits, re-rendered from the edited scene graph, then
at most one image op that makes the target.

    scene edits   recolour:k   every object takes the k-th next colour of COLORS (a cyclic
                               permutation of the six colours: one fixed colour map per k)
                  move:dx,dy   every object shifted by (dx, dy) pixels (x right, y down; drawn clipped)
    image ops     flip:h/v     the rendered image mirrored left-right / top-bottom
                  edge         white object boundary pixels on black (see `object_map`)
                  segment      the shape class map in shapes_seg.PALETTE colours
                  fill         the query is the objects' outlines in their colours; the target the render

Everything else keeps the input the plain render of the original scene. Chains such as
"recolour:1+flip:h" are held-out *combinations*: each step is seen alone in training, never together.

Legend: T tasks, S scenes, B batch, N context pairs, H = W = image side, C = 3 colour channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from latentforge.data.shapes import (
    BACKGROUND,
    COLORS,
    SceneGraph,
    ShapeObject,
    ShapesConfig,
    object_coverages,
    render,
    sample_scene,
)
from latentforge.data.shapes_seg import COVERED, class_map, colorize, to_model_input

SCENE_EDITS: tuple[str, ...] = ("recolour", "move")
IMAGE_OPS: tuple[str, ...] = ("flip", "edge", "segment", "fill")
EDGE_ON, EDGE_OFF = 255, 0  # the edge map's two grey levels


# --- tasks --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of a task: an op of SCENE_EDITS or IMAGE_OPS and its integer arguments."""

    op: str
    args: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        expected = {"recolour": 1, "move": 2, "flip": 1, "edge": 0, "segment": 0, "fill": 0}
        if self.op not in expected:
            raise ValueError(f"unknown op {self.op!r}: one of {', '.join(expected)}")
        if len(self.args) != expected[self.op]:
            raise ValueError(f"{self.op} takes {expected[self.op]} argument(s), got {self.args}")
        if self.op == "flip" and self.args[0] not in (0, 1):
            raise ValueError(f"flip's axis is 0 (h: left-right) or 1 (v: top-bottom), got {self.args[0]}")

    @property
    def name(self) -> str:
        if self.op == "flip":
            return "flip:" + "hv"[self.args[0]]
        return self.op + (":" + ",".join(map(str, self.args)) if self.args else "")


@dataclass(frozen=True)
class Task:
    """Scene edits in order, then at most one image op (last)."""

    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a task needs at least one step")
        ops = [s.op for s in self.steps]
        if any(op in IMAGE_OPS for op in ops[:-1]):
            raise ValueError(f"an image op ({', '.join(IMAGE_OPS)}) may only be a task's last step, got {ops}")

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.steps)

    @classmethod
    def parse(cls, name: str) -> Task:
        """'recolour:1+flip:h' -> Task; the inverse of `name`."""
        steps = []
        for part in name.split("+"):
            op, _, arg = part.partition(":")
            if op == "flip":
                args: tuple[int, ...] = ("hv".index(arg),) if arg in ("h", "v") else (-1,)
            else:
                args = tuple(int(a) for a in arg.split(",")) if arg else ()
            steps.append(Step(op, args))
        return cls(tuple(steps))


# Seen in training: each op alone. Held out: combinations of seen steps, and one unseen move offset.
# Moves are by one 4-pixel patch of benchmarks/lavin.py's model: a move is then a token shift.
TRAIN_TASKS: tuple[str, ...] = ("recolour:1", "recolour:3", "move:4,0", "move:0,4", "move:-4,0",
                                "flip:h", "flip:v", "edge", "segment", "fill")
HELD_OUT_TASKS: tuple[str, ...] = ("recolour:1+flip:h", "move:4,0+flip:v", "recolour:3+move:0,4", "move:0,-4")


# --- rendering the steps --------------------------------------------------------------------------------


def recolour(scene: SceneGraph, k: int) -> SceneGraph:
    """Every object takes the colour k places further along COLORS (cyclically)."""
    names = tuple(COLORS)
    objects = [dataclasses.replace(o, color=names[(names.index(o.color) + k) % len(names)]) for o in scene.objects]
    return SceneGraph(tuple(objects), scene.relations)


def move(scene: SceneGraph, dx: int, dy: int, size: int) -> SceneGraph:
    """Every object shifted by (dx, dy) pixels of a `size`-pixel image. Relations are kept as they were
    (a common shift changes none); objects pushed past the border are drawn clipped."""
    objects = [ShapeObject(o.shape, o.color, o.size, o.x + dx / size, o.y + dy / size) for o in scene.objects]
    return SceneGraph(tuple(objects), scene.relations)


def object_map(scene: SceneGraph, size: int, supersample: int = 4) -> np.ndarray:
    """Per-pixel object index + 1 (0 = background), uint8 [size, size]: an object owns the pixels it
    covers at least half of (shapes_seg.COVERED), later objects over earlier ones (as `render` draws)."""
    ids = np.zeros((size, size), np.uint8)
    for k, (_, (y0, y1, x0, x1), coverage) in enumerate(object_coverages(scene, size, supersample)):
        ids[y0:y1, x0:x1][coverage >= COVERED] = k + 1
    return ids


def boundary(ids: np.ndarray) -> np.ndarray:
    """bool [H, W]: object pixels with a 4-neighbour of another object or of the background (pixels
    outside the image count as background, so an object cut by the border is closed there)."""
    padded = np.pad(ids, 1)
    centre = padded[1:-1, 1:-1]
    differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
               | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    return (ids > 0) & differs


def edge_map(scene: SceneGraph, size: int, supersample: int = 4) -> np.ndarray:
    """uint8 [size, size, 3]: EDGE_ON on every object's boundary pixels, EDGE_OFF elsewhere."""
    edges = boundary(object_map(scene, size, supersample))
    return np.repeat(np.where(edges, EDGE_ON, EDGE_OFF).astype(np.uint8)[..., None], 3, -1)


def outline(scene: SceneGraph, size: int, supersample: int = 4) -> np.ndarray:
    """uint8 [size, size, 3]: each object's boundary pixels in its own colour, the background elsewhere
    (the query of `fill`)."""
    ids = object_map(scene, size, supersample)
    edges = boundary(ids)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BACKGROUND
    colours = np.array([BACKGROUND] + [COLORS[o.color] for o in scene.objects], np.uint8)  # [1 + objects, 3]
    image[edges] = colours[ids[edges]]
    return image


def apply_task(task: Task, scene: SceneGraph, size: int, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) uint8 [size, size, 3] of `task` on `scene`."""
    edited = scene
    for step in task.steps:
        if step.op == "recolour":
            edited = recolour(edited, step.args[0])
        elif step.op == "move":
            edited = move(edited, *step.args, size)
    last = task.steps[-1]
    source = outline(scene, size, supersample) if last.op == "fill" else render(scene, size, supersample)
    if last.op == "flip":
        target = np.ascontiguousarray(np.flip(render(edited, size, supersample), axis=1 - last.args[0]))
    elif last.op == "edge":
        target = edge_map(edited, size, supersample)
    elif last.op == "segment":
        target = colorize(class_map(edited, size, supersample))
    else:  # scene edits alone, or fill: the render of the (edited) scene
        target = render(edited, size, supersample)
    return source, target


# --- in-context batches ------------------------------------------------------------------------------------

ContextKind = Literal["correct", "wrong", "shuffled"]


class TaskPairs:
    """Every task's (input, target) images on the same S scenes of one split, and batches of
    (context pairs, query, target) drawn from them.

    A batch's context comes from scenes other than its query's. `context`:
        correct   the query's task
        wrong     another task of this bank (one per example, uniform)
        shuffled  the query's task, but each pair's target is that of yet another scene, so the pairs
                  show the task's outputs without the input -> output relation
    """

    def __init__(self, shapes: ShapesConfig, split: str, tasks: Sequence[str], scenes: int,
                 start: int = 0) -> None:
        if scenes < 3:
            raise ValueError(f"need at least 3 scenes (a query and a context pair, shuffled: 3), got {scenes}")
        self.tasks = tuple(tasks)
        self.size = shapes.size
        graphs = [sample_scene(shapes, split, start + i) for i in range(scenes)]
        pairs = [[apply_task(Task.parse(t), g, shapes.size, shapes.supersample) for g in graphs] for t in self.tasks]
        arrays = np.array(pairs, np.uint8)                                           # [T, S, 2, H, W, 3]
        self.inputs = to_model_input(arrays[:, :, 0].reshape(-1, self.size, self.size, 3)).unflatten(
            0, arrays.shape[:2])                                                     # [T, S, C, H, W]
        self.targets = to_model_input(arrays[:, :, 1].reshape(-1, self.size, self.size, 3)).unflatten(
            0, arrays.shape[:2])

    def sample(self, batch: int, pairs: int | tuple[int, int], generator: torch.Generator, *,
               max_pairs: int | None = None, task: Tensor | None = None, context: ContextKind = "correct") -> dict[str, Tensor]:
        """A batch of in-context examples.

        Args:
            pairs: context pairs per example, or a (low, high) range drawn per example.
            max_pairs: pad to this many pairs (default: the most drawn); padding comes first, so the
                real pairs sit right before the query, and `pair_mask` marks the real ones.
            task: int64 [B] task indices into `self.tasks` (default: uniform).

        Returns: context [B, N, 2, C, H, W] in [-1, 1], pair_mask bool [B, N], query and target
            [B, C, H, W], task int64 [B].
        """
        low, high = (pairs, pairs) if isinstance(pairs, int) else pairs
        n = torch.randint(low, high + 1, (batch,), generator=generator)              # [B]
        N = max_pairs or high
        if not 1 <= low <= high <= N:
            raise ValueError(f"pairs {pairs} must lie in [1, max_pairs={N}]")
        T, S = self.inputs.shape[:2]
        if S < 2 * N + 1:
            raise ValueError(f"{S} scenes cannot give {N} context pairs distinct scenes (need {2 * N + 1})")
        if task is None:
            task = torch.randint(T, (batch,), generator=generator)
        # 2N + 1 distinct scenes per example: the query's, the pairs' inputs, and (shuffled only) the
        # scenes whose targets stand in for the pairs' own
        scene = torch.rand(batch, S, generator=generator).argsort(1)[:, :2 * N + 1]   # [B, 2N + 1]
        query, ctx_scene = scene[:, 0], scene[:, 1:N + 1]                             # [B], [B, N]
        ctx_out_scene = scene[:, N + 1:] if context == "shuffled" else ctx_scene
        ctx_task = task[:, None].expand(-1, N)                                        # [B, N]
        if context == "wrong":
            if T < 2:
                raise ValueError("wrong-task context needs a second task in the bank")
            # a uniform other task: shift the query's task index by 1 .. T - 1
            ctx_task = ((task + torch.randint(1, T, (batch,), generator=generator)) % T)[:, None].expand(-1, N)
        ins = self.inputs[ctx_task, ctx_scene]                                       # [B, N, C, H, W]
        outs = self.targets[ctx_task, ctx_out_scene]
        pair_mask = torch.arange(N)[None] >= (N - n[:, None])                        # [B, N]
        return {"context": torch.stack([ins, outs], 2), "pair_mask": pair_mask,
                "query": self.inputs[task, query], "target": self.targets[task, query], "task": task}

    def mean_targets(self) -> Tensor:
        """Each task's mean target image [T, C, H, W] (a baseline that knows the task but not the query)."""
        return self.targets.mean(1)
