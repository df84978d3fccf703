"""Judges: how well samples follow the condition they were drawn for, one per data set.

A data set names its judge (`DataSet.judge`); evaluation looks it up here and calls it with the
samples, the condition rows they were drawn for, and the data's own examples for the same
conditions: the floor, since a judge that misreads real data cannot ask more of a model.

    score = judge_for(dataset)
    metrics = score(dataset, samples, rows, real)    # {"scene_exact": 0.61, "real_...": 0.99, ...}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Judge = Callable[[Any, np.ndarray, dict[str, np.ndarray], np.ndarray], dict[str, float]]
JUDGES: dict[str, Judge] = {}


def judge(name: str) -> Callable[[Judge], Judge]:
    def wrap(fn: Judge) -> Judge:
        JUDGES[name] = fn
        return fn

    return wrap


def judge_for(dataset: Any) -> Judge | None:
    """The data set's judge, None when it has none (unlabelled data)."""
    if dataset.judge is None:
        return None
    if dataset.judge not in JUDGES:
        raise KeyError(f"data {dataset.config.name!r} names judge {dataset.judge!r}; known: {', '.join(sorted(JUDGES))}")
    return JUDGES[dataset.judge]


@judge("shapes")
def shapes_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray], real: np.ndarray) -> dict[str, float]:
    """The scene parser reads each sample's objects and relations and compares them with its graph;
    exact match and count accuracy also per object count (scene_exact_3obj: graphs of 3 objects)."""
    from latentforge.data.sets import scene_of
    from latentforge.eval.shapes import scene_adherence

    scenes = [scene_of(g) for g in rows["graphs"]]
    out = scene_adherence(samples, scenes, by_count=True)
    out["real_images_scene_exact"] = scene_adherence(real, scenes)["scene_exact"]
    return out


@judge("digits")
def digits_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray], real: np.ndarray) -> dict[str, float]:
    """The digits probe (trained on first use, then cached) reads each sample's class."""
    from latentforge.eval.probe import load_probe

    probe = load_probe(dataset.config)
    labels = rows["label"]
    return {"class_acc": float((probe.predict(samples)["class"][:, 0].numpy() == labels).mean()),
            "real_images_class_acc": float((probe.predict(real)["class"][:, 0].numpy() == labels).mean())}


@judge("motion")
def motion_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray], real: np.ndarray) -> dict[str, float]:
    """The data set's motion probe reads each sample's action (`action_acc`, the floor on real clips
    of the same actions beside it); multimodality (mean probe-feature distance between samples of
    the same action, T2M's definition); foot skating, jerk and bone-length drift of the samples
    beside the same numbers of the real clips."""
    from latentforge.eval.motion_probe import dataset_probe
    from latentforge.modalities.motion_metrics import bone_length_error, foot_skating_ratio, jerk, multimodality

    probe = dataset_probe(dataset, progress=dataset.progress)
    labels, skeleton = rows["label"], dataset.skeleton
    out = {"action_acc": float((probe.predict(samples).numpy() == labels).mean()),
           "real_action_acc": float((probe.predict(real).numpy() == labels).mean())}
    if len(samples) > len(np.unique(labels)):
        out["multimodality"] = multimodality(probe.features(samples).numpy(), labels, seed=0)
        out["real_multimodality"] = multimodality(probe.features(real).numpy(), labels, seed=0)
    for name, fn in (("skating_ratio", foot_skating_ratio), ("bone_length_error", bone_length_error)):
        out[name], out[f"real_{name}"] = fn(samples, skeleton), fn(real, skeleton)
    out["jerk"], out["real_jerk"] = jerk(samples, skeleton.fps), jerk(real, skeleton.fps)
    return out


@judge("stickfigure")
def stickfigure_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray],
                      real: np.ndarray) -> dict[str, float]:
    """The motion judge, plus a known answer the procedural figure has: each periodic action's
    cycle frequency is drawn from a known range (walk 0.8-1.1 Hz, run 1.3-1.6, ...), so the share
    of samples whose measured frequency (`gait_frequency`) falls in their action's range, ±10 %,
    says whether the model moves at the right pace (`pace_in_range`; the floor on real clips beside)."""
    from latentforge.data.motion import STICK_ACTIONS, gait_frequency

    out = motion_judge(dataset, samples, rows, real)
    names = [dataset.class_names[int(label)] for label in rows["label"]]
    periodic = np.array([STICK_ACTIONS[n].hz[1] > 0 for n in names])
    if periodic.any():
        lo = np.array([STICK_ACTIONS[n].hz[0] for n in names])[periodic] * 0.9
        hi = np.array([STICK_ACTIONS[n].hz[1] for n in names])[periodic] * 1.1
        for key, clips in (("pace_in_range", samples), ("real_pace_in_range", real)):
            hz = gait_frequency(clips[periodic], dataset.skeleton)
            out[key] = float(((hz >= lo) & (hz <= hi)).mean())
    return out


@judge("moving_shapes")
def moving_shapes_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray],
                        real: np.ndarray) -> dict[str, float]:
    """The colour tracker (`eval/video_judge.py`) follows each object of the caption by its colour
    and reads its shape, size, first direction and bounces; motion_exact is the share of clips where
    all of it matches and no other object shows (the floor on real clips beside)."""
    from latentforge.eval.video_judge import motion_adherence

    out = motion_adherence(samples, rows)
    out["real_clips_motion_exact"] = motion_adherence(real, rows)["motion_exact"]
    return out


@judge("pong")
def pong_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray], real: np.ndarray) -> dict[str, float]:
    """On the Pong clips: the share whose ball, found frame by frame (`eval/video_judge.py`), moves
    as Pong's does (`ball_track_plausible`, over the `ball_seen` share showing it in three frames in a
    row), the same on real clips, and the detector's agreement with the console's RAM there (the
    share of frames showing the ball where it is found within a pixel; false alarms elsewhere)."""
    from latentforge.eval.video_judge import ball_agreement, ball_tracks

    pong = np.flatnonzero(np.asarray(rows["label"]) == list(dataset.class_names).index("pong"))
    if not len(pong):
        return {}
    out = ball_tracks(np.asarray(samples[pong]))
    out.update({f"real_clips_{k}": v for k, v in ball_tracks(np.asarray(real[pong])).items()})
    if "ball_xy" in rows:
        agree = ball_agreement(np.asarray(real[pong]), rows["ball_xy"][pong], rows["ball_visible"][pong])
        out.update({f"real_clips_{k}": v for k, v in agree.items()})
    return out


@judge("moving_mnist")
def moving_mnist_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray],
                       real: np.ndarray) -> dict[str, float]:
    """The data set's video probe (eval/video_probe.py, trained once and cached) reads each clip's
    digits and their directions, slots in canonical order (`canonical_slots`): `digits_exact` (the
    clip shows the captioned digits), `direction_acc` (per digit slot, its direction), `clip_exact`
    (every digit and direction right); the same numbers on real clips of the same captions beside."""
    from latentforge.data.moving_mnist import canonical_slots
    from latentforge.eval.video_probe import dataset_probe

    probe, _ = dataset_probe(dataset, progress=dataset.progress)
    digits, directions = canonical_slots(rows["digit_classes"], rows["directions"])
    out: dict[str, float] = {}
    for prefix, clips in (("", samples), ("real_clips_", real)):
        pred = {k: v.numpy() for k, v in probe.predict(clips).items()}
        digit_ok, direction_ok = pred["digit"] == digits, pred["direction"] == directions
        out[f"{prefix}digits_exact"] = float(digit_ok.all(1).mean())
        out[f"{prefix}direction_acc"] = float(direction_ok.mean())
        out[f"{prefix}clip_exact"] = float((digit_ok & direction_ok).all(1).mean())
    return out


@judge("notes")
def notes_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray], real: np.ndarray) -> dict[str, float]:
    """The pitch tracker (`eval/pitch.py`) reads what each clip plays (a note, a major or minor triad,
    a rising arpeggio, and its root) and compares it with the caption; with class labels alone, the
    root's pitch class. The floor: the same on real clips."""
    from latentforge.data.notes import KINDS
    from latentforge.eval.pitch import notes_adherence

    rate = dataset.config.sample_rate
    kinds = [KINDS[k] for k in rows["kind"]] if "kind" in rows else None
    roots = rows.get("root")
    pcs = rows.get("label")
    out = notes_adherence(samples, rate, kinds, roots, pcs)
    real_scores = notes_adherence(real, rate, kinds, roots, pcs)
    out["real_clips_" + ("notes_exact" if "notes_exact" in real_scores else "pitch_class_acc")] = \
        real_scores.get("notes_exact", real_scores["pitch_class_acc"])
    return out


@judge("audio_class")
def audio_class_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray],
                      real: np.ndarray) -> dict[str, float]:
    """A linear probe on log-mel and chroma statistics (`eval/audio_probe.py`, fitted on the data's
    training clips on first use) reads each clip's class (speech: the digit; music: the key); the
    floor is its reading of the real held-out clips drawn for the same rows."""
    from latentforge.eval.audio_probe import class_probe

    probe = class_probe(dataset)
    labels = rows["label"]
    return {"class_acc": float((probe.predict(samples) == labels).mean()),
            "real_clips_class_acc": float((probe.predict(real) == labels).mean())}


@judge("primitives")
def primitives_judge(dataset: Any, samples: np.ndarray, rows: dict[str, np.ndarray],
                     real: np.ndarray) -> dict[str, float]:
    """Every primitive's SDF is fitted to each point set (`eval/primitive_fit.py`); the best fit names
    the class, the points' extent the size. The floor: the same reading of the real shapes."""
    from latentforge.eval.primitive_fit import primitive_adherence

    sizes = rows.get("size")
    out = primitive_adherence(samples, rows["label"], sizes)
    real_scores = primitive_adherence(real, rows["label"], sizes)
    out["real_shapes_" + ("exact" if "exact" in real_scores else "shape_acc")] = \
        real_scores.get("exact", real_scores["shape_acc"])
    return out
