import math

import pytest
import torch

from latentforge.conditioning.base import Context
from latentforge.conditioning.layout import LayoutPainter, LayoutPredictor, bin_centres, centre_bins
from latentforge.conditioning.scene_graph import SceneGraphConditioner, SceneGraphConfig
from latentforge.data.shapes import ShapesConfig, encode_graphs, sample_scene


def test_bins_round_trip_within_half_a_bin():
    xy = torch.rand(100, 2)
    back = bin_centres(centre_bins(xy, 32), 32)
    assert (back - xy).abs().max() <= 0.5 / 32 + 1e-6
    assert centre_bins(torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.99, 0.01]]), 32).tolist() == [0, 1023, 31]


def randomized(pred: LayoutPredictor) -> LayoutPredictor:
    with torch.no_grad():  # the zero-initialised output layers would hide every dependence
        pred.unary.out[-1].weight.normal_()
        pred.pairwise.out[-1].weight.normal_()
    return pred


def test_layout_logits_are_causal_over_objects():
    torch.manual_seed(0)
    pred = randomized(LayoutPredictor(dim=32, bins=8, depth=2, heads=2))
    objects, mask, pair = torch.randn(2, 3, 32), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 3, 3, 32)
    xy = torch.rand(2, 3, 2)
    base = pred.logits(objects, mask, xy, pair)
    moved = xy.clone()
    moved[:, 1] = 1 - moved[:, 1]
    out = pred.logits(objects, mask, moved, pair)
    # object k is placed from the objects before it: moving object 1 changes only object 2's logits
    assert torch.allclose(base[:, :2], out[:, :2], atol=1e-6)
    assert not torch.allclose(base[:, 2], out[:, 2])


def test_row_logits_equal_the_full_logits_row_padded_objects_included():
    torch.manual_seed(0)
    pred = randomized(LayoutPredictor(dim=32, bins=8, depth=2, heads=2))
    objects, pair, xy = torch.randn(3, 4, 32), torch.randn(3, 4, 4, 32), torch.rand(3, 4, 2)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    full = pred.logits(objects, mask, xy, pair)
    for k in range(4):
        # what sampling reads for object k, computed from objects <= k only
        assert torch.allclose(pred.row_logits(k, objects, mask, xy, pair), full[:, k], atol=1e-5), k


def test_layout_sampling_keeps_given_centres_and_is_seeded():
    torch.manual_seed(0)
    pred = randomized(LayoutPredictor(dim=32, bins=8, depth=1, heads=2))
    objects, mask, pair = torch.randn(4, 3, 32), torch.ones(4, 3, dtype=torch.bool), torch.randn(4, 3, 3, 32)
    known = torch.full((4, 3, 2), math.nan)
    known[:, 1] = torch.tensor([0.3, 0.7])
    a = pred.sample(objects, mask, pair, known, generator=torch.Generator().manual_seed(1))
    b = pred.sample(objects, mask, pair, known, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.allclose(a[:, 1], torch.tensor([0.3, 0.7]))
    assert ((a * 8 - 0.5) % 1)[:, [0, 2]].abs().max() < 1e-5  # sampled centres are bin centres


def test_layout_predictor_learns_relations():
    """Two objects, the second always right of the first: the sampled layouts must obey it."""
    torch.manual_seed(0)
    pred = LayoutPredictor(dim=32, bins=8, depth=2, heads=2)
    ids = torch.nn.Embedding(2, 32)
    pair = torch.nn.Parameter(torch.randn(1, 2, 2, 32) * 0.02)
    opt = torch.optim.Adam([*pred.parameters(), *ids.parameters(), pair], lr=3e-3)
    mask = torch.ones(64, 2, dtype=torch.bool)
    losses = []
    for _ in range(300):
        x = torch.rand(64, 2).sort(dim=1).values  # x0 < x1
        xy = torch.stack([x, torch.rand(64, 2)], dim=-1)
        loss = pred.nll(ids.weight.expand(64, -1, -1), mask, xy, pair.expand(64, -1, -1, -1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # uniform over the 8 x 8 bins: 4.16 nats per object; the true layout distribution: about 3.8
    assert sum(losses[-50:]) / 50 < 3.95
    xy = pred.sample(ids.weight.expand(256, -1, -1), torch.ones(256, 2, dtype=torch.bool),
                     pair.expand(256, -1, -1, -1), generator=torch.Generator().manual_seed(0))
    assert (xy[:, 0, 0] <= xy[:, 1, 0]).float().mean() > 0.9


def test_painter_touches_only_cells_within_reach():
    torch.manual_seed(0)
    painter = LayoutPainter(dim=16, grid=(8, 8), reach=0.2)
    objects, mask = torch.randn(1, 2, 16), torch.tensor([[True, False]])
    xy = torch.tensor([[[0.1, 0.1], [0.9, 0.9]]])
    base = painter(objects, mask, xy)
    changed = objects.clone()
    changed[0, 0] += 1.0
    out = painter(changed, mask, xy)
    diff = (out - base).abs().sum(-1).view(8, 8) > 1e-6
    cells = (torch.arange(8) + 0.5) / 8
    near = (cells - 0.1).abs() <= 0.2
    assert torch.equal(diff, near[:, None] & near[None, :])  # the padded object paints nothing
    empty = base[0].view(8, 8, 16)[~(near[:, None] & near[None, :])]
    assert torch.allclose(empty, empty[:1].expand_as(empty))  # every uncovered cell looks the same


def test_scene_graph_conditioner_trains_and_samples_layouts():
    # fixed slots, so that the training pass and the eval pass encode the objects alike
    cfg = SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3, grid=(4, 4), random_slots=False)
    cond = SceneGraphConditioner(cfg)
    scenes = [sample_scene(ShapesConfig(), "train", i) for i in range(8)]
    batch = encode_graphs(scenes, 3)
    ctx = cond.train()(batch)
    assert ctx.spatial.shape == (8, 16, 32)
    assert math.isclose(ctx.losses["layout_nll"].item(), math.log(16 * 16), rel_tol=1e-4)  # zero-init output
    no_centres = {k: v for k, v in batch.items() if k not in ("obj_x", "obj_y")}
    cond.eval()
    a = cond(no_centres, generator=torch.Generator().manual_seed(0))
    b = cond(no_centres, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.spatial, b.spatial) and not a.losses
    given = cond(batch)  # known centres are used as given, so no randomness
    assert torch.allclose(given.spatial, ctx.spatial, atol=1e-6)


def test_context_where_and_cat_fill_missing_maps_with_zeros():
    spatial = torch.randn(2, 4, 3)
    a = Context(torch.ones(2, 2, 3), torch.ones(2, 2, dtype=torch.bool), spatial)
    null = Context(torch.zeros(2, 1, 3), torch.ones(2, 1, dtype=torch.bool))
    mixed = a.where(torch.tensor([True, False]), null)
    assert torch.equal(mixed.spatial[0], spatial[0]) and torch.equal(mixed.spatial[1], torch.zeros(4, 3))
    both = Context.cat(a, null)
    assert both.spatial.shape == (4, 4, 3) and torch.equal(both.spatial[2:], torch.zeros(2, 4, 3))


def test_candidates_keep_the_most_likely_layout():
    torch.manual_seed(0)
    pred = randomized(LayoutPredictor(dim=32, bins=8, depth=1, heads=2)).eval()
    objects, mask, pair = torch.randn(3, 3, 32), torch.ones(3, 3, dtype=torch.bool), torch.randn(3, 3, 3, 32)
    mask[0, 2] = False
    best = pred.sample(objects, mask, pair, generator=torch.Generator().manual_seed(5), candidates=6)
    # the same draws, made by hand: 6 candidates per row, scored by the model
    many = [t.repeat_interleave(6, 0) for t in (objects, mask, pair)]
    drawn = pred.sample(*many, generator=torch.Generator().manual_seed(5))
    score = pred.log_prob(many[0], many[1], drawn, many[2]).view(3, 6)
    assert torch.equal(best, drawn.view(3, 6, 3, 2)[torch.arange(3), score.argmax(1)])
    # log_prob sums the per-object log-softmax of the chosen bins over real objects only
    logp = torch.log_softmax(pred.logits(objects, mask, best, pair), -1)
    chosen = logp.gather(-1, centre_bins(best, 8)[..., None])[..., 0]
    assert torch.allclose(pred.log_prob(objects, mask, best, pair), (chosen * mask).sum(1), atol=1e-5)


def test_sample_centres_keeps_given_centres_and_snaps_to_bins():
    cond = SceneGraphConditioner(SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3, grid=(4, 4)))
    batch = encode_graphs([sample_scene(ShapesConfig(), "val", i) for i in range(6)], 3)
    batch["obj_x"][:, 1:] = math.nan  # keep only the first object's centre
    xy = cond.sample_centres(batch, generator=torch.Generator().manual_seed(0))
    assert cond.training  # restored
    real = batch["obj_mask"]
    first = torch.stack([batch["obj_x"][:, 0], batch["obj_y"][:, 0]], -1)
    assert (xy[:, 0] - first).abs().max() <= 0.5 / 16 + 1e-6
    assert ((xy[real] * 16 - 0.5) % 1).abs().max() < 1e-4


def test_graphs_of_any_size_up_to_the_slots_and_random_slots_in_training():
    torch.manual_seed(0)
    cond = SceneGraphConditioner(SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=6, grid=(4, 4)))
    small = encode_graphs([sample_scene(ShapesConfig(max_objects=3), "train", i) for i in range(4)], 3)
    big = encode_graphs([sample_scene(ShapesConfig(min_objects=5, max_objects=6), "val", i) for i in range(4)], 6)
    cond.train()
    first, second = cond(small), cond(small)
    assert not torch.allclose(first.tokens, second.tokens)  # slots drawn anew each pass
    cond.eval()
    for batch, m in ((small, 3), (big, 6)):
        ctx = cond(batch, generator=torch.Generator().manual_seed(0))
        assert ctx.tokens.shape == (4, m + m * (m - 1), 32) and ctx.spatial.shape == (4, 16, 32)
        again = cond(batch, generator=torch.Generator().manual_seed(0))
        assert torch.equal(ctx.tokens, again.tokens)  # slots 0..M-1 outside training
        centres = cond.sample_centres(batch, generator=torch.Generator().manual_seed(0))
        placed = centres[batch["obj_mask"].bool()]
        assert placed.shape[0] == int(batch["obj_mask"].sum()) and ((placed > 0) & (placed < 1)).all()
    with pytest.raises(ValueError, match="6 object slots"):
        cond({k: torch.cat([v, v[:, :1]], 1) if k.startswith("obj_") else v for k, v in big.items()})


def test_shapes_layout_critic_known_answers():
    from latentforge.data.shapes import layout_violations

    scenes = [sample_scene(ShapesConfig(max_objects=6), "val", i) for i in range(200)]
    cond = encode_graphs(scenes, 6)
    true = torch.stack([cond["obj_x"], cond["obj_y"]], -1)
    assert layout_violations(cond, true).sum() == 0  # the data's own layouts break no rule
    two = [s for s in scenes if len(s.objects) == 2][:10]
    cond2 = encode_graphs(two, 2)
    xy = torch.stack([cond2["obj_x"], cond2["obj_y"]], -1)
    stacked = torch.full_like(xy, 0.5)  # both objects at the centre: one clash, and both relations of the pair broken
    assert layout_violations(cond2, stacked).tolist() == [3] * len(two)
    mirrored = xy.clone()
    mirrored[..., 0] = 1 - mirrored[..., 0]  # left and right swapped: the left/right relation breaks
    assert layout_violations(cond2, mirrored).tolist() == [1] * len(two)  # triangles' boxes are up-down asymmetric only
    off = xy.clone()
    off[:, 0, 0] = 0.0  # first object's centre on the left edge: over the border (its relation still holds or not)
    assert (layout_violations(cond2, off) >= 1).all()


def test_constrained_and_rejection_layout_sampling_follow_the_critic():
    from latentforge.data.shapes import layout_violations

    torch.manual_seed(0)
    cfg = SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3, grid=(4, 4), layout_temperature=1.0)
    cond = SceneGraphConditioner(cfg).eval()  # untrained: uniform layouts, which break rules often
    scenes = [sample_scene(ShapesConfig(min_objects=3), "val", i) for i in range(64)]
    batch = {k: v for k, v in encode_graphs(scenes, 3).items() if k not in ("obj_x", "obj_y")}

    def broken(**options):
        cond.config.layout_constrained = options.get("constrained", False)
        cond.config.layout_rejection = options.get("rejection", 0)
        xy = cond.sample_centres(batch, generator=torch.Generator().manual_seed(0))
        return layout_violations(batch, xy).float().mean().item()

    cond.layout_critic = None
    plain = broken(constrained=True, rejection=16)  # no critic attached: options have no effect
    cond.layout_critic = layout_violations
    assert broken() == plain
    constrained, rejected, both = broken(constrained=True), broken(rejection=16), broken(constrained=True, rejection=16)
    assert plain > 1.0 and constrained < 0.5 * plain and rejected < 0.5 * plain and both <= min(constrained, rejected)
