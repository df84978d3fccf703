"""benchmarks/long_video.py (P4 ARLON): chunk-by-chunk generation and the long-clip judge, at a tiny size.

The script is not a package, so it is loaded from its path."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentforge.conditioning.caption import CaptionConfig, encode_captions
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.quantize.gaussian import GaussianConfig
from latentforge.tokenizers.causal3d import Causal3dConfig, Causal3dTokenizer

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "long_video.py"


@pytest.fixture(scope="module")
def lv():
    spec = importlib.util.spec_from_file_location("long_video_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


CAPTION = CaptionConfig(dim=16, depth=1, heads=2, max_len=8, vocab=("the", "red", "circle", "moves", "left"))


def tiny_dit(guided: bool) -> DiTGenerator:
    torch.manual_seed(0)
    dit = DiTGenerator(DiTConfig(grid=(3, 4, 4), channels=2, patch=2, position="rope", dim=32, depth=1, heads=2,
                                 conditioner=CAPTION, context_frames=1, guide_channels=2 if guided else 0,
                                 guide_noise=0.3 if guided else 0.0))
    dit.latent_norm.fit(torch.randn(64, 3, 4, 4, 2))
    return dit.eval()


@pytest.mark.parametrize("guided", [False, True])
def test_chunks_continue_the_last_latent_frame(lv, guided):
    dit, n, chunks = tiny_dit(guided), 3, 3
    context = dit.encode_condition(encode_captions(["the red circle moves left"] * n, CAPTION.vocab, CAPTION.max_len))
    guides = torch.randn(n, 1 + chunks * 2, 4, 4, 2) if guided else None

    def run(seed):
        return lv.generate_long(dit, n, context, chunks, generator=torch.Generator().manual_seed(seed), steps=2,
                                cfg_scale=2.0, guides=guides)

    out = run(0)
    assert out.frames.shape == (n, 1 + chunks * 2, 4, 4, 2)
    assert len(out.windows) == chunks
    for before, after in zip(out.windows, out.windows[1:]):
        assert torch.equal(after[:, 0], before[:, -1])  # each chunk starts with the last one's last frame, exactly
    assert torch.equal(out.frames, torch.cat([out.windows[0], out.windows[1][:, 1:], out.windows[2][:, 1:]], 1))
    assert torch.equal(run(0).frames, out.frames)
    assert not torch.equal(run(1).frames, out.frames)
    if guided:
        with pytest.raises(ValueError, match="guides cover"):
            lv.generate_long(dit, n, context, chunks + 1, generator=torch.Generator(), steps=1, guides=guides)

    # the stitched latents decode to one long clip: t latent frames -> 1 + (t - 1) f_t frames
    tok = Causal3dTokenizer(Causal3dConfig(frames=5, image_size=8, patch=1, channels=(8, 8), time_down=(True,),
                                           quantizer=GaussianConfig(dim=4, latent_channels=2))).eval()
    with torch.no_grad():
        assert tok.decode(out.frames).shape == (n, 3, 1 + (1 + chunks * 2 - 1) * 2, 8, 8)


def test_ar_chain_feeds_its_last_coarse_frame(lv):
    torch.manual_seed(0)
    ar = ARGenerator(ARConfig(grid=(3, 2, 2), vocab_size=8, dim=32, depth=1, heads=2)).eval()
    codes = lv.ar_chain(ar, 4, None, 3, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (4, 7, 2, 2) and codes.dtype == torch.long
    assert torch.equal(codes, lv.ar_chain(ar, 4, None, 3, generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(0)
    drawn = lv.chain(lambda i, prefix: ar.sample(4, None, generator=g, prefix=prefix), 3)
    for before, after in zip(drawn.windows, drawn.windows[1:]):
        assert torch.equal(after[:, 0], before[:, -1])


def test_coarse_vq_round_trip_shapes(lv):
    torch.manual_seed(0)
    vq = lv.CoarseVQ(channels=4, factor=2, codes=16, dim=4)
    x = torch.randn(3, 5, 8, 8, 4)
    vq.loss(x).backward()  # k-means init on the first training call
    vq.eval()
    codes = vq.encode(x)
    assert codes.shape == (3, 5, 4, 4) and codes.dtype == torch.long
    assert vq.decode(codes).shape == x.shape
    patches = vq._patches(x)
    assert torch.equal(vq._unpatch(patches), x)


def test_fit_axis_recovers_a_bounce(lv):
    t = np.arange(9, dtype=np.float64)
    x = lv.reflect(np.float64(20.0), np.float64(1.3), 4.0, 27.0, t)  # reaches the wall at 27 and comes back
    p0, v = lv.fit_axis(t, x, 4.0, 27.0, 4.8)
    assert abs(p0 - 20.0) < 0.05 and abs(v - 1.3) < 0.01


def test_long_metrics_floor_and_a_frozen_window(lv):
    """Real long clips score near the top in every window; freezing the last window (every frame the
    window's first) keeps its colours and shapes but breaks its motion and its track."""
    s = lv.Settings(eval_clips=6)
    rows = lv.shapes(s, s.long_frames, "val", 6)
    judge_rows = lv.first_window(rows, s.frames)
    real = lv.long_metrics(rows["video"], judge_rows, s.frames)
    assert len(real["windows"]) == s.chunks
    assert real["window0_motion_exact"] >= 0.8 and real["later_motion_exact"] >= 0.8
    assert real["later_traj_err"] < 0.5
    frozen = rows["video"].copy()
    frozen[:, 24:] = frozen[:, 24:25]
    bad = lv.long_metrics(frozen, judge_rows, s.frames)["windows"][-1]
    assert bad["appearance_exact"] >= 0.8
    assert bad["motion_exact"] <= 0.2 and bad["traj_err"] > 1.0
    # objects that never move continue "physically" as still ones: still no caption's motion, never on track
    still = lv.long_metrics(np.repeat(rows["video"][:, :1], s.long_frames, axis=1), judge_rows, s.frames)
    assert still["long_motion_exact"] == 0.0 and still["later_track_ok"] == 0.0
