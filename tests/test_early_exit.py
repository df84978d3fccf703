"""Early exits with a shared head and a learned gate (P10 ECO-M2F, latentforge/nn/early_exit.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.early_exit import EarlyExitConfig, EarlyExitEncoder, ExitGate, exit_loss, exit_targets, fit_gate, gate_loss


class PoolHead(nn.Module):
    """features [B, T, D] -> logits [B, C]."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h.mean(1))


def tiny(min_exit: int = 2, depth: int = 4, dim: int = 16, classes: int = 3) -> EarlyExitEncoder:
    torch.manual_seed(0)
    return EarlyExitEncoder(EarlyExitConfig(dim=dim, depth=depth, heads=2, min_exit=min_exit),
                            PoolHead(dim, classes)).eval()


def test_config_exits_and_validation() -> None:
    assert EarlyExitConfig(depth=6, min_exit=2).exits == (2, 3, 4, 5, 6)
    with pytest.raises(ValueError):
        EarlyExitConfig(depth=6, min_exit=7)
    with pytest.raises(ValueError):
        EarlyExitConfig(dim=10, heads=4)


@torch.no_grad()
def test_exit_outputs_equal_a_manual_run_of_the_first_k_blocks() -> None:
    model = tiny()
    x = torch.randn(3, 5, 16)
    outputs = model.forward_exits(x)
    assert len(outputs) == len(model.exits) == 3
    for k, out in zip(model.exits, outputs):
        h = x
        for block in model.transformer.blocks[:k]:
            h = block(h)
        manual = model.head(model.transformer.norm(h))  # the shared norm and head at layer k
        torch.testing.assert_close(out, manual)
        torch.testing.assert_close(model(x, depth=k), manual)
    # the last exit is exactly the shared Transformer's own forward (blocks, then its final norm)
    torch.testing.assert_close(outputs[-1], model.head(model.transformer(x)))
    with pytest.raises(ValueError):
        model(x, depth=1)  # not an exit: min_exit is 2


@torch.no_grad()
def test_gated_inference_runs_each_example_to_its_chosen_depth_and_no_further() -> None:
    model = tiny()
    nn.init.normal_(model.gate.proj.weight, std=3.0)  # a gate that spreads examples over the exits
    x = torch.randn(12, 5, 16)
    processed = [0] * len(model.transformer.blocks)  # examples each block saw

    def counter(i: int):
        def hook(_module, inputs, _output):
            processed[i] += inputs[0].shape[0]
        return hook

    handles = [b.register_forward_hook(counter(i)) for i, b in enumerate(model.transformer.blocks)]
    outputs, depths = model.gated_forward(x)
    for h in handles:
        h.remove()

    expected = torch.tensor(model.exits)[model.gate_logits(x).argmax(-1)]
    assert torch.equal(depths, expected)
    assert depths.unique().numel() >= 2  # the test would prove little if every example took one exit
    for i in range(len(x)):
        torch.testing.assert_close(outputs[i:i + 1], model(x[i:i + 1], depth=int(depths[i])), atol=1e-5, rtol=1e-5)
    # block l (1-based) ran on exactly the examples whose depth is >= l: skipped layers cost nothing
    assert processed == [int((depths >= layer).sum()) for layer in range(1, 5)]


def test_targets_pick_the_best_exit_and_get_shallower_as_beta_grows() -> None:
    quality = torch.tensor([[0.50, 0.80, 0.90, 0.91],  # gains shrink: deep at beta 0, middle later
                            [0.90, 0.90, 0.90, 0.90],  # all equal: the shallowest exit
                            [0.10, 0.20, 0.30, 0.90]])  # only the last exit is good
    best = lambda beta: exit_targets(quality, beta).argmax(-1).tolist()  # noqa: E731
    assert best(0.0) == [3, 0, 3]
    assert best(0.05) == [2, 0, 3]  # row 0: 0.50, 0.75, 0.80, 0.76
    assert best(0.5) == [0, 0, 0]
    onehot = exit_targets(quality, 0.05)
    assert torch.equal(onehot.sum(-1), torch.ones(3)) and set(onehot.unique().tolist()) == {0.0, 1.0}
    # soft targets: distributions whose expected exit never deepens as beta grows
    steps = torch.arange(4.0)
    expected_exit = [(exit_targets(quality, b, tau=0.05) * steps).sum(-1) for b in (0.0, 0.01, 0.05, 0.1, 0.5)]
    for shallower, deeper in zip(expected_exit[1:], expected_exit):
        assert torch.all(shallower <= deeper + 1e-6)
    torch.testing.assert_close(exit_targets(quality, 0.01, tau=0.05).sum(-1), torch.ones(3))
    # a small temperature approaches the one-hot argmax
    torch.testing.assert_close(exit_targets(quality, 0.05, tau=1e-4), onehot)


def test_gate_loss_is_cross_entropy_and_per_example() -> None:
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    torch.testing.assert_close(gate_loss(logits, F.one_hot(labels, 4).float()), F.cross_entropy(logits, labels))
    # unlike the paper code's softmax over the batch axis, the loss is a mean of per-example losses
    targets = torch.softmax(torch.randn(6, 4), -1)
    per_example = torch.stack([gate_loss(logits[i:i + 1], targets[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(gate_loss(logits, targets), per_example.mean())


def test_gate_learns_a_separable_rule() -> None:
    torch.manual_seed(0)

    def data(n: int) -> tuple[Tensor, Tensor]:
        # the best exit (0, 1, 2) shifts feature 0 of every token by -2, 0, +2: the average token reveals it
        best = torch.randint(0, 3, (n,))
        tokens = torch.randn(n, 8, 6)  # [N, T, D]; the average token's noise has std 1/sqrt(8) = 0.35
        tokens[:, :, 0] += 2.0 * (best[:, None] - 1)
        return tokens, best

    tokens, best = data(400)
    gate = ExitGate(6, 3)
    losses = fit_gate(gate, tokens, F.one_hot(best, 3).float(), steps=150, lr=5e-2)
    assert losses[-1] < 0.5 * losses[0]
    test_tokens, test_best = data(400)
    with torch.no_grad():
        accuracy = (gate(test_tokens).argmax(-1) == test_best).float().mean().item()
    assert accuracy >= 0.95  # the Bayes error is about 0.3 %


def test_tiny_early_exit_model_learns_a_task_that_needs_attention() -> None:
    # label: do tokens 0 and 1 carry the same bit (+-1 in feature 0)? XOR: a sum over tokens of any
    # per-token function (the head's mean, after the per-token LayerNorm) cannot separate it, so every
    # exit must rely on attention mixing the two tokens.
    torch.manual_seed(0)
    model = EarlyExitEncoder(EarlyExitConfig(dim=16, depth=2, heads=2, min_exit=1), PoolHead(16, 2))
    pos = nn.Parameter(0.1 * torch.randn(1, 2, 16))  # tells the two tokens apart
    opt = torch.optim.Adam([*model.parameters(), pos], lr=1e-2)

    def batch(n: int) -> tuple[Tensor, Tensor]:
        bits = torch.randint(0, 2, (n, 2))
        x = 0.1 * torch.randn(n, 2, 16)
        x[:, :, 0] += 2.0 * bits - 1
        return x + pos, (bits[:, 0] == bits[:, 1]).long()

    for _ in range(80):
        x, y = batch(64)
        loss = exit_loss(model.forward_exits(x), y, F.cross_entropy)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        x, y = batch(1000)
        losses = [F.cross_entropy(out, y).item() for out in model.forward_exits(x)]
    assert max(losses) < 0.05  # chance is ln 2 = 0.69; both exits, the shallow one included
