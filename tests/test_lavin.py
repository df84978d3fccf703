"""P12 LaVin-DiT: Shapes image-to-image tasks, the two-stream joint-attention block, 3D RoPE over
stacked frames, and the in-context DiT (context pairs -> answer by flow matching)."""

import dataclasses

import numpy as np
import pytest
import torch

from latentforge.data.shapes import BACKGROUND, COLORS, SceneGraph, ShapeObject, ShapesConfig, render, sample_scene
from latentforge.data.shapes_seg import PALETTE, class_map
from latentforge.data.shapes_tasks import (
    EDGE_ON,
    HELD_OUT_TASKS,
    TRAIN_TASKS,
    Task,
    TaskPairs,
    apply_task,
    boundary,
    object_map,
)
from latentforge.generators.lavin import LaVinConfig, LaVinDiT
from latentforge.nn.joint_attention import JointAttentionBlock
from latentforge.nn.rope import apply_rope

CFG = ShapesConfig(size=16)


def scenes(n=6):
    return [sample_scene(CFG, "train", i) for i in range(n)]


# --- tasks ---------------------------------------------------------------------------------------------------


def test_task_names_round_trip_and_image_ops_come_last():
    for name in TRAIN_TASKS + HELD_OUT_TASKS:
        assert Task.parse(name).name == name
    with pytest.raises(ValueError):
        Task.parse("flip:h+recolour:1")          # an image op must be the last step
    with pytest.raises(ValueError):
        Task.parse("move:1")                     # move takes (dx, dy)


def test_flip_twice_is_the_identity_and_recolour_is_a_cyclic_colour_map():
    names = list(COLORS)
    for scene in scenes():
        image = render(scene, 16)
        for axis in "hv":
            source, flipped = apply_task(Task.parse(f"flip:{axis}"), scene, 16)
            assert np.array_equal(source, image) and not np.array_equal(flipped, image)
            assert np.array_equal(np.flip(flipped, 1 if axis == "h" else 0), image)
        _, recoloured = apply_task(Task.parse("recolour:1"), scene, 16)
        for obj in scene.objects:                # an object's centre pixel takes exactly the next colour
            row, col = int(obj.y * 16), int(obj.x * 16)
            if tuple(image[row, col]) == COLORS[obj.color]:
                assert tuple(recoloured[row, col]) == COLORS[names[(names.index(obj.color) + 1) % 6]]
        # six steps round the colour wheel come back; shapes and positions never change
        _, around = apply_task(Task.parse("recolour:3+recolour:3"), scene, 16)
        assert np.array_equal(around, image)
        assert np.array_equal((recoloured == BACKGROUND).all(-1), (image == BACKGROUND).all(-1))


def test_move_shifts_the_render_by_whole_pixels():
    square = ShapeObject("square", "red", "large", 0.5, 0.5)
    scene = SceneGraph((square,))
    image = render(scene, 16)
    _, moved = apply_task(Task.parse("move:3,-2"), scene, 16)
    assert np.array_equal(moved, np.roll(image, (-2, 3), axis=(0, 1)))  # nothing reaches the border here


def test_edge_map_of_a_filled_square_is_its_outline_and_fill_inverts_it():
    square = ShapeObject("square", "green", "large", 0.5, 0.5)
    scene = SceneGraph((square,))
    ids = object_map(scene, 16)
    rows, cols = np.nonzero(ids)
    h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert ids.sum() == h * w                                    # the square is a solid h x w block
    _, edges = apply_task(Task.parse("edge"), scene, 16)
    on = (edges == EDGE_ON).all(-1)
    assert on.sum() == 2 * (h + w) - 4                           # exactly its one-pixel outline
    assert on[rows.min()].sum() == w and not on[rows.min() + 1:rows.max(), cols.min() + 1:cols.max()].any()
    outline, filled = apply_task(Task.parse("fill"), scene, 16)
    assert np.array_equal(filled, render(scene, 16))
    assert ((outline == COLORS["green"]).all(-1) == on).all()    # the query is that outline in the colour


def test_segment_target_is_the_palette_class_map_and_boundaries_split_touching_objects():
    for scene in scenes(3):
        _, seg = apply_task(Task.parse("segment"), scene, 16)
        assert np.array_equal(seg, PALETTE[class_map(scene, 16)])
    ids = np.array([[0, 0, 0, 0], [0, 1, 2, 0], [0, 1, 2, 0], [0, 0, 0, 0]], np.uint8)
    assert boundary(ids)[1:3, 1:3].all()                          # two touching objects both get edges


# --- in-context batches ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bank():
    return TaskPairs(CFG, "train", ("flip:h", "flip:v", "recolour:1"), 12)


def find(bank, image):
    """(task, scene) indices of the bank's target equal to `image`."""
    hits = (bank.targets == image).flatten(2).all(-1).nonzero()
    return {tuple(h) for h in hits.tolist()}


def test_batches_show_the_query_task_wrong_task_or_broken_pairs(bank):
    g = torch.Generator().manual_seed(0)
    tasks = torch.tensor([0, 1, 2, 0, 1, 2])
    for kind in ("correct", "wrong", "shuffled"):
        b = bank.sample(6, (1, 3), g, task=tasks, context=kind)
        assert b["context"].shape == (6, 3, 2, 3, 16, 16)
        n = b["pair_mask"].sum(1)
        assert (b["pair_mask"] == (torch.arange(3)[None] >= 3 - n[:, None])).all()   # padding first
        for i in range(6):
            t = int(tasks[i])
            assert torch.equal(b["target"][i], bank.targets[t][(bank.inputs[t] == b["query"][i]).flatten(1).all(1)][0])
            for j in range(3 - int(n[i]), 3):
                x, y = b["context"][i, j]
                assert not torch.equal(x, b["query"][i])                  # pairs come from other scenes
                (ctx_t, ctx_s), = [(a, s) for a, s in find(bank, y)][:1]
                pair_is_real = torch.equal(bank.inputs[ctx_t, ctx_s], x)
                assert (ctx_t == t) == (kind != "wrong")
                assert pair_is_real == (kind != "shuffled")


# --- the two-stream block ---------------------------------------------------------------------------------------


def randomised(block):
    """A block whose zero-initialised modulations are random, so its attention and MLP branches count."""
    torch.manual_seed(0)
    for p in block.parameters():
        if p.abs().sum() == 0 and p.dim() > 0:
            torch.nn.init.normal_(p, std=0.3)
    return block


def block_inputs(B=2, Sc=6, St=4, D=16):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, Sc, D, generator=g), torch.randn(B, St, D, generator=g),
            torch.randn(B, D, generator=g), torch.randn(B, D, generator=g))


def test_two_streams_have_separate_weights_and_one_stream_ties_them():
    two = randomised(JointAttentionBlock(16, 2))
    one = randomised(JointAttentionBlock(16, 2, shared=True))
    assert two.cond is not two.target and one.cond is one.target
    n_two, n_one = (sum(p.numel() for p in b.parameters()) for b in (two, one))
    assert n_two == 2 * n_one
    xc, xt, cc, ct = block_inputs()
    before = two(xc, xt, cc, ct)
    with torch.no_grad():
        two.target.mlp.proj.weight.add_(1.0)      # the target stream's MLP: the condition stream's output is untouched
    after = two(xc, xt, cc, ct)
    assert torch.equal(before[0], after[0]) and not torch.allclose(before[1], after[1])
    with torch.no_grad():
        two.target.qkv.weight.add_(0.5)           # its keys / values: the condition stream reads them jointly
    assert not torch.allclose(before[0], two(xc, xt, cc, ct)[0])
    before = one(xc, xt, cc, ct)
    with torch.no_grad():
        one.target.mlp.proj.weight.add_(1.0)      # tied: the same MLP runs in both streams
    after = one(xc, xt, cc, ct)
    assert not torch.allclose(before[0], after[0]) and not torch.allclose(before[1], after[1])


def test_joint_attention_lets_the_target_read_the_condition_unless_masked():
    block = randomised(JointAttentionBlock(16, 2))
    xc, xt, cc, ct = block_inputs()
    xc.requires_grad_(True)
    block(xc, xt, cc, ct)[1].sum().backward()
    assert xc.grad.abs().sum() > 0
    Sc, St = xc.shape[1], xt.shape[1]
    mask = torch.ones(Sc + St, Sc + St, dtype=torch.bool)
    mask[Sc:, :Sc] = False                        # target queries may not see condition keys
    xc.grad = None
    block(xc, xt, cc, ct, attn_mask=mask)[1].sum().backward()
    assert xc.grad.abs().sum() == 0


def test_a_fresh_block_is_the_identity():
    block = JointAttentionBlock(16, 2)
    xc, xt, cc, ct = block_inputs()
    out = block(xc, xt, cc, ct)
    assert torch.equal(out[0], xc) and torch.equal(out[1], xt)


# --- 3D RoPE and the model ---------------------------------------------------------------------------------------


def test_rope_rotates_frames_apart_and_only_relative_frame_positions_matter():
    model = LaVinDiT(LaVinConfig.tiny())
    cos, sin = model.rope(4, None, torch.device("cpu"))       # 4 frames of a 2 x 2 grid: [16, F]
    n = model.config.grid ** 2
    # token 0 of frame 0 and of frame 1: same (row, col), different rotation; within a frame rows differ too
    assert not torch.allclose(cos[0], cos[n]) and not torch.allclose(cos[0], cos[1])
    q, k = torch.randn(2, model.config.dim // model.config.heads, generator=torch.Generator().manual_seed(0))
    shifted = model.rope(4, torch.tensor([5]), torch.device("cpu"))
    dots = []
    for c, s in ((cos, sin), (shifted[0][0], shifted[1][0])):
        rq = apply_rope(q.expand(1, 1, 16, -1), c, s)[0, 0]
        rk = apply_rope(k.expand(1, 1, 16, -1), c, s)[0, 0]
        dots.append(rq @ rk.T)                              # [16, 16]
    assert torch.allclose(dots[0], dots[1], atol=1e-5)      # a common shift along T changes no product


def tiny_batch(B=3, N=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, 2, 3, size, size, generator=g), torch.ones(B, N, dtype=torch.bool),
            torch.randn(B, 3, size, size, generator=g), torch.randn(B, 3, size, size, generator=g),
            torch.rand(B, generator=g))


def randomised_model(config):
    model = LaVinDiT(config)
    for block in model.blocks:
        randomised(block)
    torch.nn.init.normal_(model.final.linear.weight, std=0.3)
    return model


def test_model_ignores_padding_pairs_and_its_temporal_offset_but_reads_real_pairs():
    model = randomised_model(LaVinConfig.tiny())
    context, mask, query, x_t, t = tiny_batch()
    mask[:, 0] = False                                       # the first pair is padding
    v = model(context, mask, query, x_t, t)
    assert v.shape == query.shape
    other = context.clone()
    other[:, 0] = torch.randn_like(other[:, 0])
    assert torch.allclose(model(other, mask, query, x_t, t), v, atol=1e-6)
    other[:, 1] = torch.randn_like(other[:, 1])              # a real pair changes the answer
    assert not torch.allclose(model(other, mask, query, x_t, t), v, atol=1e-3)
    shifted = model(context, mask, query, x_t, t, offset=torch.tensor([3, 17, 31]))
    assert torch.allclose(shifted, v, atol=1e-4)             # RoPE is relative: the offset is a no-op


def test_one_stream_flag_ties_every_block():
    two, one = LaVinDiT(LaVinConfig.tiny()), LaVinDiT(dataclasses.replace(LaVinConfig.tiny(), two_stream=False))
    assert all(b.cond is b.target for b in one.blocks) and all(b.cond is not b.target for b in two.blocks)
    assert sum(p.numel() for p in one.parameters()) < sum(p.numel() for p in two.parameters())


def test_sampler_is_seeded_and_guidance_mixes_in_the_query_only_velocity():
    model = randomised_model(LaVinConfig.tiny())
    context, mask, query, _, _ = tiny_batch()
    a = model.sample(context, mask, query, generator=torch.Generator().manual_seed(3))
    b = model.sample(context, mask, query, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == query.shape
    null = model.sample(context, torch.zeros_like(mask), query, steps=1, generator=torch.Generator().manual_seed(3))
    cond = model.sample(context, mask, query, steps=1, generator=torch.Generator().manual_seed(3))
    guided = model.sample(context, mask, query, steps=1, guidance=2.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(guided, null + 2.0 * (cond - null), atol=1e-5)   # one Euler step is linear in v


def colour_task(B, N, g, size=8):
    """One grey level per example is the answer; only the pairs' outputs show it (inputs are noise)."""
    level = torch.rand(B, 1, 1, 1, generator=g) * 2 - 1                     # [B, 1, 1, 1]
    inputs = torch.rand(B, N + 1, 1, size, size, generator=g) * 2 - 1
    answers = level[:, None].expand(B, N, 1, size, size)
    context = torch.stack([inputs[:, :N], answers], 2)                          # [B, N, 2, 1, H, W]
    return context, torch.ones(B, N, dtype=torch.bool), inputs[:, N], level.expand(B, 1, size, size)


def test_tiny_model_learns_to_read_the_answer_from_its_context():
    """Without the pair the best guess is the mean level (MSE = Var U[-1, 1] = 1/3); a model that reads
    the pair's output through the joint attention gets far below it, and not without the pair."""
    torch.manual_seed(0)
    model = LaVinDiT(LaVinConfig(channels=1, size=8, patch=4, dim=32, depth=2, heads=2, mlp_ratio=2.0,
                                 context_drop=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = model.loss(*colour_task(32, 1, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    context, mask, query, target = colour_task(64, 1, torch.Generator().manual_seed(1))
    with_pair = (model.sample(context, mask, query, steps=1) - target).square().mean()
    without = (model.sample(context, torch.zeros_like(mask), query, steps=1) - target).square().mean()
    assert with_pair < 0.1 and without > 0.3

