"""P2 ATVC: the Shapes-Edit rule book and the one-stream [T | V | M | A] model."""

from __future__ import annotations

import torch

from latentforge.data.shapes import SceneGraph, ShapeObject, ShapesConfig, render
from latentforge.data.shapes_edit import (
    FORBIDDEN_COLOR,
    HELDOUT_PAIRS,
    EditConfig,
    Instruction,
    apply_instruction,
    counterfactual_target,
    is_heldout,
    placement,
    sample_edit,
    sample_edits,
)
from latentforge.eval.shapes import compare_scenes, parse_scene
from latentforge.generators.atvc import ATVC, ATVCConfig

# --- the rule book ------------------------------------------------------------------------------


def _scene(*objects: tuple[str, str, str, float, float]) -> SceneGraph:
    return SceneGraph.from_objects([ShapeObject(*o) for o in objects])


def test_absent_reference_is_refused_with_its_explanation():
    scene = _scene(("circle", "red", "small", 0.3, 0.3), ("square", "green", "large", 0.7, 0.7))
    for ins in (Instruction("remove", "triangle", "blue"), Instruction("recolour", "triangle", "blue", new_color="red"),
                Instruction("add", "triangle", "blue", "circle", "red", "small", "left of")):
        out = apply_instruction(scene, ins)
        assert (out.kind, out.target, out.answer) == ("absent", None, "no, because there is no blue triangle")
    # the rule looks at colour and shape together: a red circle present does not make a red square present
    assert apply_instruction(scene, Instruction("remove", "square", "red")).kind == "absent"


def test_forbidden_colour_and_ambiguity_and_rule_order():
    scene = _scene(("square", "blue", "small", 0.5, 0.5))
    add = Instruction("add", "square", "blue", "circle", FORBIDDEN_COLOR, "small", "left of")
    recolour = Instruction("recolour", "square", "blue", new_color=FORBIDDEN_COLOR)
    for ins in (add, recolour):
        out = apply_instruction(scene, ins)
        assert (out.kind, out.target, out.answer) == ("forbidden", None, f"no, because {FORBIDDEN_COLOR} is not allowed")
    # an object already that colour may be removed
    magenta = _scene(("circle", FORBIDDEN_COLOR, "small", 0.5, 0.5))
    assert apply_instruction(magenta, Instruction("remove", "circle", FORBIDDEN_COLOR)).kind == "remove"
    # absence is checked before the colour
    assert apply_instruction(scene, Instruction("recolour", "circle", "red", new_color=FORBIDDEN_COLOR)).kind == "absent"
    twins = _scene(("square", "blue", "small", 0.25, 0.3), ("square", "blue", "small", 0.7, 0.7))
    out = apply_instruction(twins, Instruction("remove", "square", "blue"))
    assert (out.kind, out.answer) == ("ambiguous", "no, because there is more than one blue square")


def test_no_room_at_the_border_and_next_to_another_object():
    near_left = _scene(("square", "blue", "small", 0.2, 0.5))
    out = apply_instruction(near_left, Instruction("add", "square", "blue", "circle", "red", "large", "left of"))
    assert (out.kind, out.target, out.answer) == ("no_room", None, "no, because there is no room left of the blue square")
    # the same request on the other side fits; a yellow circle there crowds it out
    right = Instruction("add", "square", "blue", "circle", "red", "large", "right of")
    assert apply_instruction(near_left, right).kind == "add"
    crowded = _scene(("square", "blue", "small", 0.2, 0.5), ("circle", "yellow", "small", 0.7, 0.55))
    assert apply_instruction(crowded, right).answer == "no, because there is no room right of the blue square"


def test_accepted_targets_differ_from_the_input_exactly_by_the_instruction_and_render_readably():
    examples = [e for e in sample_edits(EditConfig(), "train", range(60)) if e.accepted]
    assert {e.kind for e in examples} == {"add", "remove", "recolour"}
    for e in examples:
        ins, before, after = e.instruction, list(e.scene.objects), list(e.target.objects)
        k = next(i for i, o in enumerate(before) if (o.shape, o.color) == (ins.ref_shape, ins.ref_color))
        if ins.op == "add":
            assert after[:-1] == before and len(after) == len(before) + 1
            new = after[-1]
            assert (new.shape, new.color, new.size) == (ins.new_shape, ins.new_color, ins.new_size)
            j = len(after) - 1  # relations list (i, p, j) with i < j: the new object is the object of the pair
            flipped = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
            assert (k, flipped[ins.relation], j) in e.target.relations
        elif ins.op == "remove":
            assert after == before[:k] + before[k + 1:]
        else:
            assert after[k].color == ins.new_color != before[k].color
            assert [o for i, o in enumerate(after) if i != k] == [o for i, o in enumerate(before) if i != k]
            assert (after[k].shape, after[k].size, after[k].x, after[k].y) == (before[k].shape, before[k].size,
                                                                              before[k].x, before[k].y)
        # the judge reads the rendered target back as the target scene
        assert compare_scenes(parse_scene(render(e.target)), e.target)["exact"]


def test_counterfactual_filler_is_the_edit_made_despite_the_rule():
    scene = _scene(("square", "blue", "small", 0.5, 0.5), ("circle", "green", "large", 0.2, 0.25))
    # forbidden colour: the magenta object is drawn anyway, and the judge reads it back from the image
    add = apply_instruction(scene, Instruction("add", "square", "blue", "circle", FORBIDDEN_COLOR, "small", "right of"))
    recolour = apply_instruction(scene, Instruction("recolour", "square", "blue", new_color=FORBIDDEN_COLOR))
    for out, expect in ((add, {("square", "blue"), ("circle", "green"), ("circle", FORBIDDEN_COLOR)}),
                        (recolour, {("square", FORBIDDEN_COLOR), ("circle", "green")})):
        assert out.kind == "forbidden"
        filler = counterfactual_target(out)
        assert {(o.shape, o.color) for o in filler.objects} == expect
        parsed = parse_scene(render(filler))
        assert compare_scenes(parsed, filler)["exact"]
        assert FORBIDDEN_COLOR in {o.color for o in parsed.objects}
    # no room: the object sits at its computed placement anyway (here off the left border), the rest unchanged
    near_left = _scene(("square", "blue", "small", 0.2, 0.5))
    ins = Instruction("add", "square", "blue", "circle", "red", "large", "left of")
    out = apply_instruction(near_left, ins)
    assert out.kind == "no_room"
    filler = counterfactual_target(out)
    x, y = placement(near_left.objects[0], "circle", "large", "left of")
    assert filler.objects == (near_left.objects[0], ShapeObject("circle", "red", "large", x, y))
    assert x < 0.2 and not (render(filler) == render(near_left)).all()  # drawn, clipped, not dropped
    # absent: nothing to act on, the input unchanged; accepted: the target itself
    absent = apply_instruction(scene, Instruction("remove", "triangle", "blue"))
    assert absent.kind == "absent" and counterfactual_target(absent) == scene
    accepted = apply_instruction(scene, Instruction("remove", "square", "blue"))
    assert counterfactual_target(accepted) == accepted.target


def test_sampling_is_a_pure_function_and_keeps_heldout_pairs_out():
    cfg = EditConfig(shapes=ShapesConfig(seed=3))
    a, b = sample_edit(cfg, "val", 17), sample_edit(cfg, "val", 17)
    assert a == b
    train = sample_edits(cfg, "train", range(200))
    assert not any(is_heldout(e) for e in train)
    assert {e.kind for e in train} == {"add", "remove", "recolour", "absent", "forbidden", "no_room"}
    only = EditConfig(kinds={"add": 1.0, "recolour": 1.0, "no_room": 1.0}, allowed_new=HELDOUT_PAIRS)
    held = sample_edits(only, "test", range(30))
    assert all(is_heldout(e) for e in held)


# --- the stream model ---------------------------------------------------------------------------


def _batch(cfg: ATVCConfig, B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    N = cfg.image_tokens
    return {"instruction": torch.randint(2, cfg.text_vocab, (B, cfg.instruction_len), generator=g),
            "input_codes": torch.randint(cfg.codebook_size, (B, N), generator=g),
            "target_codes": torch.randint(cfg.codebook_size, (B, N), generator=g),
            "answer": torch.randint(cfg.text_vocab, (B, cfg.answer_len), generator=g),
            "accepted": torch.tensor([True, False] * (B // 2))}


def test_stream_layout_segments_and_position_tables():
    torch.manual_seed(0)
    cfg = ATVCConfig.tiny()
    model = ATVC(cfg)
    seg = model.segments()
    Lt, N, La = cfg.instruction_len, cfg.image_tokens, cfg.answer_len
    assert [(s.start, s.stop) for s in seg.values()] == [(0, Lt), (Lt, Lt + N), (Lt + N, Lt + 2 * N),
                                                         (Lt + 2 * N, Lt + 2 * N + La)]
    b = _batch(cfg, 2)
    x = model.embed(b["instruction"], b["input_codes"], b["target_codes"], b["answer"])
    assert x.shape == (2, model.length, cfg.dim)
    pos = model.image_pos()  # [(V, M) x h x w, D]
    torch.testing.assert_close(x[:, seg["T"]], model.text_embed(b["instruction"]) + model.text_pos[:Lt])
    torch.testing.assert_close(x[:, seg["A"]], model.text_embed(b["answer"]) + model.text_pos[Lt:])
    torch.testing.assert_close(x[:, seg["V"]], model.image_embed(b["input_codes"]) + pos[:N])
    torch.testing.assert_close(x[:, seg["M"]], model.image_embed(b["target_codes"]) + pos[N:])
    # the same code at the same raster position of V and M differs by the segment row of the table only
    seg_row = model.image_pos.tables[0]
    torch.testing.assert_close(pos[N:] - pos[:N], (seg_row[1] - seg_row[0]).expand(N, -1))


def test_rejected_samples_send_no_gradient_through_the_recreated_image():
    torch.manual_seed(0)
    for masked, filler in ((True, "input"), (True, "counterfactual"), (False, "input"), (False, "counterfactual")):
        model = ATVC(ATVCConfig(**{**ATVCConfig.tiny().__dict__, "mask_rejected_image_loss": masked}))
        b = _batch(model.config, 4)
        if filler == "input":  # refusals' M slot holds the input's codes; "counterfactual": other codes
            b["target_codes"][1::2] = b["input_codes"][1::2]
        for accepted, expect_grad in ((False, not masked), (True, True)):
            b["accepted"] = torch.full((4,), accepted)
            model.zero_grad()
            model.loss(b)["loss"].backward()
            # the image head only ever predicts M: its gradient is M's loss and nothing else
            assert (model.image_head.weight.grad.abs().sum() > 0) == expect_grad, (masked, accepted)
        # and changing a refused sample's M target leaves the masked image loss unchanged (the answer's
        # loss does change: M is also what the answer is read after)
        b["accepted"] = torch.tensor([True, False, True, False])
        with torch.no_grad():
            before = model.loss(b)["image_loss"]
            b["target_codes"][1] = (b["target_codes"][1] + 1) % model.config.codebook_size
            after = model.loss(b)["image_loss"]
        assert torch.equal(before, after) == masked
    # with the mask on, the image loss is the same whichever filler a refusal's M slot holds
    b = _batch(ATVCConfig.tiny(), 4)
    model = ATVC(ATVCConfig.tiny())
    with torch.no_grad():
        counterfactual = model.loss(b)["image_loss"]
        b["target_codes"][1::2] = b["input_codes"][1::2]
        assert torch.equal(model.loss(b)["image_loss"], counterfactual)


def test_cached_greedy_generation_matches_the_teacher_forced_argmax():
    torch.manual_seed(0)
    cfg = ATVCConfig.tiny()
    model = ATVC(cfg).eval()
    b = _batch(cfg, 3, seed=1)
    codes, words = model.generate(b["instruction"], b["input_codes"])
    image_logits, text_logits = model.logits(b["instruction"], b["input_codes"], codes, words)
    assert torch.equal(image_logits.argmax(-1), codes) and torch.equal(text_logits.argmax(-1), words)


def test_tiny_model_learns_a_yes_no_rule_on_held_out_queries():
    """Toy rule: the instruction names a code; the answer is "yes" (id 2) when the input image holds
    that code, else "no" (id 3). Instruction word 4 + c names code c. Balanced classes, fresh queries.

    The verdict is read teacher-forced, with M laid out as in training (the input's codes, which is
    also the re-creation of an accepted toy edit): free decoding of M on refusals, where M has no
    loss, is what the benchmark measures."""
    torch.manual_seed(0)
    K, N = 4, 2
    # image_loss_weight 0: only the verdict is learnt (the image part is tested above)
    cfg = ATVCConfig(text_vocab=4 + K, codebook_size=K, image_grid=(1, N), instruction_len=1, answer_len=1,
                     dim=64, depth=2, heads=2, image_loss_weight=0.0)
    model = ATVC(cfg)

    def toy(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        codes = torch.randint(K, (n, N), generator=g)
        asked = torch.randint(K, (n,), generator=g)
        absent = [int(c) for c in torch.randint(K, (n,), generator=g)]
        yes = torch.rand(n, generator=g) < 0.5
        for i in range(n):  # half ask a code that is there, half one that is not
            if yes[i]:
                asked[i] = codes[i, torch.randint(N, (1,), generator=g)]
            else:
                missing = [c for c in range(K) if c not in codes[i].tolist()]
                asked[i] = missing[absent[i] % len(missing)]
        present = (codes == asked[:, None]).any(1)
        return {"instruction": (4 + asked)[:, None], "input_codes": codes, "target_codes": codes,
                "answer": torch.where(present, 2, 3)[:, None], "accepted": present}

    train, test = toy(2000, torch.Generator().manual_seed(0)), toy(400, torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(250):
        idx = torch.randint(2000, (128,), generator=g)
        loss = model.loss({k: v[idx] for k, v in train.items()})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        _, text_logits = model.logits(test["instruction"], test["input_codes"], test["target_codes"], test["answer"])
    accuracy = (text_logits.argmax(-1) == test["answer"]).float().mean().item()
    majority = max(test["accepted"].float().mean().item(), 1 - test["accepted"].float().mean().item())
    assert majority < 0.6 and accuracy >= 0.95, (accuracy, majority)
