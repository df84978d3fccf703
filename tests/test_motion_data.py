"""Motion data: DeepMimic clips through our forward kinematics, the two motion data sets, and the
HumanML3D-style features. Known answers (pybullet's own FK, the stick figure's gait) and
invariants (bone lengths, mirror, heading, determinism, exact feature inverse)."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("pybullet")

from latentforge.data import humanoid as H
from latentforge.data.motion import (
    DeepMimicConfig,
    DeepMimicData,
    StickFigureConfig,
    StickFigureData,
    gait_frequency,
    mirror,
    rotate_heading,
    window_times,
)
from latentforge.modalities.motion_features import (
    feature_dim,
    feature_slices,
    features_to_positions,
    positions_to_features,
)

SK = H.HUMANOID
J = {name: i for i, name in enumerate(SK.names)}


def bone_lengths(pos: np.ndarray) -> np.ndarray:
    """[..., J, 3] -> [..., J-1]"""
    return np.stack([np.linalg.norm(pos[..., j, :] - pos[..., p, :], axis=-1) for p, j in SK.bones], axis=-1)


def clip_window(name: str, start: float, rate: float, frames: int) -> np.ndarray:
    times = window_times(np.array(start), np.array(rate), frames)
    return H.forward_kinematics(*H.sample_clip(H.load_clip(name), times))  # [T, J, 3]


@pytest.fixture(scope="module")
def deepmimic_tiny():
    return DeepMimicData(DeepMimicConfig.tiny())


# ------------------------------------------------------------------------------------- kinematics

def xyzw(q: np.ndarray) -> list[float]:
    """A clip's (w, x, y, z) quaternion as pybullet takes it: unit, (x, y, z, w)."""
    return (np.r_[q[1:], q[0]] / np.linalg.norm(q)).tolist()


def test_fk_matches_pybullet():
    import pybullet as p

    client = p.connect(p.DIRECT)
    try:
        robot = p.loadURDF(str(H.pybullet_data_dir() / "humanoid" / "humanoid.urdf"), globalScaling=H.URDF_SCALE,
                           physicsClientId=client)
        links = [p.getJointInfo(robot, i, physicsClientId=client)[1].decode()
                 for i in range(p.getNumJoints(robot, physicsClientId=client))]
        to_deepmimic = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # inverse of R_y(-90 deg)
        for name in ("walk", "cartwheel", "kick"):
            frames = np.array(json.loads(H.clip_path(name).read_text())["Frames"])
            ours = H.clip_positions(name)
            for f in range(0, len(frames), 9):
                row = frames[f]
                p.resetBasePositionAndOrientation(robot, row[1:4].tolist(), xyzw(row[4:8]), physicsClientId=client)
                col = 8
                for joint, size in H.CLIP_JOINTS:
                    if size == 4:
                        p.resetJointStateMultiDof(robot, links.index(joint), xyzw(row[col:col + 4]),
                                                  physicsClientId=client)
                    else:
                        p.resetJointState(robot, links.index(joint), row[col], physicsClientId=client)
                    col += size
                for j, joint in enumerate(SK.names):
                    link = "root" if joint == "pelvis" else joint
                    if link in links:  # head and toes are our own points
                        state = p.getLinkState(robot, links.index(link), computeForwardKinematics=True,
                                               physicsClientId=client)
                        np.testing.assert_allclose(to_deepmimic @ ours[f, j], state[4], atol=1e-5,
                                                   err_msg=f"{name} frame {f} {joint}")
    finally:
        p.disconnect(client)


def test_all_clips_load_and_bones_are_rigid():
    for name in H.ACTION_CLIPS:
        pos = H.clip_positions(name)
        assert pos.shape[1:] == (SK.num_joints, 3) and np.isfinite(pos).all()
        assert bone_lengths(pos).std(axis=0).max() < 1e-4, name
    # also between frames and across loop seams (slerp, not a blend of positions)
    window = clip_window("run", 0.1, 1.13, 90)  # ~4 cycles of run
    np.testing.assert_allclose(bone_lengths(window), bone_lengths(H.clip_positions("run"))[:1].repeat(90, 0), atol=1e-9)


def test_y_is_up_and_walk_feet_touch_the_ground():
    pos = H.clip_positions("walk")
    feet = pos[:, list(SK.feet), 1]  # [F, 4]
    assert np.all(pos[:, J["head"], 1] > pos[:, J["pelvis"], 1] + 0.4)
    assert np.all(pos[:, J["pelvis"], 1] > feet.max(axis=1) + 0.3)
    for toe in ("left_toe", "right_toe"):
        assert -0.02 < pos[:, J[toe], 1].min() < 0.03, toe
    # the body's rest pose faces +z with its left at +x; walk moves forward
    assert pos[0, J["left_hip"], 0] > pos[0, J["right_hip"], 0]
    assert pos[-1, J["pelvis"], 2] - pos[0, J["pelvis"], 2] > 1.0


def test_tiled_loops_have_no_seam():
    for name in ("walk", "run", "dance_a", "crawl"):
        clip = H.load_clip(name)
        t = np.arange(0, 3 * clip.duration, 1 / 120)
        pos = H.forward_kinematics(*H.sample_clip(clip, t))
        step = np.linalg.norm(np.diff(pos, axis=0), axis=-1).max(-1)  # [F-1] fastest joint per step
        seams = [round(k * clip.duration * 120) for k in (1, 2)]
        at_seams = max(step[s - 2:s + 2].max() for s in seams)
        assert at_seams <= step.max() + 1e-9, name


def test_non_looping_clips_hold_their_ends():
    clip = H.load_clip("kick")
    root, rots = H.sample_clip(clip, np.array([-1.0, 0.0, clip.duration, clip.duration + 1.0]))
    np.testing.assert_allclose(root[0], root[1])
    np.testing.assert_allclose(rots[2], rots[3])


# ------------------------------------------------------------------------------------- augmentations

def test_mirror_is_an_involution_that_keeps_bones():
    pos = clip_window("punch", 0.2, 1.0, 20)
    flipped = mirror(pos)
    np.testing.assert_array_equal(mirror(flipped), pos)
    np.testing.assert_allclose(bone_lengths(flipped), bone_lengths(pos), atol=1e-12)
    np.testing.assert_allclose(flipped[:, J["left_wrist"]], pos[:, J["right_wrist"]] * [-1, 1, 1])
    assert not np.allclose(flipped, pos)


def test_heading_turn_keeps_heights_and_bones():
    pos = clip_window("walk", 0.0, 1.0, 30)
    turned = rotate_heading(pos, np.pi / 2)
    np.testing.assert_allclose(turned[..., 1], pos[..., 1])
    np.testing.assert_allclose(bone_lengths(turned), bone_lengths(pos), atol=1e-12)
    # a walk along +z, turned a quarter to the left, goes along +x
    travel = turned[-1, J["pelvis"]] - turned[0, J["pelvis"]]
    assert travel[0] > 0.5 and abs(travel[2]) < 0.2


def test_speed_reads_the_clip_faster():
    fast, slow = clip_window("walk", 0.3, 2.0, 20), clip_window("walk", 0.3, 1.0, 39)
    np.testing.assert_allclose(fast, slow[::2], atol=1e-9)
    base = gait_frequency(clip_window("walk", 0.3, 1.0, 64))
    np.testing.assert_allclose(base, 1 / H.load_clip("walk").duration, rtol=0.02)  # one stride per cycle
    for rate in (0.8, 1.2):
        np.testing.assert_allclose(gait_frequency(clip_window("walk", 0.3, rate, 64)), rate * base, rtol=0.03)


# ------------------------------------------------------------------------------------- data sets

def test_deepmimic_split_contract(deepmimic_tiny):
    cfg = deepmimic_tiny.config
    train = deepmimic_tiny.split("train")
    n, t = cfg.train_size, cfg.window
    assert train["motion"].shape == (n, t, SK.num_joints, 3) and train["motion"].dtype == np.float32
    assert train["label"].dtype == np.int64 and set(train["label"]) == set(range(len(cfg.clips)))
    assert train["captions"].shape == (n,) and train["captions"][0] == "a person walks"
    assert deepmimic_tiny.captions(train) == list(train["captions"])
    assert deepmimic_tiny.training_captions() == list(train["captions"])
    assert deepmimic_tiny.class_names == cfg.clips and deepmimic_tiny.skeleton is SK
    labels, classes = deepmimic_tiny.probe_targets(train)["action"]
    assert labels.shape == (n, 1) and classes == 3
    from latentforge.conditioning.class_label import ClassConfig

    assert deepmimic_tiny.link_conditioner(ClassConfig()).num_classes == 3
    m = train["motion"]
    np.testing.assert_allclose(m[:, 0, 0, [0, 2]], 0, atol=1e-6)  # the root starts at the origin
    assert np.all(m[:, 0, J["left_hip"], 0] > m[:, 0, J["right_hip"], 0])  # facing +z (mirrored too)
    assert bone_lengths(m).std(axis=1).max() < 1e-4
    assert 0 < train["mirrored"].sum() < n


def test_deepmimic_splits_are_deterministic_and_distinct(deepmimic_tiny):
    again = DeepMimicData(DeepMimicConfig.tiny()).split("train")
    first = deepmimic_tiny.split("train")
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    smaller = DeepMimicData(DeepMimicConfig(**{**DeepMimicConfig.tiny().__dict__, "train_size": 5})).split("train")
    np.testing.assert_array_equal(smaller["motion"], first["motion"][:5])  # row i ignores the split size
    val, test = deepmimic_tiny.split("val"), deepmimic_tiny.split("test")
    assert not np.allclose(val["motion"], first["motion"][:6]) and not np.allclose(val["motion"], test["motion"])
    np.testing.assert_array_equal(val["label"], test["label"])  # same actions, other windows
    other_seed = DeepMimicData(DeepMimicConfig(**{**DeepMimicConfig.tiny().__dict__, "seed": 1})).split("val")
    assert not np.allclose(other_seed["motion"], val["motion"])


def test_deepmimic_heading_jitter_and_switches():
    base = DeepMimicConfig.tiny().__dict__
    plain = DeepMimicData(DeepMimicConfig(**{**base, "mirror": False, "speed": 0.0})).split("train")
    assert plain["mirrored"].sum() == 0 and np.all(plain["playback_rate"] == 1)
    turned = DeepMimicData(DeepMimicConfig(**{**base, "mirror": False, "speed": 0.0, "heading_jitter": 180.0}))
    turned = turned.split("train")
    np.testing.assert_allclose(rotate_heading(plain["motion"], turned["turn"]), turned["motion"], atol=1e-5)


def test_stickfigure_known_answers():
    data = StickFigureData(StickFigureConfig(window=64, train_size=36, val_size=6))
    rows = data.split("train")
    assert data.class_names == ("stand", "walk", "run", "jump", "squat", "wave")
    assert data.training_captions() == list(rows["captions"])
    m, label = rows["motion"], rows["label"]
    assert bone_lengths(m).std(axis=1).max() < 1e-4
    assert np.abs(m[..., list(SK.feet), 1].min(axis=(1, 2))).max() < 0.02  # every row stands on the ground...
    moving = label != 0
    freq = gait_frequency(m[moving])
    np.testing.assert_allclose(freq, rows["gait_hz"][moving], rtol=0.10)  # ...and its gait is read back
    jump = label == 3  # the soles clear the ground by the jump height at the apex
    clearance = m[jump][..., [J["left_toe"], J["right_toe"]], 1].min(-1).max(-1)
    np.testing.assert_allclose(clearance, rows["jump_height"][jump], atol=0.01)
    walk = label == 1
    travelled = (m[walk][:, -1, 0, 2] - m[walk][:, 0, 0, 2]) / ((data.config.window - 1) / SK.fps)
    np.testing.assert_allclose(travelled, rows["speed"][walk], rtol=1e-4)
    np.testing.assert_allclose(rows["speed"], rows["stride"] * rows["gait_hz"] * np.isin(label, (1, 2)), rtol=1e-5)


def test_deepmimic_walk_gait_is_its_cycle():
    cfg = DeepMimicConfig(window=64, clips=("walk",), train_size=8, val_size=1)
    rows = DeepMimicData(cfg).split("train")
    expected = rows["playback_rate"] / H.load_clip("walk").duration
    np.testing.assert_allclose(gait_frequency(rows["motion"]), expected, rtol=0.05)


# ------------------------------------------------------------------------------------- features

def test_features_round_trip_and_scale():
    rows = DeepMimicData(DeepMimicConfig(window=64, train_size=300, val_size=1)).split("train")
    pos = torch.from_numpy(rows["motion"])
    feats = positions_to_features(pos, SK)
    assert feats.shape == (300, 64, feature_dim(SK)) == (300, 64, 6 * 18 + 4)
    assert (features_to_positions(feats, SK) - pos).abs().max() < 1e-4
    # any start, any leading dims, float64 too
    shifted = pos[:3].double() + torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    assert (features_to_positions(positions_to_features(shifted[None], SK), SK)[0] - shifted).abs().max() < 1e-9
    std = feats.flatten(0, 1).std(dim=0)
    assert std.min() > 0.01 and std.max() < 20, (std.min(), std.max())
    contacts = feats[..., feature_slices(SK)["contacts"]]
    assert set(contacts.unique().tolist()) <= {0.0, 1.0} and 0.1 < contacts.mean() < 0.9
    with pytest.raises(ValueError, match="features_to_positions"):
        features_to_positions(feats[..., :-1], SK)


def test_walk_contacts_alternate():
    clip = H.load_clip("walk")
    pos = torch.from_numpy(clip_window("walk", 0.0, 1.0, int(3 * clip.duration * SK.fps)))
    contacts = positions_to_features(pos, SK)[..., feature_slices(SK)["contacts"]]
    toes = contacts[:, [SK.feet.index(J["left_toe"]), SK.feet.index(J["right_toe"])]]  # [T, 2]
    assert (toes.amax(-1) == 1).float().mean() > 0.95  # a walker always has a foot down
    only_left = (toes[:, 0] == 1) & (toes[:, 1] == 0)
    only_right = (toes[:, 1] == 1) & (toes[:, 0] == 0)
    assert only_left.float().mean() > 0.2 and only_right.float().mean() > 0.2
    # the single-support phases alternate: left, right, left, ... (3 cycles -> >= 5 switches)
    phases = [int(l_) for l_, r in zip(only_left, only_right) if l_ or r]
    assert sum(a != b for a, b in itertools.pairwise(phases)) >= 5


# ------------------------------------------------------------------------------------- bad input

def test_corrupt_clip_names_the_file(tmp_path):
    bad = tmp_path / "humanoid3d_broken.txt"
    bad.write_text('{"Loop": "wrap", "Frames": [[0.03, 1, 2')
    with pytest.raises(ValueError, match="humanoid3d_broken.txt"):
        H.read_clip(bad)
    short = tmp_path / "humanoid3d_short.txt"
    short.write_text(json.dumps({"Loop": "none", "Frames": [[0.03] * 40, [0.0] * 40]}))
    with pytest.raises(ValueError, match="humanoid3d_short.txt.*44 numbers"):
        H.read_clip(short)
    with pytest.raises(ValueError, match="humanoid3d_broken.txt"):
        DeepMimicData(DeepMimicConfig(window=16, clips=("broken",), clip_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="clip 'absent'"):
        DeepMimicData(DeepMimicConfig(window=16, clips=("absent",), clip_dir=str(tmp_path)))


def test_window_longer_than_a_clip_names_it():
    # kick: 1.53 s, no loop; 90 frames at up to 1.2x read 3.56 s
    with pytest.raises(ValueError, match="clip 'kick'.*1.53 s"):
        DeepMimicData(DeepMimicConfig(window=90, clips=("walk", "kick")))
    DeepMimicData(DeepMimicConfig(window=90, clips=("walk", "kick"), max_hold=2.1))  # holding enough is allowed
    DeepMimicData(DeepMimicConfig(window=300, clips=("walk",)))  # loops tile to any length


def test_configs_validate():
    with pytest.raises(ValueError, match="window"):
        DeepMimicConfig(window=1)
    with pytest.raises(ValueError, match="clips"):
        DeepMimicConfig(clips=("walk", "walk"))
    with pytest.raises(ValueError, match="speed"):
        DeepMimicConfig(speed=0.9)
    with pytest.raises(ValueError, match="actions.*fly"):
        StickFigureConfig(actions=("walk", "fly"))
    with pytest.raises(ValueError, match="train_size"):
        StickFigureConfig(train_size=0)
    with pytest.raises(ValueError, match="unknown split"):
        StickFigureData(StickFigureConfig.tiny()).split("holdout")


def test_missing_pybullet_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pybullet_data", None)
    with pytest.raises(ImportError, match=r"latentforge\[motion\]"):
        H.pybullet_data_dir()
