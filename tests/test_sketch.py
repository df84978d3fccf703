"""Sketch conditioning (conditioning/sketch.py): edges, the encoder on the latent grid, LoRA fine-tuning."""

import math

import numpy as np
import pytest
import torch
from einops import rearrange
from helpers import randomize

from latentforge.conditioning.class_label import ClassConfig
from latentforge.conditioning.sketch import SketchConfig, SketchEncoder, edge_map, with_sketch
from latentforge.generators.masked import MaskedConfig, MaskedGenerator
from latentforge.nn.lora import add_lora, merge_lora


def test_edge_map_finds_a_squares_outline_and_nothing_else():
    """A red square on Moving Shapes' grey covering pixels 8..15: the step lies between pixels 7|8
    and 15|16, so the edges are the two-pixel-wide ring on rows/columns 7-8 and 15-16, less its four
    outer corners (they touch the square only diagonally: magnitude sqrt(2) c / 8 = 0.12 < 0.15)."""
    frame = np.full((24, 24, 3), 48, np.uint8)
    frame[8:16, 8:16] = (225, 40, 40)
    edges = edge_map(frame[None, None])[0, 0].numpy()                     # [24, 24]
    ring = np.zeros((24, 24), bool)
    ring[7:17, 7:17] = True
    ring[9:15, 9:15] = False
    ring[[7, 7, 16, 16], [7, 16, 7, 16]] = False
    assert np.array_equal(edges, ring)
    # the same answer from float clips in [0, 1] and torch input
    assert torch.equal(edge_map(torch.from_numpy(frame[None, None]).float() / 255)[0, 0], torch.from_numpy(ring))
    # a flat frame and the frame's own border give none (replicate padding)
    assert not edge_map(np.full((1, 2, 8, 8, 3), 200, np.uint8)).any()
    with pytest.raises(ValueError, match=r"\[N, T, H, W, 3\]"):
        edge_map(np.zeros((2, 8, 8, 3), np.uint8))


def encoder(**changes) -> SketchEncoder:
    return SketchEncoder(SketchConfig(dim=16, hidden=8, time_factor=2, spatial_factor=4, **changes))


def test_sketch_map_is_on_the_latent_grid_zero_at_init_and_causal_in_time():
    torch.manual_seed(0)
    sketch = encoder()
    edges = torch.rand(2, 5, 16, 8) > 0.7                                   # T = 1 + 2*2, H = 16, W = 8
    region = torch.ones_like(edges)
    out = sketch(edges, region)
    assert out.shape == (2, 3 * 4 * 2, 16)                                  # T' H' W' = 3 x 4 x 2
    assert torch.equal(out, torch.zeros_like(out))
    for p in sketch.out.parameters():
        torch.nn.init.normal_(p)
    out = sketch(edges, region).view(2, 3, 8, 16)                           # [B, T', H' W', D]
    later = edges.clone()
    later[:, 3:] = ~later[:, 3:]                                            # frames 3-4: latent frame 2 only
    moved = sketch(later, region).view(2, 3, 8, 16)
    assert torch.equal(moved[:, :2], out[:, :2]) and not torch.allclose(moved[:, 2], out[:, 2])
    first = edges.clone()
    first[:, 0] = ~first[:, 0]                                              # frame 0: latent frame 0 alone
    moved = sketch(first, region).view(2, 3, 8, 16)
    assert torch.equal(moved[:, 1:], out[:, 1:]) and not torch.allclose(moved[:, 0], out[:, 0])
    # edges outside the region are not read
    assert torch.equal(sketch(edges, region.clone().fill_(False)), sketch(torch.zeros_like(edges), region.clone().fill_(False)))


def test_sketch_errors_name_the_shape_at_fault():
    sketch = encoder()
    ok = torch.zeros(1, 5, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\[B, T, H, W\], got \[5, 8, 8\]"):
        sketch(ok[0], ok[0])
    with pytest.raises(ValueError, match=r"region \[1, 5, 8, 4\] must match edges \[1, 5, 8, 8\]"):
        sketch(ok, ok[..., :4])
    with pytest.raises(ValueError, match="T = 1 \\+ 2k frames.*got 4"):
        sketch(ok[:, :4], ok[:, :4])
    with pytest.raises(ValueError, match="multiples of 4 pixels.*8 x 6"):
        sketch(ok[..., :6], ok[..., :6])
    with pytest.raises(ValueError, match="power of two"):
        SketchConfig(spatial_factor=3)
    with pytest.raises(ValueError, match="conditioner"):
        with_sketch(None, torch.zeros(1, 4, 16))


# code c drawn as a filled 2 x 2 quadrant (row c // 2, column c % 2) of its 4 x 4 pixel cell
QUADRANTS = torch.zeros(4, 4, 4)
for c in range(4):
    QUADRANTS[c, 2 * (c // 2):2 * (c // 2) + 2, 2 * (c % 2):2 * (c % 2) + 2] = 1


def test_lora_and_sketch_learn_to_inpaint_what_the_sketch_draws_and_merge_exactly():
    """Codes are uniform in {0..3} everywhere; inside the region, code c is drawn as edges on quadrant c of
    its cell (every frame of its group). Without the sketch the region's loss cannot go below
    ln 4 = 1.39 nats; a frozen base with LoRA + SketchEncoder reads it and gets below 0.3."""
    torch.manual_seed(0)
    D, grid = 32, (2, 2, 2)                                                 # clips of 3 frames, 8 x 8 pixels
    gen = randomize(MaskedGenerator(MaskedConfig(grid=grid, vocab_size=4, dim=D, depth=1, heads=2, p_uncond=0.0,
                                                 conditioner=ClassConfig(dim=D, num_classes=2))))
    sketch = SketchEncoder(SketchConfig(dim=D, hidden=16, time_factor=2, spatial_factor=4))
    g = torch.Generator().manual_seed(0)

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        codes = torch.randint(0, 4, (n, *grid), generator=g)
        region = torch.rand(n, *grid, generator=g) < 0.5
        cell = rearrange(QUADRANTS[codes], "n t h w y x -> n t (h y) (w x)")  # [n, t', 8, 8]
        frames = cell[:, [0, 1, 1]]                                         # latent frame 1 covers frames 1-2
        pixels = region.repeat_interleave(4, 2).repeat_interleave(4, 3)[:, [0, 1, 1]]
        return codes, region, frames * pixels, pixels

    label = torch.zeros(64, dtype=torch.long)
    before = gen.logits(torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool),
                        gen.encode_condition({"label": label[:1]}))
    add_lora(gen, rank=4, targets=("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    codes, region, edges, pixels = batch(4)
    ctx = with_sketch(gen.encode_condition({"label": label[:4]}), sketch(edges, pixels))
    start = gen.logits(torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool), with_sketch(
        gen.encode_condition({"label": label[:1]}), ctx.spatial[:1]))
    assert torch.equal(start, before)                                       # zero LoRA B, zero sketch output
    params = [p for p in gen.parameters() if p.requires_grad] + list(sketch.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    gen.train()
    for _ in range(150):
        codes, region, edges, pixels = batch(64)
        ctx = with_sketch(gen.encode_condition({"label": label}), sketch(edges, pixels))
        loss = gen.loss(codes, ctx, mask=region)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen.eval()
    with torch.no_grad():
        codes, region, edges, pixels = batch(64)
        ctx = with_sketch(gen.encode_condition({"label": label}), sketch(edges, pixels))
        loss = float(gen.loss(codes, ctx, mask=region)["loss"])
        assert loss < 0.3 < math.log(4)
        flat = codes.view(64, -1)
        adapted = gen.logits(flat, region.view(64, -1), ctx)
        assert merge_lora(gen) == 4
        assert torch.allclose(gen.logits(flat, region.view(64, -1), ctx), adapted, atol=1e-5)
