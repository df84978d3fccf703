"""Scene parser for the Shapes data set: the judge of generated images.

`parse_scene` reads an image back into a scene graph without any learned network:

1. every pixel is explained as a blend of the background and one palette colour;
   its blend factor (alpha) is the fraction of the pixel an object of that colour
   covers, which is exactly how the renderer anti-aliases edges;
2. pixels closer to a colour than to the background (alpha >= 0.5) form connected
   components per colour; components much smaller than the smallest object are noise;
3. each component's centroid is its alpha-weighted mean, and its shape and size are
   those of the rendered template (same renderer, same centroid) that best explains
   its alpha map: analysis by synthesis, robust even at 16-32 px.

`compare_scenes` and `scene_adherence` then score parsed images against the graphs
they were meant to depict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import permutations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from latentforge.data.shapes import (
    BACKGROUND,
    COLORS,
    SHAPES,
    SIZE_SIDE,
    SIZES,
    SceneGraph,
    ShapeObject,
    pixel_window,
    shape_coverage,
)

_BACKGROUND = np.asarray(BACKGROUND, np.float32)
_DIRECTIONS = np.asarray(list(COLORS.values()), np.float32) - _BACKGROUND  # [K, 3] background -> colour
# A pixel farther than this (RGB units) from every background->colour segment is not
# any palette colour and counts as background.
_MAX_RESIDUAL = 60.0
# Components covering less than 30% of the smallest object (a small triangle) are noise.
_MIN_AREA = 0.3 * 0.5 * SIZE_SIDE["small"] ** 2  # fraction of the image area
_TEMPLATES = [(shape, size) for shape in SHAPES for size in SIZES]
_TEMPLATE_REACH = 0.25  # template window half-side around the centroid: covers any template box
_TEMPLATE_SUPERSAMPLE = 4
# Beyond this many candidate matchings, compare_scenes matches attributes only.
_MAX_ASSIGNMENTS = 50_000


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
    if image.shape[0] != image.shape[1]:
        raise ValueError(f"expected a square image, got {image.shape[0]}x{image.shape[1]}")
    return image


def palette_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Explain each pixel as background blended with its best-fitting palette colour.

    Args:
        image: uint8 [H, W, 3].

    Returns:
        alpha: float32 [H, W, K], per colour the blend factor in [0, 1] of the closest
            point on the background->colour segment (0 where the pixel fits no colour).
        colour: int64 [H, W], index of the colour whose segment is closest.
    """
    p = image.astype(np.float32) - _BACKGROUND  # [H, W, 3]
    norms = (_DIRECTIONS**2).sum(axis=1)  # [K]
    alpha = np.clip(p @ _DIRECTIONS.T / norms, 0.0, 1.0)  # [H, W, K]
    residual = ((p[..., None, :] - alpha[..., None] * _DIRECTIONS) ** 2).sum(axis=-1)  # [H, W, K]
    colour = residual.argmin(axis=-1)
    alpha = np.where(residual <= _MAX_RESIDUAL**2, alpha, 0.0).astype(np.float32)
    return alpha, colour


def _best_template(
    weights: np.ndarray, window: tuple[int, int, int, int], x: float, y: float, side: int
) -> tuple[str, str]:
    """The (shape, size) whose rendering at (x, y) is closest (L1) to the observed alpha map."""
    wy0, wy1, wx0, wx1 = window
    ty0, ty1, tx0, tx1 = pixel_window(
        (x - _TEMPLATE_REACH, y - _TEMPLATE_REACH, x + _TEMPLATE_REACH, y + _TEMPLATE_REACH), side
    )
    y0, y1, x0, x1 = min(wy0, ty0), max(wy1, ty1), min(wx0, tx0), max(wx1, tx1)
    observed = np.zeros((y1 - y0, x1 - x0), np.float32)
    observed[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0] = weights
    window = (y0, y1, x0, x1)
    errors = [
        np.abs(observed - shape_coverage(shape, SIZE_SIDE[size], x, y, side, _TEMPLATE_SUPERSAMPLE, window)).sum()
        for shape, size in _TEMPLATES
    ]
    return _TEMPLATES[int(np.argmin(errors))]


def parse_scene(image: np.ndarray) -> SceneGraph:
    """Read a rendered (or generated) Shapes image back into a scene graph.

    Args:
        image: uint8 [H, W, 3], square; 32 px is the default data set size.

    Returns:
        The objects found, sorted left to right, with relations from their centroids.
    """
    image = _check_image(image)
    side = image.shape[0]
    alpha, colour = palette_alpha(image)
    own = np.take_along_axis(alpha, colour[..., None], axis=-1)[..., 0]  # [H, W]
    foreground = own >= 0.5  # closer to its colour than to the background
    objects = []
    for k, name in enumerate(COLORS):
        labels, _ = ndimage.label(foreground & (colour == k))
        for index, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
            # one pixel of margin so the anti-aliased rim (alpha < 0.5) is weighed too
            y0, y1 = max(rows.start - 1, 0), min(rows.stop + 1, side)
            x0, x1 = max(cols.start - 1, 0), min(cols.stop + 1, side)
            body = labels[y0:y1, x0:x1] == index
            rim = ndimage.binary_dilation(body, structure=np.ones((3, 3), bool)) & ~foreground[y0:y1, x0:x1]
            weights = alpha[y0:y1, x0:x1, k] * (body | rim)  # [h, w]
            area = float(weights.sum())
            if area < _MIN_AREA * side * side:
                continue
            x = float(weights.sum(axis=0) @ (np.arange(x0, x1) + 0.5)) / area / side
            y = float(weights.sum(axis=1) @ (np.arange(y0, y1) + 0.5)) / area / side
            shape, size = _best_template(weights, (y0, y1, x0, x1), x, y, side)
            objects.append(ShapeObject(shape, name, size, x, y))
    objects.sort(key=lambda o: (o.x, o.y))
    return SceneGraph.from_objects(objects)


def parse_scenes(images: np.ndarray) -> list[SceneGraph]:
    """`parse_scene` for each of uint8 [N, H, W, 3] images."""
    return [parse_scene(image) for image in images]


def _assignments(n_target: int, n_pred: int) -> np.ndarray:
    """Every injective matching as int64 [A, n_target]: predicted index per target, -1 = unmatched."""
    if n_pred >= n_target:
        rows = list(permutations(range(n_pred), n_target))
        return np.asarray(rows, np.int64).reshape(len(rows), n_target)
    rows = []
    for targets in permutations(range(n_target), n_pred):
        row = np.full(n_target, -1, np.int64)
        row[list(targets)] = np.arange(n_pred)
        rows.append(row)
    return np.stack(rows)


def _n_assignments(n_target: int, n_pred: int) -> int:
    big, small = max(n_target, n_pred), min(n_target, n_pred)
    return math.perm(big, small)


def compare_scenes(pred: SceneGraph, target: SceneGraph) -> dict:
    """Score one predicted (parsed) scene against the target graph.

    Target objects are matched one-to-one to predicted objects by the matching that
    maximises matching attributes plus satisfied target relations (brute force; for
    very large scenes, attributes only). A relation (i, "left of", j) holds when the
    predicted object matched to i has a smaller x than the one matched to j, and so on.

    Returns:
        count_ok, shape_correct, color_correct, size_correct (target objects whose
        match has the right attribute), n_objects, relations_ok, n_relations, exact.
    """
    n_target, n_pred = len(target.objects), len(pred.objects)
    agree = np.zeros((3, n_target, n_pred + 1), np.int64)  # [attribute, target, pred]; last column: unmatched
    for t, a in enumerate(target.objects):
        for p, b in enumerate(pred.objects):
            agree[:, t, p] = a.shape == b.shape, a.color == b.color, a.size == b.size
    xs = np.array([o.x for o in pred.objects] + [math.nan])  # [P + 1]; index -1 is "unmatched"
    ys = np.array([o.y for o in pred.objects] + [math.nan])
    relations = target.relations
    subj = np.array([s for s, _, _ in relations], np.int64)  # [R]
    obj = np.array([o for _, _, o in relations], np.int64)
    predicate = np.array([p for _, p, _ in relations], dtype=object)

    if _n_assignments(n_target, n_pred) <= _MAX_ASSIGNMENTS:
        matchings = _assignments(n_target, n_pred)  # [A, T]
    else:
        rows, cols = linear_sum_assignment(-agree[:, :, :n_pred].sum(axis=0))
        matching = np.full(n_target, -1, np.int64)
        matching[rows] = cols
        matchings = matching[None]

    targets = np.arange(n_target)
    attributes = agree[:, targets, matchings]  # [3, A, T]
    ps, po = matchings[:, subj], matchings[:, obj]  # [A, R]
    holds = np.select(
        [predicate == "left of", predicate == "right of", predicate == "above", predicate == "below"],
        [xs[ps] < xs[po], xs[ps] > xs[po], ys[ps] < ys[po], ys[ps] > ys[po]],
        default=False,
    )  # [A, R]; nan positions (unmatched) never hold
    best = int(np.argmax(attributes.sum(axis=(0, 2)) + holds.sum(axis=1)))

    shape_ok, color_ok, size_ok = (int(v) for v in attributes[:, best].sum(axis=1))
    relations_ok = int(holds[best].sum())
    count_ok = n_target == n_pred
    all_attributes = bool(attributes[:, best].all()) if n_target else True
    return {
        "count_ok": count_ok,
        "shape_correct": shape_ok,
        "color_correct": color_ok,
        "size_correct": size_ok,
        "n_objects": n_target,
        "relations_ok": relations_ok,
        "n_relations": len(relations),
        "exact": count_ok and all_attributes and relations_ok == len(relations),
    }


def scene_adherence(images: np.ndarray, graphs: Sequence[SceneGraph], by_count: bool = False) -> dict[str, float]:
    """How well images depict their scene graphs, parsed with `parse_scene`.

    Args:
        images: uint8 [N, H, W, 3].
        graphs: the N target scene graphs.

    Raises:
        ValueError: if the counts differ or there are no images.

    Returns:
        scene_exact and count_acc (fractions of images), shape_acc, color_acc and
        size_acc (over all target objects), relation_acc (over all target relations;
        1.0 when there are none). All in [0, 1]. With `by_count`, also scene_exact_{k}obj and
        count_acc_{k}obj over the graphs of k objects, and their number n_{k}obj, for each k present.
    """
    if len(images) != len(graphs):
        raise ValueError(f"got {len(images)} images but {len(graphs)} graphs")
    if not len(graphs):
        raise ValueError("scene_adherence needs at least one image")
    results = [compare_scenes(parse_scene(image), graph) for image, graph in zip(images, graphs)]
    out = _summary(results)
    if by_count:  # the same parses, grouped by how many objects the graph asks for
        for k in sorted({len(g.objects) for g in graphs}):
            part = _summary([r for r, g in zip(results, graphs) if len(g.objects) == k])
            out.update({f"{key}_{k}obj": part[key] for key in ("scene_exact", "count_acc")})
            out[f"n_{k}obj"] = sum(len(g.objects) == k for g in graphs)
    return out


def _summary(results: list[dict]) -> dict[str, float]:
    n_images = len(results)
    n_objects = sum(r["n_objects"] for r in results)
    n_relations = sum(r["n_relations"] for r in results)

    def rate(key: str, total: int) -> float:
        return sum(r[key] for r in results) / total if total else 1.0

    return {
        "scene_exact": sum(r["exact"] for r in results) / n_images,
        "count_acc": sum(r["count_ok"] for r in results) / n_images,
        "shape_acc": rate("shape_correct", n_objects),
        "color_acc": rate("color_correct", n_objects),
        "size_acc": rate("size_correct", n_objects),
        "relation_acc": rate("relations_ok", n_relations),
    }
