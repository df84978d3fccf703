"""Shapes-Edit: instruction-following edits of Shapes scenes, with rules that refuse some (P2 ATVC).

An example is (input scene, instruction, target scene or None, answer): the small analogue of
CLEVR-ATVC's (image, query, re-created image, answer) tuples. Instructions come from three
templates, each naming an object by a referring expression "the <colour> <shape>":

    add:       "add a small red circle left of the blue square"
    remove:    "remove the blue triangle"
    recolour:  "make the blue triangle red"

`apply_instruction` is the rule book. It checks, in this order, and refuses with a fixed
explanation at the first rule that fails (the target is then None: nothing is re-created):

    absent     no object matches the reference      "no, because there is no blue triangle"
    ambiguous  more than one object matches it      "no, because there is more than one blue triangle"
    forbidden  the new colour is FORBIDDEN_COLOR    "no, because magenta is not allowed"
    no room    the added object would leave the     "no, because there is no room left of the blue square"
               canvas or crowd another object

and otherwise answers "yes, ..." with a short confirmation and the edited scene. Where an added
object goes is a pure function of the instruction and the scene (`placement`), so the re-created
image has one right answer the scene parser can check. `sample_edit` draws one example per
(seed, split, index) with a chosen mix of outcomes ("kinds"); `allowed_new` limits the (shape,
colour) pairs an edit may create, which is how a held-out combination is kept out of training.
`counterfactual_target` is what a refused instruction would have made had its rule been ignored
(a filler for a refusal's re-created-image slot that does not give the verdict away).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from latentforge.data.shapes import (
    BORDER,
    COLORS,
    GAP,
    MARGIN,
    SHAPES,
    SIZE_SIDE,
    SIZES,
    SceneGraph,
    ShapeObject,
    ShapesConfig,
    _split_id,
    box_offsets,
    object_box,
    sample_scene,
)

OPERATIONS: tuple[str, ...] = ("add", "remove", "recolour")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# The one colour no edit may create (add or recolour); objects already that colour may be removed.
FORBIDDEN_COLOR = "magenta"
ACCEPTED: tuple[str, ...] = ("add", "remove", "recolour")
REJECTED: tuple[str, ...] = ("absent", "ambiguous", "forbidden", "no_room")
KINDS: tuple[str, ...] = ACCEPTED + REJECTED
# Space between the reference's box and the added object's box (~2.6 px at 32 px), and the shift
# along the other axis that keeps the two centres apart on both axes (the renderer's MARGIN rule,
# so every relation in the edited scene stays readable from the image).
ADD_GAP = 0.08
ADD_SHIFT = MARGIN
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Instruction:
    """One edit. `ref_*` name the object referred to; `new_*` what add creates / the recolour's colour."""

    op: str
    ref_shape: str
    ref_color: str
    new_shape: str = ""      # add
    new_color: str = ""      # add, recolour
    new_size: str = ""       # add
    relation: str = ""       # add: where the new object goes relative to the reference

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            raise ValueError(f"op {self.op!r} is not one of {OPERATIONS}")
        if self.ref_shape not in SHAPES or self.ref_color not in COLORS:
            raise ValueError(f"reference {self.ref_color!r} {self.ref_shape!r} is not a Shapes colour and shape")
        if self.op == "add" and (self.new_shape not in SHAPES or self.new_color not in COLORS
                                 or self.new_size not in SIZES or self.relation not in RELATIONS):
            raise ValueError(f"add needs new_shape, new_color, new_size and relation, got {self}")
        if self.op == "recolour" and self.new_color not in COLORS:
            raise ValueError(f"recolour needs new_color, got {self.new_color!r}")

    @property
    def reference(self) -> str:
        return f"the {self.ref_color} {self.ref_shape}"

    @property
    def created(self) -> tuple[str, str] | None:
        """The (shape, colour) pair this edit would create, if any."""
        if self.op == "add":
            return self.new_shape, self.new_color
        if self.op == "recolour":
            return self.ref_shape, self.new_color
        return None

    def text(self) -> str:
        if self.op == "add":
            return f"add a {self.new_size} {self.new_color} {self.new_shape} {self.relation} {self.reference}"
        if self.op == "remove":
            return f"remove {self.reference}"
        return f"make {self.reference} {self.new_color}"


@dataclass(frozen=True)
class EditExample:
    scene: SceneGraph
    instruction: Instruction
    target: SceneGraph | None   # None when refused
    answer: str
    kind: str                   # one of KINDS: the operation when accepted, the failed rule when refused

    @property
    def accepted(self) -> bool:
        return self.target is not None


# --- the rule book ----------------------------------------------------------------


def placement(ref: ShapeObject, shape: str, size: str, relation: str) -> tuple[float, float]:
    """Centroid of an object (shape, size) added `relation` the object `ref`: its box ADD_GAP from
    ref's box on that side, its centre ADD_SHIFT past ref's centre on the other axis (down for
    left/right, right for above/below)."""
    left, top, right, bottom = box_offsets(shape, SIZE_SIDE[size])
    r_left, r_top, r_right, r_bottom = object_box(ref)
    if relation == "left of":
        return r_left - ADD_GAP - right, ref.y + ADD_SHIFT
    if relation == "right of":
        return r_right + ADD_GAP - left, ref.y + ADD_SHIFT
    if relation == "above":
        return ref.x + ADD_SHIFT, r_top - ADD_GAP - bottom
    if relation == "below":
        return ref.x + ADD_SHIFT, r_bottom + ADD_GAP - top
    raise ValueError(f"relation {relation!r} is not one of {RELATIONS}")


def fits(new: ShapeObject, others: Sequence[ShapeObject]) -> bool:
    """The renderer's placement rules: inside the BORDER, boxes GAP apart, centres MARGIN apart on both axes."""
    left, top, right, bottom = object_box(new)
    if min(left, top) < BORDER - _TOLERANCE or max(right, bottom) > 1 - BORDER + _TOLERANCE:
        return False
    for o in others:
        o_left, o_top, o_right, o_bottom = object_box(o)
        apart = (left >= o_right + GAP - _TOLERANCE or right <= o_left - GAP + _TOLERANCE
                 or top >= o_bottom + GAP - _TOLERANCE or bottom <= o_top - GAP + _TOLERANCE)
        separated = abs(new.x - o.x) >= MARGIN - _TOLERANCE and abs(new.y - o.y) >= MARGIN - _TOLERANCE
        if not (apart and separated):
            return False
    return True


def _edit(scene: SceneGraph, ins: Instruction, k: int) -> list[ShapeObject]:
    """The objects after `ins` acts on object k, whatever the rules say (an added object goes to
    its `placement`, even off the canvas or onto another object)."""
    objects = list(scene.objects)
    ref = objects[k]
    if ins.op == "add":
        x, y = placement(ref, ins.new_shape, ins.new_size, ins.relation)
        objects.append(ShapeObject(ins.new_shape, ins.new_color, ins.new_size, x, y))
    elif ins.op == "remove":
        del objects[k]
    else:
        objects[k] = replace(ref, color=ins.new_color)
    return objects


def _matches(scene: SceneGraph, ins: Instruction) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if (o.shape, o.color) == (ins.ref_shape, ins.ref_color)]


def apply_instruction(scene: SceneGraph, ins: Instruction) -> EditExample:
    """Judge an instruction against a scene: the refusal of the first failed rule, or the edit."""

    def refuse(kind: str, why: str) -> EditExample:
        return EditExample(scene, ins, None, f"no, because {why}", kind)

    matches = _matches(scene, ins)
    name = f"{ins.ref_color} {ins.ref_shape}"
    if not matches:
        return refuse("absent", f"there is no {name}")
    if len(matches) > 1:
        return refuse("ambiguous", f"there is more than one {name}")
    if ins.op != "remove" and ins.new_color == FORBIDDEN_COLOR:
        return refuse("forbidden", f"{FORBIDDEN_COLOR} is not allowed")
    objects = _edit(scene, ins, matches[0])
    if ins.op == "add":
        if not fits(objects[-1], scene.objects):
            return refuse("no_room", f"there is no room {ins.relation} {ins.reference}")
        answer = f"yes, added a {ins.new_size} {ins.new_color} {ins.new_shape}"
    elif ins.op == "remove":
        answer = f"yes, removed {ins.reference}"
    else:
        answer = f"yes, {ins.reference} is now {ins.new_color}"
    return EditExample(scene, ins, SceneGraph.from_objects(objects), answer, ins.op)


def counterfactual_target(example: EditExample) -> SceneGraph:
    """The scene the instruction would have produced had its rule been ignored: the target when
    accepted; for a forbidden colour the magenta object added / recoloured anyway; for no room the
    object at its computed placement anyway (overlapping or clipped, as the renderer draws it); for
    an absent (or ambiguous) reference the input unchanged, as there is no single object to act on.

    A teacher-forced filler for a refusal's re-created-image slot: unlike the unchanged input, it
    does not tell a forbidden or no-room refusal from an accepted edit, so the verdict has to be
    read from the instruction and the input image."""
    if example.accepted:
        return example.target
    if example.kind in ("forbidden", "no_room"):
        return SceneGraph.from_objects(_edit(example.scene, example.instruction,
                                             _matches(example.scene, example.instruction)[0]))
    return example.scene


# --- sampling ---------------------------------------------------------------------


ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((s, c) for s in SHAPES for c in COLORS)
# Created in no training example (add or recolour), so their edits test composition.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (("triangle", "yellow"), ("square", "cyan"))


@dataclass
class EditConfig:
    """How examples are drawn. `kinds`: relative weight of each outcome (KINDS); `allowed_new`:
    the (shape, colour) pairs accepted and no-room edits may create (refusals for a forbidden
    colour create FORBIDDEN_COLOR, whatever this says)."""

    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    kinds: Mapping[str, float] = field(default_factory=lambda: {
        "add": 1.0, "remove": 1.0, "recolour": 1.0, "absent": 1.0, "forbidden": 1.0, "no_room": 1.0})
    allowed_new: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds or min(self.kinds.values()) < 0 or sum(self.kinds.values()) <= 0:
            raise ValueError(f"kinds must weigh some of {KINDS} with non-negative weights, got {dict(self.kinds)}")
        usable = [p for p in self.allowed_new if p[1] != FORBIDDEN_COLOR]
        if not usable:
            raise ValueError(f"allowed_new needs a (shape, colour) pair not in {FORBIDDEN_COLOR}")


def _unique_objects(scene: SceneGraph) -> list[ShapeObject]:
    pairs = [(o.shape, o.color) for o in scene.objects]
    return [o for o, p in zip(scene.objects, pairs) if pairs.count(p) == 1]


def _propose(rng: np.random.Generator, scene: SceneGraph, kind: str, cfg: EditConfig) -> Instruction | None:
    """A random instruction meant to come out as `kind` (the caller checks that it does)."""
    new_pairs = [p for p in cfg.allowed_new if p[1] != FORBIDDEN_COLOR]
    unique = _unique_objects(scene)
    present = {(o.shape, o.color) for o in scene.objects}
    if kind == "absent":
        ref_shape, ref_color = [p for p in ALL_PAIRS if p not in present][rng.integers(len(ALL_PAIRS) - len(present))]
        op = OPERATIONS[rng.integers(len(OPERATIONS))]
    elif kind == "ambiguous":
        repeated = sorted(p for p in present if sum((o.shape, o.color) == p for o in scene.objects) > 1)
        if not repeated:
            return None
        ref_shape, ref_color = repeated[rng.integers(len(repeated))]
        op = OPERATIONS[rng.integers(len(OPERATIONS))]
    else:
        if not unique:
            return None
        ref = unique[rng.integers(len(unique))]
        ref_shape, ref_color = ref.shape, ref.color
        op = {"add": "add", "no_room": "add", "remove": "remove", "recolour": "recolour",
              "forbidden": ("add", "recolour")[rng.integers(2)]}[kind]
    if op == "remove":
        return Instruction("remove", ref_shape, ref_color)
    if op == "recolour":
        colours = [c for s, c in new_pairs if s == ref_shape and c != ref_color]
        if kind == "forbidden":
            colours = [FORBIDDEN_COLOR] if ref_color != FORBIDDEN_COLOR else []
        if not colours:
            return None
        return Instruction("recolour", ref_shape, ref_color, new_color=colours[rng.integers(len(colours))])
    shape, colour = new_pairs[rng.integers(len(new_pairs))]
    if kind == "forbidden":
        colour = FORBIDDEN_COLOR
    return Instruction("add", ref_shape, ref_color, new_shape=shape, new_color=colour,
                       new_size=SIZES[rng.integers(len(SIZES))], relation=RELATIONS[rng.integers(len(RELATIONS))])


def sample_edit(cfg: EditConfig, split: str, index: int, tries: int = 64) -> EditExample | None:
    """Example `index` of `split`: a pure function of (cfg, split, index). The input scene is the
    Shapes scene of the same (seed, split, index), so splits never share a scene. A kind is drawn
    by `cfg.kinds`; when the scene cannot give it in `tries` proposals (no unique object, no side
    without room, ...) the other kinds are tried in a random order. None when the scene gives none
    (e.g. kinds without "absent" and a scene of two identical objects)."""
    scene = sample_scene(cfg.shapes, split, index)
    rng = np.random.default_rng([cfg.shapes.seed, _split_id(split), int(index), 0xED17])
    names = [k for k in cfg.kinds if cfg.kinds[k] > 0]
    weights = np.array([cfg.kinds[k] for k in names], np.float64)
    first = int(rng.choice(len(names), p=weights / weights.sum()))
    for kind in [names[first]] + [names[k] for k in rng.permutation(len(names)) if k != first]:
        for _ in range(tries):
            ins = _propose(rng, scene, kind, cfg)
            if ins is None:
                break
            example = apply_instruction(scene, ins)
            if example.kind == kind:
                return example
    return None


def sample_edits(cfg: EditConfig, split: str, indices: Sequence[int]) -> list[EditExample]:
    """`sample_edit` over indices, leaving out the scenes that give no example."""
    return [e for e in (sample_edit(cfg, split, i) for i in indices) if e is not None]


def edit_words() -> list[str]:
    """Every instruction and answer text the templates can produce, as a corpus for `build_vocab`:
    the vocabulary then never depends on which examples were sampled."""
    texts = [f"no, because {FORBIDDEN_COLOR} is not allowed"]
    for shape in SHAPES:
        for colour in COLORS:
            name = f"{colour} {shape}"
            texts += [f"add a {size} {name} {rel} the {name}" for size in SIZES for rel in RELATIONS]
            texts += [f"remove the {name}", f"make the {name} {colour}", f"yes, removed the {name}",
                      f"yes, the {name} is now {colour}", f"no, because there is no {name}",
                      f"no, because there is more than one {name}"]
            texts += [f"yes, added a {size} {name}" for size in SIZES]
            texts += [f"no, because there is no room {rel} the {name}" for rel in RELATIONS]
    return texts


def is_heldout(example: EditExample, pairs: Sequence[tuple[str, str]] = HELDOUT_PAIRS) -> bool:
    """Whether the instruction would create a held-out (shape, colour) pair."""
    return example.instruction.created in set(pairs)

