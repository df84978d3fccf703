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
