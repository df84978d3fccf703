"""Next-scale autoregression (VAR): the block-causal mask, one model call per scale, greedy samples as
teacher-forced fixed points, a model that learns, and the link to multi-scale tokenizers."""

import dataclasses

import pytest
import torch
from helpers import randomize

from latentforge.conditioning.class_label import ClassConfig
from latentforge.generators.next_scale import NextScaleConfig, NextScaleGenerator
from latentforge.tokenizers.base import LatentSpec


def model(**kw):
    cfg = dict(grid=(15,), scales=(1, 2, 4, 8), vocab_size=8, dim=32, depth=2, heads=2)
    cfg.update(kw)
    return NextScaleGenerator(NextScaleConfig(**cfg))


def test_a_scale_sees_only_coarser_scales():
    m = randomize(model()).eval()
    codes = torch.randint(8, (2, 15), generator=torch.Generator().manual_seed(0))
    base = m.logits(codes, None)
    changed = codes.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 8               # a token of scale 2 (tokens 3..6)
    out = m.logits(changed, None)
    # scales 0-2 (tokens 0..6) never read scale 2's codes; scale 3 (7..14) does
    assert torch.allclose(base[:, :7], out[:, :7], atol=1e-6) and not torch.allclose(base[:, 7:], out[:, 7:])


def test_one_model_call_per_scale_and_greedy_fixed_points():
    m = randomize(model(conditioner=ClassConfig(dim=32, num_classes=3))).eval()
    ctx = m.encode_condition({"label": torch.tensor([0, 2])})
    calls = []
    handle = m.transformer.register_forward_hook(lambda *_: calls.append(1))
    drawn = m.sample(2, ctx, temperature=0, cfg_scale=2.0)
    handle.remove()
    assert len(calls) == 4 and drawn.shape == (2, 15)     # 4 scales, not 15 tokens
    unguided = m.sample(2, ctx, temperature=0)
    assert torch.equal(m.logits(unguided, ctx).argmax(-1), unguided)


def test_it_learns_two_patterns_and_links_to_multiscale_codes():
    torch.manual_seed(0)
    m = model(depth=1)
    a = torch.randint(8, (1, 15))
    patterns = torch.cat([a, (a + torch.randint(1, 8, a.shape)) % 8])   # differ at every token
    opt = torch.optim.AdamW(m.parameters(), 1e-2)
    for _ in range(150):
        loss = m.loss(patterns.repeat(4, 1))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    # the first token picks the pattern: floor log(2) / 15 = 0.046 nats a token
    assert m.loss(patterns.repeat(8, 1))["loss"].item() < 0.15
    out = m.sample(16, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert int((out[:, None] == patterns[None]).all(-1).any(-1).sum()) >= 14
    spec = LatentSpec(grid=(31,), kind="discrete", vocab_size=256, scales=(1, 2, 4, 8, 16))
    assert NextScaleConfig().fields_for(spec, "pointset")["scales"] == (1, 2, 4, 8, 16)
    with pytest.raises(ValueError, match="multiscale quantizer"):
        NextScaleConfig().fields_for(LatentSpec(grid=(16,), kind="discrete", vocab_size=8), "vq")
    assert NextScaleConfig(grid=(16,)).scale_sizes == (1, 2, 4, 9)


def test_image_scales_are_resampled_in_2d():
    """VAR on images: scale k-1's 2 x 2 embeddings reach scale k's 4 x 4 tokens by bilinear upsampling
    of the 2D grid (raster order), not by a 1D resampling of the flat sequence; a VAR tokenizer's
    spec carries the rank to the generator."""
    import torch.nn.functional as F

    from latentforge.quantize.multiscale import MultiScaleConfig
    from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

    m = model(grid=(21,), scales=(1, 4, 16), scale_rank=2).eval()
    codes = torch.randint(8, (2, 21), generator=torch.Generator().manual_seed(0))
    x = m._inputs(codes, 3)                                                        # [2, 21, D]
    D = x.shape[-1]
    extra = m.scale_emb(m.level[:21]) + m.position[torch.cat([torch.arange(t) for t in (1, 4, 16)])]
    coarse = m.token_emb(codes[:, 1:5]).transpose(1, 2).reshape(2, D, 2, 2)
    expected = F.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(x[:, 5:] - extra[5:], expected, atol=1e-6)
    flat = F.interpolate(coarse.flatten(2), size=16, mode="linear", align_corners=False).transpose(1, 2)
    assert not torch.allclose(expected, flat, atol=1e-3)
    with pytest.raises(ValueError, match="side\\^2"):
        NextScaleConfig(grid=(7,), scales=(1, 2, 4), scale_rank=2)
    cfg = ConvConfig.tiny()                                                        # a 2 x 2 latent grid
    tok = ConvTokenizer(dataclasses.replace(cfg, quantizer=MultiScaleConfig(
        dim=cfg.quantizer.dim, codebook_size=16, scales=(1, 2), rank=2)))
    fields = NextScaleConfig().fields_for(tok.spec, "conv")
    assert fields["scale_rank"] == 2 and fields["scales"] == (1, 4)
