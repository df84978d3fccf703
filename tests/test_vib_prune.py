"""P14 VTrans: VIB gates, budgeted structured pruning and the physically pruned stack."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.data.shapes import ShapesConfig, encode_graphs, sample_scene
from latentforge.eval.cost import parameter_count
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.nn.transformer import Transformer
from latentforge.nn.vib_prune import (
    VIBConfig,
    VIBGate,
    VIBMasks,
    magnitude_scores,
    masked_layer_norm,
    random_scores,
    slim_transformer,
    vib_penalty,
    within_group_ranks,
)


def tiny_stack(seed: int = 0, context_dim: int | None = 16) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(32, 3, 4, context_dim=context_dim).eval()


def randomised_masks(stack: Transformer, budget: float, seed: int = 0) -> VIBMasks:
    """Masks with random gate means, pruned to a budget by random scores over every group."""
    masks = VIBMasks(stack)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in masks.gates.values():
            gate.mu.copy_(0.5 + torch.rand(gate.mu.shape, generator=g))
    scores = {name: torch.rand(gate.mu.numel(), generator=g) for name, gate in masks.gates.items()}
    masks.prune_to_budget(scores, int(budget * masks.param_count()))
    return masks


def test_penalty_known_values():
    # log(1 + mu^2 / sigma^2): mu = 1, sigma^2 = 1 -> log 2; mu = 2, sigma^2 = 1 -> log 5; mu = 0 -> 0
    mu, log_sigma2 = torch.tensor([1.0, 2.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, 0.0, math.log(9.0)])
    assert vib_penalty(mu, log_sigma2).item() == pytest.approx(math.log(2) + math.log(5) + 0 + math.log(2))
    gate = VIBGate(4, 0.0)
    with torch.no_grad():
        gate.mu.copy_(mu)
        gate.log_sigma2.copy_(log_sigma2)
    gate.alive[1] = False  # a pruned unit no longer counts
    assert gate.penalty().item() == pytest.approx(2 * math.log(2))
    assert torch.allclose(gate.log_alpha(), torch.tensor([0.0, math.log(4), -math.inf, 0.0]))


def test_gates_stochastic_in_training_deterministic_at_eval():
    gate = VIBGate(6, log_sigma2_init=0.0)  # sigma = 1: noise as large as the mean
    gate.alive[2] = False
    train = gate.train()(5)                                                   # [B, 1, n]
    assert train.shape == (5, 1, 6) and train[..., 2].eq(0).all() and train.std() > 0.1
    evals = [gate.eval()(5) for _ in range(3)]
    assert all(torch.equal(e, evals[0]) for e in evals)
    assert torch.equal(evals[0], torch.tensor([1.0, 1, 0, 1, 1, 1]))


def test_masked_layer_norm_is_layer_norm_of_kept_dims():
    norm = torch.nn.LayerNorm(8)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    x = torch.randn(3, 8)
    out = masked_layer_norm(x, norm, keep)
    ref = F.layer_norm(x[:, keep], (6,), norm.weight[keep], norm.bias[keep], norm.eps)
    assert torch.allclose(out[:, keep], ref, atol=1e-6) and out[:, ~keep].eq(0).all()


@pytest.mark.parametrize("context_dim", [16, None])
def test_masked_stack_equals_physically_pruned(context_dim):
    stack = tiny_stack(context_dim=context_dim)
    masks = randomised_masks(stack, 0.45).attach(stack).eval()
    pruned_kinds = {name.rstrip("0123456789") for name, gate in masks.gates.items() if not gate.alive.all()}
    assert {"emb", "heads", "ffn"} <= pruned_kinds  # really pruned, every kind of unit
    slim = slim_transformer(stack, masks)
    assert parameter_count(slim) == masks.param_count() < 0.46 * parameter_count(tiny_stack())
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 5, 16) if context_dim else None
    with torch.no_grad():
        masked, sliced = stack(x, causal=True, context=ctx), slim(x, causal=True, context=ctx)
    assert (masked - sliced).abs().max() < 1e-5


def test_pruned_generator_samples_like_masked():
    """KV-cached sampling through the slim stack draws the masked model's codes."""
    torch.manual_seed(0)
    cond = SceneGraphConfig(dim=16, depth=1, heads=2, max_objects=3, layout=False)
    model = ARGenerator(ARConfig(grid=(3, 3), vocab_size=16, dim=32, depth=3, heads=4, conditioner=cond)).eval()
    graphs = encode_graphs([sample_scene(ShapesConfig(max_objects=3), "train", i) for i in range(2)], 3)
    context = model.encode_condition(graphs)
    masks = randomised_masks(model.transformer, 0.5, seed=1).attach(model.transformer).eval()
    with torch.no_grad():
        masked = model.sample(2, context, generator=torch.Generator().manual_seed(3))
        slim = copy.deepcopy(model)
        slim.transformer = slim_transformer(model.transformer, masks)
        assert torch.equal(slim.sample(2, context, generator=torch.Generator().manual_seed(3)), masked)


@pytest.mark.parametrize("config", [VIBConfig(), VIBConfig(embedding=False, layers=False)])
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_prune_reaches_budget_within_one_unit(config, budget):
    stack = tiny_stack()
    masks = VIBMasks(stack, config)
    target = int(budget * masks.param_count())
    scores = {name: torch.rand(gate.mu.numel(), generator=torch.Generator().manual_seed(len(name)))
              for name, gate in masks.gates.items()}
    masks.prune_to_budget(scores, target)
    one_ffn_unit = 2 * len(masks.kept("emb", 32)) + 1  # the cheapest unit at the kept width
    assert target - one_ffn_unit < masks.param_count() <= target


def test_threshold_prunes_low_scores_above_budget():
    masks = VIBMasks(tiny_stack(), VIBConfig(embedding=False, layers=False))
    scores = {name: torch.ones(gate.mu.numel()) for name, gate in masks.gates.items()}
    scores["ffn1"][:10] = -1.0  # ten units below the threshold
    full = masks.param_count()
    assert masks.prune_to_budget(scores, full, threshold=0.0, floor=0) == 10
    assert masks.gates["ffn1"].alive.sum() == 118 and masks.param_count() == full - 10 * (2 * 32 + 1)


def test_magnitude_prunes_smallest_norm_units():
    stack = Transformer(8, 1, 2, mlp_ratio=2.0)  # one block, 16 FFN units, 2 heads of 4 dims
    with torch.no_grad():
        norms = torch.tensor([5.0, 1, 7, 3, 9, 2, 8, 4, 6, 10, 11, 12, 13, 14, 15, 16])
        stack.blocks[0].mlp.fc.weight.copy_(norms[:, None].expand(16, 8))
        stack.blocks[0].mlp.proj.weight.copy_(norms[None, :].expand(8, 16))
    masks = VIBMasks(stack, VIBConfig(embedding=False, layers=False, heads=False))
    scores = magnitude_scores(stack)
    assert torch.allclose(scores["ffn0"], norms)  # RMS of a unit's row and column
    masks.prune_to_budget(scores, masks.param_count() - 4 * (2 * 8 + 1))  # room for exactly four units
    assert set(torch.nonzero(~masks.gates["ffn0"].alive).flatten().tolist()) == {1, 5, 3, 7}  # norms 1-4
    ranks = within_group_ranks({"a": torch.tensor([3.0, 1.0, 2.0])})["a"]
    assert torch.allclose(ranks, torch.tensor([2.5, 0.5, 1.5]) / 3)


def test_random_scores_cover_heads_and_units_only():
    masks = VIBMasks(tiny_stack())
    scores = random_scores(masks, torch.Generator().manual_seed(0))
    assert set(scores) == {f"{kind}{l}" for kind in ("heads", "cross", "ffn") for l in range(3)}


def test_tiny_prune_and_distill_learns():
    """VIB pruning to half the stack with distillation from a trained teacher keeps a copy task solved:
    token t's target is the token two steps back (causal), which a pruned 2-layer stack can still do."""
    torch.manual_seed(0)
    vocab, T = 8, 12

    class Copier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.pos = torch.nn.Embedding(vocab, 32), torch.nn.Parameter(torch.randn(T, 32) * 0.1)
            self.transformer = Transformer(32, 2, 4)
            self.head = torch.nn.Linear(32, vocab)

        def forward(self, x):
            return self.head(self.transformer(self.emb(x) + self.pos, causal=True))

    def batch(n=32):
        x = torch.randint(vocab, (n, T))
        return x, torch.roll(x, 2, dims=1)

    def ce(model, x, y):
        return F.cross_entropy(model(x)[:, 2:].reshape(-1, vocab), y[:, 2:].reshape(-1))

    teacher = Copier()
    opt = torch.optim.AdamW(teacher.parameters(), 3e-3)
    for _ in range(200):
        loss = ce(teacher, *batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    student = copy.deepcopy(teacher)
    masks = VIBMasks(student.transformer).attach(student.transformer)
    total = masks.param_count()
    opt = torch.optim.AdamW([{"params": masks.parameters(), "lr": 5e-2},
                             {"params": student.parameters(), "lr": 1e-3}])
    for r in range(1, 4):
        for _ in range(20):
            x, y = batch()
            with torch.no_grad():
                target = F.log_softmax(teacher(x), -1)
            logits = student(x)
            kl = F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="none").sum(-1).mean()
            loss = ce(student, x, y) + kl + masks.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        masks.prune_to_budget(masks.log_alphas(), total - (total - total // 2) * r // 3, floor=total // 2)
    masks.eval()
    student.transformer = slim_transformer(student.transformer, masks)
    assert parameter_count(student.transformer) <= total // 2
    x, y = batch(256)
    with torch.no_grad():
        assert ce(teacher, x, y) < 0.1  # the teacher solved it (uniform: log 8 = 2.08)
        assert ce(student.eval(), x, y) < 0.3


def test_masks_refuse_a_stack_with_relative_positions():
    # the slim copy has no rotary or ALiBi terms: pruning such a stack would change what it computes
    with pytest.raises(ValueError, match="position 'rope'"):
        VIBMasks(Transformer(32, 2, 4, position="rope"), VIBConfig())
