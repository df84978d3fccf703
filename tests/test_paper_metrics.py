"""Paper-comparable image metrics (IS, sFID, ADM reference batches) agree with torch-fidelity and
clean-fid on the same images and the same randomly initialised Inception weights, saved to a file
that every library reads (nothing is downloaded).

What is compared, and how closely:
* torch-fidelity (its own Inception blocks, TF1 bilinear resize inside its forward) against ours
  with resize="tf1": the resize is bit-exact; the networks differ only in how torch orders the
  same float32 operations, so features agree to ~1e-6 relative. IS uses its `isc_features_to_metric`
  on its `logits_unbiased`; FID its `fid_statistics_to_metric`. sFID has no torch reference: its
  features are read from torch-fidelity's network by a hook on Mixed_6d (TF's mixed_6), and the
  distance is clean-fid's Fréchet code (TTUR's, the one ADM's evaluator uses).
* clean-fid "clean" (PIL bicubic on float32) and "legacy_pytorch" (torch bilinear) resizers and its
  FID Inception (pytorch-fid's patched blocks on torchvision's classes; torchvision is replaced by a
  stand-in that hands it torch-fidelity's blocks, so no latentforge code is on the reference path)
  against ours with resize="clean-fid" and "pytorch-fid".
Tolerances: features rtol 1e-4 (float32 networks of ~100 layers, summed in different orders);
FID / sFID / IS rtol 1e-3 (the Fréchet distance subtracts nearly equal traces, which amplifies
feature rounding; our eigh-based square root against scipy's sqrtm on rank-deficient covariances).
The references' Fréchet distances run on the first 64 feature dimensions: the square root of a
2048 x 2048 matrix takes 10-60 s on one shared core (scipy's sqrtm the longest). Full-size
features agree as above, so the full distances do too; benchmarks/paper_metrics.py measures them
at full size on 200 images.
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np
import pytest
import torch
from helpers import torchvision_stand_in
from torch import nn

from latentforge.eval.distribution import fid, gaussian_stats
from latentforge.eval.inception import (
    FID_CLASSES,
    SPATIAL,
    InceptionFeatures,
    InceptionOutputs,
    InceptionV3,
    resize_pil_bicubic,
    resize_tf1_bilinear,
)
from latentforge.eval.inception_score import inception_score
from latentforge.eval.reference_batch import (
    GaussianStats,
    evaluate_against_reference,
    read_reference_batch,
    write_reference_batch,
)
from latentforge.serialization import CorruptFileError, read_weights

N = 6  # images per set: Inception at 299x299 costs ~0.1 s an image on one core
D = 64  # feature dimensions the references' Fréchet distances see (module docstring)


# ---------------------------------------------------------------------------- shared with benchmarks/paper_metrics.py

def random_fid_inception(seed: int = 0) -> InceptionV3:
    """pytorch-fid's 1008-class variant with He-initialised convolutions and random batch-norm
    statistics: activations keep their scale through the ~100 layers (torch's default init shrinks
    them to ~1e-8), so FID and sFID are far from 0. Its IS stays near 1: the pooled features of
    different images share most of their direction, so every image gets nearly the same p(y|x)."""
    gen = torch.Generator().manual_seed(seed)
    model = InceptionV3(FID_CLASSES, fid=True)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.data = torch.randn(module.weight.shape, generator=gen) * math.sqrt(2 / fan_in)
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.data = 0.8 + 0.4 * torch.rand(c, generator=gen)
            module.bias.data = 0.1 * torch.randn(c, generator=gen)
            module.running_mean.data = 0.1 * torch.randn(c, generator=gen)
            module.running_var.data = 0.5 + torch.rand(c, generator=gen)
    model.fc.weight.data = torch.randn(model.fc.weight.shape, generator=gen) * 3 / math.sqrt(model.fc.in_features)
    model.fc.bias.data = 0.1 * torch.randn(FID_CLASSES, generator=gen)
    return model.eval()


@functools.cache
def reference_libraries() -> types.SimpleNamespace:
    """torch-fidelity's and clean-fid's modules. Both import torchvision at module level, and
    torchvision cannot be installed beside this torch; a stand-in in sys.modules lets them import
    and is removed again at once. The paths compared never touch it, except clean-fid's FID
    Inception, which subclasses torchvision's Inception blocks and starts from its inception_v3:
    the stand-in gives it torch-fidelity's blocks (same names and arguments), not ours."""
    with torchvision_stand_in() as tv:
        import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
        import torch_fidelity.interpolate_compat_tensorflow as tf_resize
        import torch_fidelity.metric_fid as tf_fid
        import torch_fidelity.metric_isc as tf_isc

        tv.models.inception.InceptionA = tf_inception.InceptionA
        tv.models.inception.InceptionC = tf_inception.InceptionC
        tv.models.inception.InceptionE = tf_inception.InceptionE_1

        def inception_v3(num_classes: int = 1000, **_) -> nn.Module:
            # the layers clean-fid keeps; it replaces the Mixed_5*, 6b-6e and 7b-7c blocks itself
            net = nn.Module()
            net.Conv2d_1a_3x3 = tf_inception.BasicConv2d(3, 32, kernel_size=3, stride=2)
            net.Conv2d_2a_3x3 = tf_inception.BasicConv2d(32, 32, kernel_size=3)
            net.Conv2d_2b_3x3 = tf_inception.BasicConv2d(32, 64, kernel_size=3, padding=1)
            net.Conv2d_3b_1x1 = tf_inception.BasicConv2d(64, 80, kernel_size=1)
            net.Conv2d_4a_3x3 = tf_inception.BasicConv2d(80, 192, kernel_size=3)
            net.Mixed_6a = tf_inception.InceptionB(288)
            net.Mixed_7a = tf_inception.InceptionD(768)
            net.fc = nn.Linear(2048, num_classes)
            return net

        tv.models.inception_v3 = inception_v3
        import cleanfid.fid as cf_fid
        import cleanfid.inception_pytorch as cf_inception
        import cleanfid.resize as cf_resize
    return types.SimpleNamespace(tf_inception=tf_inception, tf_resize=tf_resize, tf_fid=tf_fid, tf_isc=tf_isc,
                                 cf_fid=cf_fid, cf_inception=cf_inception, cf_resize=cf_resize)


def torch_fidelity_outputs(path, images: np.ndarray) -> dict[str, np.ndarray]:
    """torch-fidelity's FID Inception from the weights file: pool, logits_unbiased, and sFID's
    spatial features (Mixed_6d's first 7 channels, TF's mixed_6/conv[..., :7], (H, W, C) order)."""
    ref = reference_libraries()
    net = ref.tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                       feature_extractor_weights_path=str(path))
    taps = []
    hook = net.Mixed_6d.register_forward_hook(lambda m, i, out: taps.append(out[:, :7].permute(0, 2, 3, 1)))
    with torch.no_grad():
        pool, logits = net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    hook.remove()
    return {"pool": pool.double().numpy(), "logits_unbiased": logits.double().numpy(),
            "spatial": taps[0].reshape(len(images), -1).double().numpy()}


def clean_fid_features(path, images: np.ndarray, mode: str) -> np.ndarray:
    """clean-fid's pool features: its resizer for `mode` ("clean" or "legacy_pytorch") image by
    image, then its FID Inception from the weights file (its download replaced by reading the
    file). "clean" normally runs NVIDIA's TorchScript port (downloaded) and feeds it (x - 128) / 128;
    here the same normalisation goes into pytorch-fid's port of the same TF graph."""
    ref = reference_libraries()
    original = ref.cf_inception.load_state_dict_from_url
    ref.cf_inception.load_state_dict_from_url = lambda url, progress=True: read_weights(path)
    try:
        net = ref.cf_inception.InceptionV3(output_blocks=[3], resize_input=False,
                                           normalize_input=mode == "legacy_pytorch").eval()
    finally:
        ref.cf_inception.load_state_dict_from_url = original
    resize = ref.cf_resize.build_resizer(mode)
    batch = torch.from_numpy(np.stack([resize(im) for im in images])).permute(0, 3, 1, 2).float()  # [0, 255]

    def model(x):  # clean-fid's feature_extractor(): "pytorch_inception" and the TorchScript wrapper
        x = x / 255 if mode == "legacy_pytorch" else (x - 128) / 128
        return net(x)[0].squeeze(-1).squeeze(-1)
    return ref.cf_fid.get_batch_features(batch, model, torch.device("cpu")).astype(np.float64)


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(random_fid_inception().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images():
    """Two sets of N random 32x32 images, the second brighter, so FID is well above zero."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(64, 256, (N, 32, 32, 3), dtype=np.uint8)
    return np.concatenate([a, b])


@pytest.fixture(scope="module")
def ours(weights, images):
    return InceptionFeatures.from_file(weights, resize="tf1").outputs(images)


@pytest.fixture(scope="module")
def fidelity(weights, images):
    return torch_fidelity_outputs(weights, images)


def _close(ours_value: float, ref_value: float, rtol: float = 1e-3) -> None:
    assert ours_value == pytest.approx(ref_value, rel=rtol), (ours_value, ref_value)


# ---------------------------------------------------------------------------- resizes (no network: exact)

def test_tf1_resize_is_bit_exact_with_torch_fidelity(images):
    ref = reference_libraries()
    x = torch.from_numpy(images[:3]).permute(0, 3, 1, 2).float()
    want = ref.tf_resize.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    assert torch.equal(resize_tf1_bilinear(x), want)
    # TF1 samples at i * in/out with no half-pixel offset: the first output pixel is the first input pixel
    assert torch.equal(resize_tf1_bilinear(x)[..., 0, 0], x[..., 0, 0])


def test_pil_bicubic_resize_is_clean_fids(images):
    resize = reference_libraries().cf_resize.build_resizer("clean")
    want = np.stack([resize(im) for im in images[:3]]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(resize_pil_bicubic(images[:3]).numpy(), want)


# ---------------------------------------------------------------------------- torch-fidelity

def test_features_fid_and_is_agree_with_torch_fidelity(ours, fidelity):
    np.testing.assert_allclose(ours.pool.numpy(), fidelity["pool"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.logits_unbiased.numpy(), fidelity["logits_unbiased"], rtol=1e-4, atol=1e-4)
    assert ours.pool.std() > 0.1 and ours.logits_unbiased.std() > 1  # features far from 0 and from each other
    ref = reference_libraries()
    pool = fidelity["pool"][:, :D]
    stats = [ref.tf_fid.fid_features_to_statistics(torch.from_numpy(f)) for f in (pool[:N], pool[N:])]
    want_fid = ref.tf_fid.fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    _close(fid(ours.pool[:N, :D], ours.pool[N:, :D]), want_fid)
    # torch-fidelity shuffles rows with RandomState(2020) before splitting
    want = ref.tf_isc.isc_features_to_metric(torch.from_numpy(fidelity["logits_unbiased"]), splits=3)
    got = inception_score(ours.logits_unbiased, splits=3, shuffle_seed=2020)
    _close(got["is"], want["inception_score_mean"])
    _close(got["is_std"], want["inception_score_std"], rtol=1e-2)  # the spread of 3 numbers near each other
    assert 1 < got["is"] < FID_CLASSES


def test_sfid_features_are_mixed_6d_first_channels_in_tf_order(ours, fidelity):
    assert ours.spatial.shape == (2 * N, SPATIAL) == (2 * N, 17 * 17 * 7)
    np.testing.assert_allclose(ours.spatial.numpy(), fidelity["spatial"], rtol=1e-4, atol=1e-5)
    cf = reference_libraries().cf_fid
    a, b = fidelity["spatial"][:N, :D], fidelity["spatial"][N:, :D]
    want = cf.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    _close(fid(ours.spatial[:N, :D], ours.spatial[N:, :D]), want)


# ---------------------------------------------------------------------------- clean-fid

@pytest.mark.parametrize("mode, resize", [("clean", "clean-fid"), ("legacy_pytorch", "pytorch-fid")])
def test_features_and_fid_agree_with_clean_fid(weights, images, mode, resize):
    subset = np.concatenate([images[:3], images[N:N + 3]])  # 6 images: one network pass a library
    want = clean_fid_features(weights, subset, mode)
    got = InceptionFeatures.from_file(weights, resize=resize)(subset)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    _close(fid(got[:3, :D], got[3:, :D]), reference_libraries().cf_fid.fid_from_feats(want[:3, :D], want[3:, :D]))


# ---------------------------------------------------------------------------- IS maths

def test_inception_score_known_values():
    # one-hot confident predictions spread evenly over k classes: IS = k; identical predictions: IS = 1
    k = 5
    logits = torch.full((10, k), -1e4).scatter_(1, (torch.arange(10) % k)[:, None], 0.0)
    assert inception_score(logits, splits=2)["is"] == pytest.approx(k)
    assert inception_score(torch.zeros(10, k), splits=2)["is"] == pytest.approx(1.0)
    # ADM's consecutive parts of split_size rows equal N // splits parts when they divide evenly
    rand = torch.randn(12, 7)
    assert inception_score(rand, split_size=4)["is"] == pytest.approx(inception_score(rand, splits=3)["is"])
    assert inception_score(rand, split_size=5)["is_splits"] == 3  # 5 + 5 + 2
    # saturated logits: a class no image gives any probability (exp underflows to 0) adds 0, not NaN
    hard = torch.full((6, 4), -1e4).scatter_(1, (torch.arange(6) % 3)[:, None], 0.0)
    assert inception_score(hard, splits=2)["is"] == pytest.approx(3.0)


def test_inception_score_agrees_with_torch_fidelity_away_from_one():
    # the random network's photo logits give IS near 1; spread logits test the maths where IS is large
    logits = torch.randn(60, FID_CLASSES, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    want = reference_libraries().tf_isc.isc_features_to_metric(logits, splits=10)
    got = inception_score(logits, splits=10, shuffle_seed=2020)
    assert got["is"] > 2
    _close(got["is"], want["inception_score_mean"], rtol=1e-12)
    _close(got["is_std"], want["inception_score_std"], rtol=1e-9)


# ---------------------------------------------------------------------------- ADM reference batches

def test_fid_against_statistics_in_the_sample_space_equals_fid(ours):
    # exact identity (trace of the root through an M x M matrix): checked at D = 64, and with more samples than D
    a, b = ours.pool[:N, :D], ours.pool[N:, :D]
    assert GaussianStats.of(a).frechet_to_samples(b) == pytest.approx(fid(a, b), rel=1e-7)
    rng = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=rng, dtype=torch.float64), torch.randn(30, 8, generator=rng, dtype=torch.float64)
    assert GaussianStats.of(x).frechet_to_samples(y) == pytest.approx(fid(x, y), rel=1e-9)


def test_reference_batch_round_trip_and_stored_statistics(tmp_path, weights, images, ours):
    plain = tmp_path / "ref.npz"
    write_reference_batch(plain, images[:N])
    back = read_reference_batch(plain)
    np.testing.assert_array_equal(back.images, images[:N])
    assert back.pool is None and back.spatial is None
    # a file with statistics (as ADM's VIRTUAL_* batches) is scored against them, not its images:
    # statistics of the samples themselves give FID = sFID = 0
    stored = tmp_path / "ref_stats.npz"
    pool, spatial = GaussianStats.of(ours.pool[N:]), GaussianStats.of(ours.spatial[N:])
    np.savez(stored, arr_0=images[:N], mu=pool.mu.numpy(), sigma=pool.sigma.numpy(), mu_s=spatial.mu.numpy(),
             sigma_s=spatial.sigma.numpy())
    ref = read_reference_batch(stored)
    assert ref.images is None  # the statistics make the images unnecessary: not read
    np.testing.assert_array_equal(read_reference_batch(stored, load_images=True).images, images[:N])
    torch.testing.assert_close(ref.spatial.sigma, gaussian_stats(ours.spatial[N:])[1], rtol=0, atol=0)
    features = InceptionFeatures.from_file(weights, resize="tf1")
    samples = InceptionOutputs(ours.pool[N:], ours.spatial[N:], ours.logits[N:], ours.logits_unbiased[N:])
    scores = evaluate_against_reference(features, ref, samples, splits=2)
    assert scores["reference_statistics"] == "stored" and scores["n"] == N
    scale = float(pool.sigma.trace()), float(spatial.sigma.trace())
    assert abs(scores["fid"]) < 1e-9 * scale[0] and abs(scores["sfid"]) < 1e-9 * scale[1]
    assert scores["is"] == inception_score(ours.logits_unbiased[N:], splits=2)["is"]
    # without statistics, they are computed from arr_0 by the network (one more pass over N images)
    computed = evaluate_against_reference(features, back, samples, splits=2)
    assert computed["reference_statistics"] == "computed"
    # (the M x M Fréchet path, equal to `fid` as tested above; the full 2048-dim one costs ~5 s a call)
    _close(computed["fid"], GaussianStats.of(ours.pool[:N]).frechet_to_samples(ours.pool[N:]), rtol=1e-6)
    _close(computed["sfid"], GaussianStats.of(ours.spatial[:N]).frechet_to_samples(ours.spatial[N:]), rtol=1e-6)


def test_bad_reference_batches_are_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(CorruptFileError, match="arr_0 must be uint8"):
        read_reference_batch(path)
    np.savez(path, arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=np.zeros(2048))
    with pytest.raises(CorruptFileError, match="'mu' without 'sigma'"):
        read_reference_batch(path)
    np.savez(path, arr_0=np.array([{"a": 1}], dtype=object))  # only pickle can read it back
    with pytest.raises(CorruptFileError, match="not a readable .npz"):
        read_reference_batch(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(CorruptFileError):
        read_reference_batch(path)
    with pytest.raises(ValueError, match="uint8 images"):
        write_reference_batch(tmp_path / "x.npz", np.zeros((2, 8, 8, 3), np.float32))
