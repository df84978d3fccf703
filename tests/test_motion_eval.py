"""Motion evaluation: metrics with known answers on hand-built motions, and the motion probe
learns synthetic actions, is cached and reused, and its FID tells real motion from corrupted."""

import math

import numpy as np
import pytest
import torch

from latentforge.eval.distribution import fid
from latentforge.eval.motion_probe import (
    MotionProbe,
    MotionProbeConfig,
    load_motion_probe,
    motion_feature_extractor,
    motion_probe_dir,
    rotate_heading,
    train_motion_probe,
)
from latentforge.eval.probe import file_hash, probe_info
from latentforge.modalities.motion_metrics import (
    bone_length_error,
    bone_lengths,
    diversity,
    foot_skating_ratio,
    jerk,
    mpjpe,
    multimodality,
)
from latentforge.modalities.skeleton import Skeleton
from latentforge.serialization import from_pretrained, save_pretrained

FPS = 30.0
# a 5-joint chain hanging from the root, the foot at its end
CHAIN = Skeleton(names=("root", "a", "b", "c", "foot"), parents=(-1, 0, 1, 2, 3), feet=(4,), fps=FPS)
# a root with two two-bone legs
LEGS = Skeleton(names=("root", "l_knee", "l_foot", "r_knee", "r_foot"), parents=(-1, 0, 1, 0, 3),
                feet=(2, 4), fps=FPS)
LEGS_REST = torch.tensor([[0, 0.9, 0], [0.1, 0.45, 0], [0.1, 0.0, 0], [-0.1, 0.45, 0], [-0.1, 0.0, 0]],
                         dtype=torch.float64)


def chain(n: int = 2, t: int = 10) -> torch.Tensor:
    """The chain standing still: joint j at height 0.4 - 0.1 j (the foot on the floor)."""
    rest = torch.tensor([[0.0, 0.4 - 0.1 * j, 0.0] for j in range(5)], dtype=torch.float64)
    return rest.expand(n, t, 5, 3).clone()


def legs(t: int = 30) -> torch.Tensor:
    return LEGS_REST.expand(1, t, 5, 3).clone()


# --------------------------------------------------------------------------- MPJPE

def test_mpjpe_of_an_offset_copy_is_the_offset_and_zero_root_aligned():
    x = torch.randn(3, 8, 5, 3)
    offset = torch.tensor([0.3, 0.4, 0.0])  # |offset| = 0.5 m
    assert mpjpe(x, x + offset) == pytest.approx(0.5, abs=1e-6)
    assert mpjpe(x, x + offset, align_root=True) == pytest.approx(0.0, abs=1e-6)
    # a per-frame translation (the root walking elsewhere) is also invisible root-aligned
    drift = torch.randn(3, 8, 1, 3)
    assert mpjpe(x, x + drift, align_root=True) == pytest.approx(0.0, abs=1e-6)
    # numpy in, the same number out
    assert mpjpe(x.numpy(), (x + offset).numpy()) == pytest.approx(0.5, abs=1e-6)


def test_mpjpe_averages_over_joints():
    x = chain()
    y = x.clone()
    y[:, :, 2, 0] += 1.0  # one joint of five, 1 m off
    assert mpjpe(x, y) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="shapes differ"):
        mpjpe(x, y[:, :5])


# --------------------------------------------------------------------------- foot skating

def test_planted_foot_does_not_skate():
    assert foot_skating_ratio(chain(), CHAIN) == 0.0
    assert foot_skating_ratio(chain(), CHAIN, ground=0.0) == 0.0


def test_foot_sliding_on_the_ground_skates_every_frame():
    x = chain(t=20)
    x[..., 0] += torch.arange(20, dtype=torch.float64)[:, None] / FPS * 1.0  # the body glides at 1 m/s
    assert foot_skating_ratio(x, CHAIN) == 1.0
    assert foot_skating_ratio(x, CHAIN, ground=0.0) == 1.0
    # numpy float32 input, as the data sets store it
    assert foot_skating_ratio(x.float().numpy(), CHAIN) == 1.0
    # slower than 0.5 m/s is walking-speed creep below GMD's threshold
    slow = chain(t=20)
    slow[..., 0] += torch.arange(20, dtype=torch.float64)[:, None] / FPS * 0.3
    assert foot_skating_ratio(slow, CHAIN) == 0.0


def test_foot_moving_in_the_air_does_not_skate():
    x = legs(t=30)
    # the right foot swings fast, 30 cm above the planted left one (the clip's ground)
    x[0, :, 4, 1] = 0.3
    x[0, :, 4, 0] += torch.sin(torch.arange(30) / FPS * 2 * math.pi * 2).double() * 0.3
    assert foot_skating_ratio(x, LEGS) == 0.0
    # one whole clip floating 20 cm: relative to its own lowest foot the left foot still
    # stands, the right one still flies
    assert foot_skating_ratio(x + torch.tensor([0, 0.2, 0]), LEGS) == 0.0


def test_skating_counts_frame_pairs_and_ignores_a_single_jittery_frame():
    t, k = 31, 12
    x = legs(t=t)
    speed = torch.zeros(t - 1, dtype=torch.float64)
    speed[:k] = 1.0  # the left foot slides for the first k frame pairs, then stops
    x[0, 1:, 2, 0] += torch.cumsum(speed, 0) / FPS
    assert foot_skating_ratio(x, LEGS) == pytest.approx(k / (t - 1))
    # a one-frame jump of 3 cm (0.9 m/s) is noise: its 5-frame average is 0.18 m/s
    y = legs(t=t)
    y[0, 10:, 2, 0] += 0.03
    assert foot_skating_ratio(y, LEGS) == 0.0
    # averaging clips: one skating clip of two gives 1/2
    glide = legs(t=t)
    glide[0, :, :, 0] += torch.arange(t, dtype=torch.float64)[:, None] / FPS
    assert foot_skating_ratio(torch.cat([glide, legs(t=t)]), LEGS) == pytest.approx(0.5)


# --------------------------------------------------------------------------- jerk

@pytest.mark.parametrize("fps", [20.0, 30.0])
def test_jerk_of_constant_velocity_is_zero_and_of_t_cubed_is_six(fps):
    t = torch.arange(40, dtype=torch.float64) / fps
    x = chain(t=40)
    moving = x.clone()
    moving[..., 0] += 1.5 * t[:, None]  # constant velocity
    assert jerk(moving, fps) == pytest.approx(0.0, abs=1e-6)
    accelerating = x.clone()
    accelerating[..., 2] += 2.0 * t[:, None] ** 2  # constant acceleration: still no jerk
    assert jerk(accelerating, fps) == pytest.approx(0.0, abs=1e-6)
    cubic = x.clone()
    cubic[..., 1] += t[:, None] ** 3  # d^3/dt^3 t^3 = 6 m/s^3, for every joint and frame
    assert jerk(cubic, fps) == pytest.approx(6.0, rel=1e-6)


# --------------------------------------------------------------------------- bone lengths

def _rigid(x: torch.Tensor) -> torch.Tensor:
    """Spin and carry a pose: every frame a rotation about y plus a translation."""
    t = x.shape[1]
    angle = torch.linspace(0, 3, t, dtype=torch.float64)
    c, s = angle.cos()[:, None], angle.sin()[:, None]
    px, py, pz = x[..., 0], x[..., 1], x[..., 2]
    rotated = torch.stack([c * px + s * pz, py, -s * px + c * pz], dim=-1)
    return rotated + torch.stack([angle, 0.1 * angle, -angle], dim=-1)[None, :, None]


def test_bone_lengths_of_rigid_motion_are_constant():
    x = _rigid(chain(t=12))
    lengths = bone_lengths(x, CHAIN)
    assert lengths.shape == (2, 12, 4) and lengths.dtype == torch.float64
    torch.testing.assert_close(lengths, torch.full_like(lengths, 0.1))
    assert bone_length_error(x, CHAIN) == pytest.approx(0.0, abs=1e-9)
    assert bone_length_error(x, CHAIN, reference_lengths=[0.1] * 4) == pytest.approx(0.0, abs=1e-9)


def test_bone_length_error_of_a_stretched_bone():
    x = chain(n=1, t=10)
    stretched = x.clone()
    stretched[:, :, 4, 1] -= 0.08  # the last bone, 10 cm -> 18 cm, in every frame
    # against the body's true lengths: one bone of four, 8 cm off
    assert bone_length_error(stretched, CHAIN, reference_lengths=np.full(4, 0.1)) == pytest.approx(0.02)
    # against the clip's own median it is rigid
    assert bone_length_error(stretched, CHAIN) == pytest.approx(0.0, abs=1e-12)
    # stretched in 2 of 10 frames: the median is the true length, |8 cm| x 2 frames / (10 x 4)
    flicker = x.clone()
    flicker[:, 3:5, 4, 1] -= 0.08
    assert bone_length_error(flicker, CHAIN) == pytest.approx(0.08 * 2 / 40)
    with pytest.raises(ValueError, match="one length per bone"):
        bone_length_error(x, CHAIN, reference_lengths=[0.1] * 3)
    with pytest.raises(ValueError, match="skeleton has 5"):
        bone_length_error(torch.zeros(1, 4, 6, 3), CHAIN)


# --------------------------------------------------------------------------- diversity

def _two_clusters(n: int, d: float, dim: int = 8) -> torch.Tensor:
    f = torch.zeros(2 * n, dim, dtype=torch.float64)
    f[n:, 0] = d
    return f + 5.0  # anywhere in feature space


def test_diversity_of_identical_features_is_zero_and_of_two_clusters_half_their_distance():
    assert diversity(torch.ones(400, 16)) == 0.0
    f = _two_clusters(200, 3.0)
    # a random pair straddles the clusters half the time
    assert diversity(f, n_pairs=None) == pytest.approx(1.5)
    sampled = diversity(f, n_pairs=300, seed=0)
    assert abs(sampled - 1.5) < 0.3
    assert diversity(f, seed=0) == sampled == diversity(f.numpy(), seed=0)  # deterministic, any array
    assert diversity(f, seed=1) != sampled


def test_multimodality_within_actions_only():
    f = _two_clusters(50, 10.0)
    labels = torch.arange(100) // 50  # each action always gives the same motion
    assert multimodality(f, labels) == 0.0
    assert diversity(f) > 1.0  # though the actions differ from each other
    # two samples per action, distance 2 and 4: a random pair differs half the time
    g = torch.tensor([[0.0, 0], [2, 0], [7, 7], [7, 11]], dtype=torch.float64)
    y = np.array([0, 0, 1, 1])
    assert multimodality(g, y, n_pairs=None) == pytest.approx((1 + 2) / 2)
    # invariants: translation-invariant, scale-equivariant, label names do not matter, seeded
    rng = np.random.default_rng(0)
    h = rng.normal(size=(90, 6))
    z = rng.integers(0, 3, size=90)
    m = multimodality(h, z, seed=3)
    assert multimodality(h + 4.0, z, seed=3) == pytest.approx(m)
    assert multimodality(2.5 * h, z, seed=3) == pytest.approx(2.5 * m)
    assert multimodality(h, z + 7, seed=3) == pytest.approx(m)
    assert multimodality(h, z, seed=4) != m
    with pytest.raises(ValueError, match="labels"):
        multimodality(h, z[:10])


# --------------------------------------------------------------------------- the motion probe

# a stick figure: pelvis, chest, head, two legs (knee, foot), two hands
FIGURE = Skeleton(names=("pelvis", "chest", "head", "l_knee", "l_foot", "r_knee", "r_foot", "l_hand", "r_hand"),
                  parents=(-1, 0, 1, 0, 3, 0, 5, 1, 1), feet=(4, 6), fps=FPS)
REST = torch.tensor([[0, 0.9, 0], [0, 1.2, 0], [0, 1.5, 0], [0.1, 0.45, 0], [0.1, 0.05, 0],
                     [-0.1, 0.45, 0], [-0.1, 0.05, 0], [0.35, 1.15, 0], [-0.35, 1.15, 0]])
ACTIONS = 4  # walk, run, jump, wave


def sine_figures(n: int, t: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips [n, t, 9, 3] of 4 actions with random frequency, amplitude, phase, heading and
    place: walk (legs swing at ~1 Hz, 1 m/s forward), run (~2.2 Hz, 2.5 m/s, arms swing),
    jump (the body bobs 20 cm at ~1.5 Hz in place), wave (the right hand waves overhead)."""
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float) -> torch.Tensor:  # one uniform draw per clip [n, 1]
        return lo + (hi - lo) * torch.rand(n, 1, generator=g)

    labels = torch.arange(n) % ACTIONS
    time_ = torch.arange(t)[None] / FPS                          # [1, t]
    phase = u(0, 2 * math.pi)
    x = REST.expand(n, t, 9, 3).clone()
    gait = {0: (1.0, 1.0, 0.25), 1: (2.2, 2.5, 0.45)}            # frequency, speed, stride amplitude
    for c, (freq, speed, amp) in gait.items():
        k = labels == c
        w = 2 * math.pi * freq * u(0.85, 1.15)[k] * time_ + phase[k]   # [m, t]
        a = amp * u(0.8, 1.2)[k]
        swing = a * torch.sin(w)
        x[k, :, 3, 2] += swing / 2
        x[k, :, 4, 2] += swing
        x[k, :, 5, 2] -= swing / 2
        x[k, :, 6, 2] -= swing
        x[k, :, 4, 1] += 0.1 * torch.relu(torch.cos(w))
        x[k, :, 6, 1] += 0.1 * torch.relu(-torch.cos(w))
        x[k, :, 7, 2] -= swing * (c == 1)
        x[k, :, 8, 2] += swing * (c == 1)
        x[k, :, :, 2] += (speed * u(0.8, 1.2)[k] * time_)[..., None]
    k = labels == 2
    bob = 0.2 * u(0.7, 1.3)[k] * torch.sin(2 * math.pi * 1.5 * u(0.85, 1.15)[k] * time_ + phase[k]).abs()
    x[k, :, :, 1] += bob[..., None]
    x[k, :, 4, 1] -= bob * 0.8                                    # the feet lag: knees bend
    x[k, :, 6, 1] -= bob * 0.8
    k = labels == 3
    wave = 0.25 * u(0.7, 1.3)[k] * torch.sin(2 * math.pi * 1.5 * u(0.8, 1.2)[k] * time_ + phase[k])
    x[k, :, 8, 1] += 0.5
    x[k, :, 8, 0] += wave
    x = rotate_heading(x, u(0, 2 * math.pi)[:, 0])                # face anywhere
    x = x + torch.cat([u(-2, 2), torch.zeros(n, 1), u(-2, 2)], 1)[:, None, None]
    x = x + 0.01 * torch.randn(x.shape, generator=g)
    return x.float(), labels


@pytest.fixture(scope="module")
def sines():
    train_x, train_y = sine_figures(800, seed=0)
    val_x, val_y = sine_figures(400, seed=1)
    return train_x, train_y, val_x, val_y


@pytest.fixture(scope="module")
def motion_probe(sines):
    return train_motion_probe(*sines, ACTIONS, FIGURE, cache_key="test-sines", steps=300, progress=False)


def _folder():
    return motion_probe_dir("test-sines", FIGURE, ACTIONS)


def test_probe_learns_the_actions(motion_probe, sines):
    probe = motion_probe
    info = probe_info(_folder())
    assert info["val_accuracy"] >= 0.9 and info["val_clips"] == 400 and info["cache_key"] == "test-sines"
    # heading is augmented away: the validation set turned by any angle is still read right
    _, _, val_x, val_y = sines
    turned = rotate_heading(val_x, torch.full((len(val_x),), 2.0))
    assert probe.accuracy(turned, val_y) >= 0.9
    # any clip length: global pooling
    assert probe.accuracy(val_x[:, :48], val_y) >= 0.85


def test_probe_features_are_deterministic_and_batch_independent(motion_probe, sines):
    probe = motion_probe
    val_x = sines[2][:40]
    f = probe.features(val_x)
    assert f.shape == (40, 128) and f.dtype == torch.float64
    assert torch.equal(probe.features(val_x), f)
    torch.testing.assert_close(probe.features(val_x[:3].numpy()), f[:3], rtol=1e-5, atol=1e-5)
    pred = probe.predict(val_x)
    assert pred.shape == (40,) and pred.dtype == torch.int64
    for t in (1, 7, 200):  # any length runs
        assert probe.features(torch.zeros(2, t, 9, 3)).shape == (2, 128)
    with pytest.raises(ValueError, match=r"reads motion \[N, T, 9, 3\]"):
        probe.features(torch.zeros(2, 10, 5, 3))


def test_probe_cache_is_reused_and_keyed(motion_probe, sines):
    probe = motion_probe
    weights = _folder() / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    # a second call finds the cache: no training (even given nonsense data), same weights
    junk = torch.zeros(4, 10, 9, 3), torch.zeros(4, dtype=torch.long)
    again = train_motion_probe(*junk, *junk, ACTIONS, FIGURE, cache_key="test-sines", progress=False)
    assert weights.stat().st_mtime_ns == mtime
    for p, q in zip(probe.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert motion_probe_dir("other-data", FIGURE, ACTIONS) != _folder()
    assert motion_probe_dir("test-sines", CHAIN, ACTIONS) != _folder()
    assert _folder().parent.name == "probes" and _folder().name.startswith("motion-")
    assert isinstance(load_motion_probe(_folder()), MotionProbe)


def test_feature_extractor_names_its_weights(motion_probe):
    extractor = motion_feature_extractor(_folder())
    assert extractor.name == "motion-probe" and extractor.source == str(_folder())
    assert extractor.hash == file_hash(_folder() / "model.safetensors")
    assert extractor.info["val_accuracy"] >= 0.9 and extractor.info["dim"] == 128
    assert extractor(torch.zeros(2, 16, 9, 3)).shape == (2, 128)


def test_probe_fid_tells_real_from_corrupted_not_from_turned(motion_probe):
    probe = motion_probe
    real, _ = sine_figures(600, seed=2)
    a, b = real[:300], real[300:]
    g = torch.Generator().manual_seed(0)
    noisy = b + 0.05 * torch.randn(b.shape, generator=g)      # 5 cm jitter
    turned = rotate_heading(b, torch.rand(len(b), generator=g) * 2 * math.pi)
    f_a = probe.features(a)
    real_vs_real = fid(f_a, probe.features(b))
    real_vs_noisy = fid(f_a, probe.features(noisy))
    real_vs_turned = fid(f_a, probe.features(turned))
    assert real_vs_real < real_vs_noisy / 2, (real_vs_real, real_vs_noisy)
    # heading is not a difference between two sets of motion
    assert real_vs_turned < real_vs_noisy / 2, (real_vs_turned, real_vs_noisy)


def test_tiny_probe_trains_and_round_trips(tmp_path):
    cfg = MotionProbeConfig.tiny()
    model = MotionProbe(cfg)
    x = torch.randn(4, 12, cfg.num_joints, 3)
    out = model.loss({"motion": x, "label": torch.tensor([0, 1, 2, 0])})
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    save_pretrained(model, tmp_path / "tiny")
    loaded = from_pretrained(tmp_path / "tiny")
    assert isinstance(loaded, MotionProbe) and loaded.config == cfg
    assert torch.equal(loaded.features(x), model.features(x))


def test_stickfigure_judge_knows_the_pace_of_real_clips_and_of_wrong_ones():
    """Real procedural clips move at their action's known pace; the same clips played twice as
    fast do not. (The probe half of the judge is tested above.)"""
    from latentforge.data.motion import StickFigureConfig, StickFigureData, gait_frequency
    from latentforge.eval.judges import JUDGES

    data = StickFigureData(StickFigureConfig(window=64, val_size=60, actions=("walk", "run", "squat")))
    val = data.split("val")
    judge = JUDGES[data.judge]
    import latentforge.eval.judges as judges

    original = judges.motion_judge
    judges.motion_judge = lambda *args: {}  # the probe part is covered elsewhere; this checks the pace
    try:
        right = judge(data, val["motion"], val, val["motion"])
        half = val["motion"][:, ::2]  # every other frame: the clip at twice its pace, for half the window
        fast = np.concatenate([half, half], axis=1)
        wrong = judge(data, fast, val, val["motion"])
    finally:
        judges.motion_judge = original
    assert right["pace_in_range"] == right["real_pace_in_range"] >= 0.95
    assert wrong["pace_in_range"] <= 0.2 and wrong["real_pace_in_range"] == right["real_pace_in_range"]
    assert gait_frequency(fast[:1], data.skeleton)[0] > 1.5 * gait_frequency(val["motion"][:1], data.skeleton)[0]
