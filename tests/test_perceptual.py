"""Perceptual distances (LPIPS parity with the lpips package, the probe distance) and VQGAN's adaptive GAN weight."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from helpers import torchvision_stand_in
from safetensors.torch import save_file
from torch import nn

from latentforge.nn.conv import probe_trunk
from latentforge.quantize.vq import VQConfig
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer
from latentforge.tokenizers.discriminator import DiscriminatorConfig, adaptive_weight, hinge_g_loss
from latentforge.tokenizers.perceptual import (
    PerceptualConfig,
    PerceptualLoss,
    alexnet_features,
    lpips_package_heads,
    vgg16_features,
)
from latentforge.tokenizers.vit import ViTConfig, ViTTokenizer

# --- LPIPS parity with the lpips package --------------------------------------------------


def _reference_lpips(net: str, features: nn.Sequential, monkeypatch) -> nn.Module:
    """The lpips package's own LPIPS on the given backbone (its package heads).

    lpips builds its backbone with `torchvision.models.vgg16(pretrained=...).features`, and
    torchvision cannot be imported beside this torch (it is installed without it). The stand-in's
    `vgg16` / `alexnet` hand lpips the same architecture, written out independently here rather
    than taken from latentforge, holding the weights under test."""
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)  # re-import against the stand-in
    with torchvision_stand_in() as tv:
        tv.models.vgg16 = tv.models.alexnet = lambda pretrained=False, **_: types.SimpleNamespace(features=features)
        import lpips

        return lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()


def _test_vgg() -> nn.Sequential:
    """VGG16's feature stack as torchvision lays it out (conv 3x3 + ReLU, max pools), for the reference."""
    layers, c_in = [], 3
    for c in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if c == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers)


def _test_alexnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))


@pytest.mark.parametrize("net,side", [("vgg", 32), ("alex", 64)])
def test_lpips_matches_the_lpips_package(net, side, tmp_path, monkeypatch):
    assert lpips_package_heads(net) is not None  # the dev install brings the lpips package (Makefile)
    torch.manual_seed(0)
    reference_features = _test_vgg() if net == "vgg" else _test_alexnet()
    # The user's torchvision file: {"features.N.weight", ..., "classifier...": ...}
    backbone = {f"features.{k}": v.clone() for k, v in reference_features.state_dict().items()}
    backbone["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    torch.save(backbone, tmp_path / "backbone.pth")
    ref = _reference_lpips(net, reference_features, monkeypatch)

    ours = PerceptualLoss(PerceptualConfig(kind="lpips", net=net, backbone_weights=str(tmp_path / "backbone.pth")))
    ours.load_weights()  # heads: the lpips package's own v0.1 file (the default when it is installed)
    x, y = torch.rand(2, 2, 3, side, side) * 2 - 1
    with torch.no_grad():
        want = ref(x, y).flatten()
        got = ours(x, y)
    assert got.shape == (2,)
    assert (got - want).abs().max().item() <= 1e-5
    assert want.min() > 0


def test_lpips_layouts_match_torchvision_keys():
    vgg = vgg16_features().state_dict()
    assert list(vgg) == list(_test_vgg().state_dict())
    assert vgg["28.weight"].shape == (512, 512, 3, 3) and len(vgg) == 26  # 13 conv layers
    assert list(alexnet_features().state_dict()) == list(_test_alexnet().state_dict())


def test_lpips_refuses_a_missing_or_wrong_file(tmp_path):
    with pytest.raises(ValueError, match="backbone_weights is empty"):
        PerceptualLoss(PerceptualConfig(kind="lpips")).load_weights()
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        PerceptualLoss(PerceptualConfig(kind="lpips", backbone_weights=str(tmp_path / "bad.safetensors"))
                       ).load_weights()
    with pytest.raises(RuntimeError, match="without weights"):
        PerceptualLoss(PerceptualConfig(kind="lpips"))(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))


# --- the probe distance ----------------------------------------------------------------------


def _probe_file(tmp_path, width: int = 4) -> str:
    """A probe network's state dict as eval/probe.py saves it: body.N.* (+ pool, feature layer, heads)."""
    torch.manual_seed(1)
    body = nn.Sequential(*probe_trunk(width))
    for m in body:
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {f"body.{k}": v for k, v in body.state_dict().items()}
    state["feature.1.weight"] = torch.zeros(8, 2 * width * 16)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return str(path)


def test_probe_distance_is_the_equal_weight_lpips_baseline_by_hand(tmp_path):
    width = 4
    loss = PerceptualLoss(PerceptualConfig(kind="probe", probe_width=width, backbone_weights=_probe_file(tmp_path)))
    loss.load_weights()
    trunk = nn.Sequential(*probe_trunk(width))
    trunk.load_state_dict(loss.features.state_dict())
    trunk.eval()
    x, y = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    want = torch.zeros(3)
    hx, hy = x, y
    for stage in range(5):  # conv-BN-SiLU stages; each one's output is a tap
        hx, hy = trunk[3 * stage:3 * stage + 3](hx), trunk[3 * stage:3 * stage + 3](hy)
        ux = hx / hx.pow(2).sum(1, keepdim=True).sqrt()
        uy = hy / hy.pow(2).sum(1, keepdim=True).sqrt()
        want += (ux - uy).pow(2).sum(1).mean(dim=(1, 2))
    got = loss(x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert loss(x, x).abs().max() < 1e-6
    assert (got > 0).all()


def test_probe_distance_is_frozen_and_reaches_only_the_reconstruction(tmp_path):
    loss = PerceptualLoss(PerceptualConfig(kind="probe", probe_width=4, backbone_weights=_probe_file(tmp_path)))
    loss.load_weights()
    loss.train()  # a tokenizer's .train() must not put the batch norms into batch statistics
    assert not any(m.training for m in loss.modules())
    stats = [b.clone() for b in loss.buffers()]
    x_hat = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss(x_hat, x).sum().backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stats, loss.buffers()))


def test_conv_tokenizer_learns_with_the_probe_term_and_saves_its_weights(tmp_path):
    cfg = ConvConfig(image_size=16, channels=(8, 8),
                     perceptual=PerceptualConfig(kind="probe", probe_width=4, weight=0.5,
                                                 backbone_weights=_probe_file(tmp_path)))
    torch.manual_seed(0)
    model = ConvTokenizer(cfg).train()
    model.before_training()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    out = model.loss({"image": x})
    with torch.no_grad():
        want = 0.5 * model.perceptual(model(x), x).mean()
    torch.testing.assert_close(out["perceptual"], want)
    terms = ("l2", "perceptual", "codebook", "commitment")
    assert set(terms) <= set(out)
    torch.testing.assert_close(out["loss"], sum(out[k] for k in terms))
    # the trunk's weights travel with the tokenizer: a rebuilt one loads them without the file
    again = ConvTokenizer(cfg)
    again.load_state_dict(model.state_dict())
    assert bool(again.perceptual.loaded)
    with torch.no_grad():
        torch.testing.assert_close(again.perceptual(x.flip(0), x), model.perceptual(x.flip(0), x))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(30):
        term = model.loss({"image": x})["perceptual"]
        first = term.item() if first is None else first
        term.backward()
        opt.step()
        opt.zero_grad()
    assert term.item() < 0.7 * first


def test_default_conv_config_has_no_perceptual_term():
    model = ConvTokenizer(ConvConfig.tiny())
    assert model.perceptual is None
    assert not any("perceptual" in k for k in model.state_dict())


# --- VQGAN's adaptive GAN weight --------------------------------------------------------------


def test_adaptive_weight_matches_a_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, target = torch.randn(5, 4), torch.randn(5, 3)
    out = net(x)
    rec = (out - target).pow(2).mean()
    gan = -(out * torch.tensor([1.0, -2.0, 0.5])).mean()
    last = net[2].weight
    # by hand: d rec / d W = (2 / (5 * 3)) (out - target)^T h ; d gan / d W = -(1 / 15) diag(c) 1^T h
    h = torch.tanh(net[0](x)).detach()
    g_rec = (2.0 / 15) * (out.detach() - target).T @ h
    g_gan = -(1.0 / 15) * torch.tensor([1.0, -2.0, 0.5])[:, None] * h.sum(0)[None, :]
    want = g_rec.norm() / (g_gan.norm() + 1e-4)
    got = adaptive_weight(rec, gan, last)
    torch.testing.assert_close(got, want)
    assert not got.requires_grad
    # the graph survives for the real backward pass
    (rec + got * gan).backward()
    assert last.grad is not None
    # clamped to [0, 1e4]: a GAN term with no gradient there would give ||g_rec|| / 1e-4
    zero_gan = (net(x) * 0).sum()
    assert adaptive_weight((net(x) - target).pow(2).mean() * 1e6, zero_gan, last).item() == 1e4


def _with_gan(kind: str, **disc) -> ConvTokenizer | ViTTokenizer:
    d = DiscriminatorConfig(channels=8, layers=2, **disc)
    if kind == "conv":
        return ConvTokenizer(ConvConfig(image_size=16, channels=(8, 8), discriminator=d))
    return ViTTokenizer(ViTConfig(image_size=16, patch=4, dim=16, encoder_depth=1, decoder_depth=1, heads=2,
                                  quantizer=VQConfig.tiny(), discriminator=d))


@pytest.mark.parametrize("kind", ["conv", "vit"])
def test_adaptive_gan_weight_in_the_tokenizer_objective(kind):
    torch.manual_seed(0)
    model = _with_gan(kind, weight=0.8, adaptive=True).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = model.loss({"image": x})
    lam = out["adaptive_weight"]
    assert lam > 0
    # g_adv = 0.8 * lambda * hinge_g_loss: recompute lambda and the hinge term by hand on a twin
    torch.manual_seed(0)
    again = _with_gan(kind, weight=0.8, adaptive=True).train()
    x_hat = again(x)
    rec = torch.nn.functional.mse_loss(x_hat, x)
    g = hinge_g_loss(again.discriminator(x_hat))
    last = again.last_layer()
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g, last, retain_graph=True)[0]
    want = g_rec.norm() / (g_gan.norm() + 1e-4)
    torch.testing.assert_close(lam, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["g_adv"], 0.8 * want * g.detach(), rtol=1e-4, atol=1e-6)
    out["loss"].backward()  # the adaptive weight's grads kept the graph for the real backward pass
    assert last is not None and model.last_layer().grad is not None
    # off by default: today's fixed weight, and no statistic
    torch.manual_seed(0)
    plain = _with_gan(kind).train()
    assert "adaptive_weight" not in plain.loss({"image": x})


@pytest.mark.slow
def test_recipe_fills_a_probe_losss_weights_with_the_datas_probe(shapes_probe, tmp_path):
    """`perceptual.kind: probe` with no weights path: the tokenizer stage reads the data set's cached
    probe (the offline default), and the recipe's fingerprint stays that of the config as written."""
    from test_recipe import TINY

    from latentforge.eval.probe import probe_dir
    from latentforge.recipes import Run, load_recipe
    from latentforge.serialization import read_json

    overrides = [f"out_dir={tmp_path}", "name=p", *TINY, "tokenizer.perceptual={kind: probe, weight: 0.1}",
                 "generator=null"]
    run = Run(load_recipe("configs/shapes_sg2im.yaml", overrides), progress=False)
    before = run.fingerprint("tokenizer")
    run.stage_data()
    run.stage_tokenizer()
    saved = read_json(tmp_path / "p" / "tokenizer" / "config.json")["config"]["perceptual"]
    assert saved["backbone_weights"] == str(probe_dir(run.cfg.data) / "model.safetensors")
    assert run.fingerprint("tokenizer") == before
    assert run.cfg.tokenizer.perceptual.backbone_weights == ""
