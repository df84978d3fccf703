"""REPA (train/repa.py): the alignment loss, where its gradients go, that the hook leaves the
generators' outputs alone, that the encoder builders load real weights, and that a tiny DiT learns
to align its early block with a frozen encoder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.generators.mar import MARConfig, MARGenerator
from latentforge.pretraining.mp3 import MP3Config, MP3Encoder
from latentforge.tokenizers.rae import ProbeEncoder
from latentforge.train.repa import REPA, RepaConfig, alignment_loss, backbone_blocks, build_encoder, resize_tokens


class PatchEncoder(torch.nn.Module):
    """A fixed random linear map of each 4 x 4 patch's mean colour: [B, 3, 16, 16] -> [B, 16, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.avg_pool2d(x, 4)).flatten(2).transpose(1, 2)


def _encoder(seed: int = 0) -> ProbeEncoder:
    torch.manual_seed(seed)
    return ProbeEncoder(4)  # 16 px images -> 4 x 4 patches of 8 channels


def test_alignment_loss_is_mean_one_minus_cosine():
    projected = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])   # [1, 2, 2]
    target = torch.tensor([[[3.0, 3.0], [0.0, -1.0]]])
    # token 1: cos 45 degrees = 1 / sqrt 2; token 2: opposite directions, cos -1
    want = ((1 - 1 / math.sqrt(2)) + (1 - (-1))) / 2
    loss, cos = alignment_loss(projected, target)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert cos.item() == pytest.approx((1 / math.sqrt(2) - 1) / 2, abs=1e-6)


def test_resize_tokens_pools_patches_to_the_token_grid():
    feats = torch.arange(16.0).reshape(1, 16, 1)           # a 4 x 4 grid, one channel
    pooled = resize_tokens(feats, (2, 2))                   # each token the mean of a 2 x 2 block
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert resize_tokens(feats, (4, 4)) is feats
    assert resize_tokens(feats, (8, 8)).shape == (1, 64, 1)


def _grad_sum(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def _tiny(family: str) -> DiTGenerator | MARGenerator:
    if family == "dit":
        return DiTGenerator(DiTConfig(grid=(4, 4), channels=2, dim=32, depth=3, heads=2))
    return MARGenerator(MARConfig(grid=(4, 4), channels=2, dim=32, depth=3, heads=2, head_width=32, head_depth=1))


@pytest.mark.parametrize("family", ["dit", "mar"])
def test_gradients_reach_projector_and_backbone_not_encoder(family):
    torch.manual_seed(0)
    gen = _tiny(family)
    repa = REPA(RepaConfig(projector_dim=16), gen, _encoder(), 8)
    assert repa.layer == 1  # depth // 3
    blocks = backbone_blocks(gen)
    z, images = torch.randn(3, 4, 4, 2), torch.rand(3, 3, 16, 16) * 2 - 1
    out = repa.loss(gen, z, None, images)
    assert out["loss"].item() == pytest.approx(out["denoise"].item() + 0.5 * out["repa"].item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in repa.projector.parameters())
    assert _grad_sum(blocks[0]) > 0 and _grad_sum(gen.in_proj) > 0
    assert all(p.grad is None and not p.requires_grad for p in repa.encoder.parameters())
    # the alignment term alone reaches the blocks up to the chosen one, and none after it
    gen.zero_grad(set_to_none=True)
    repa._recording = True
    gen.loss(z)
    repa._recording = False
    alignment_loss(repa.projector(repa._hidden), repa.targets(images))[0].backward()
    assert _grad_sum(blocks[0]) > 0 and _grad_sum(gen.in_proj) > 0
    assert _grad_sum(blocks[1]) == 0 and _grad_sum(blocks[2]) == 0 and _grad_sum(gen.final if family == "dit" else gen.head) == 0


@pytest.mark.parametrize("family", ["dit", "mar"])
def test_hook_leaves_outputs_unchanged(family):
    torch.manual_seed(0)
    gen = _tiny(family).eval()
    z = torch.randn(2, 4, 4, 2)
    draws = {"noise": torch.randn(2, 4, 4, 2), "t": torch.rand(2)} if family == "dit" else {
        "mask": torch.rand(2, 16) < 0.7, "noise": torch.randn(4, 2, 16, 2), "t": torch.randint(1000, (4, 2, 16))}
    if family == "mar":
        draws["mask"][:, 0] = True
    before = gen.loss(z, **draws)["loss"]
    repa = REPA(RepaConfig(projector_dim=16, layer=2), gen, _encoder(), 8)
    repa._recording = True
    during = gen.loss(z, **draws)["loss"]
    repa._recording = False
    assert repa._hidden is not None and repa._hidden.shape == (2, 16, 32)
    repa.detach_hook()
    after = gen.loss(z, **draws)["loss"]
    assert torch.equal(before, during) and torch.equal(before, after)


def test_build_encoder_loads_probe_and_mp3_weights():
    probe = _encoder(1)
    probe.eval()
    state = {"body." + k[len("body."):]: v for k, v in probe.state_dict().items()}
    state["feature.1.weight"] = torch.zeros(3, 3)  # a whole probe network's extra layers are ignored
    built, dim = build_encoder(RepaConfig(encoder="probe"), state)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert dim == 8 and torch.equal(built.eval()(x), probe(x))
    mp3 = MP3Encoder(MP3Config(size=16, patch=4, dim=24, depth=2, heads=2)).eval()
    built, dim = build_encoder(RepaConfig(encoder="mp3", encoder_heads=2), mp3.state_dict())
    assert dim == 24 and torch.allclose(built.eval()(x), mp3(x))
    with pytest.raises(ValueError, match="not the weights"):
        build_encoder(RepaConfig(encoder="mp3", encoder_heads=2), {**mp3.state_dict(), "junk": torch.zeros(1)})


def test_tiny_dit_learns_to_align():
    """Latents are the images pooled to 4 x 4, the encoder a fixed linear map of the same pooled
    colours (zero-mean features, so no constant direction aligns: checked). After 40 REPA steps the
    projected block-1 states of noisy latents (t = 0.3) align with it on held-out images."""
    torch.manual_seed(0)
    images = torch.rand(256, 3, 16, 16) * 2 - 1
    z = F.avg_pool2d(images, 4).permute(0, 2, 3, 1)  # [256, 4, 4, 3]
    gen = DiTGenerator(DiTConfig(grid=(4, 4), channels=3, dim=32, depth=3, heads=2))
    repa = REPA(RepaConfig(projector_dim=64, weight=1.0), gen, PatchEncoder(), 8)
    gen.latent_norm.fit(z)
    params = [*gen.parameters(), *repa.projector.parameters()]
    opt = torch.optim.Adam(params, 3e-3)
    held = slice(192, 256)
    target = repa.targets(images[held])                                       # [64, 16, 8]
    constant = F.normalize(target.mean((0, 1)), dim=0)
    constant_cos = F.cosine_similarity(target, constant.expand_as(target), dim=-1).mean().item()

    def held_cos() -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            noise = torch.randn(64, 4, 4, 3, generator=g)
            repa._recording = True
            gen.loss(z[held], noise=noise, t=torch.full((64,), 0.3))
            repa._recording = False
            return alignment_loss(repa.projector(repa._hidden), target)[1].item()

    start = held_cos()
    for _ in range(40):
        idx = torch.randint(192, (32,))
        out = repa.loss(gen, z[idx], None, images[idx])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    end = held_cos()
    assert abs(constant_cos) < 0.1 and abs(start) < 0.1, (constant_cos, start)
    assert end > 0.7, (start, end)  # 0.88 measured


def test_recipe_generator_stage_trains_with_repa(tmp_path):
    """The recipe's generator stage with a `repa` section: images ride with the latents, the projector
    trains, only the generator is saved, and the fingerprint of a run without REPA is unchanged."""
    from latentforge.config import from_dict, load_yaml
    from latentforge.recipes import RecipeConfig, Run, link
    from latentforge.serialization import from_pretrained, save_state_dict

    torch.manual_seed(0)
    weights = tmp_path / "probe.safetensors"
    save_state_dict(ProbeEncoder(4).state_dict(), weights)  # a probe's conv stages: 32 px -> 8 x 8 x 8
    data = load_yaml("configs/shapes_sg2im.yaml")
    data.pop("quick")
    data.update(name="repa", out_dir=str(tmp_path))
    data["data"].update(train_size=48, val_size=8)
    data["tokenizer"].update(channels=[8, 16], quantizer={"name": "gaussian", "dim": 4, "latent_channels": 2})
    data["tokenizer_train"].update(steps=2, batch_size=8)
    data["generator"] = {"name": "dit", "dim": 32, "depth": 3, "heads": 2,
                         "conditioner": {**data["generator"]["conditioner"], "dim": 32, "depth": 1, "heads": 2}}
    data["generator_train"].update(steps=3, batch_size=8, log_every=1)
    plain = Run(link(from_dict(RecipeConfig, data, path="")), progress=False)
    data["repa"] = {"projector_dim": 16, "encoder_weights": str(weights)}
    cfg = link(from_dict(RecipeConfig, data, path=""))
    run = Run(cfg, progress=False)
    assert plain.fingerprint("encode") == run.fingerprint("encode")
    assert plain.fingerprint("generator") != run.fingerprint("generator")
    run.run(("data", "tokenizer", "encode", "generator"))
    gen = from_pretrained(run.dir / "generator")  # the generator alone, loadable as any other
    assert type(gen).__name__ == "DiTGenerator"
    log = (run.dir / "generator" / "train").rglob("*.jsonl")
    assert any("repa_cos" in path.read_text() for path in log)
