"""Early exits with one shared head and a learned gate (P10 ECO-M2F, "Efficient Transformer Encoders
for Mask2Former-style models", Yao et al. 2024).

A stack of the shared `TransformerBlock`s (a `Transformer`, not a fork) may stop after any layer
k in `exits` = min_exit .. depth. At every exit the stack's own final LayerNorm and **one shared head**
turn the features into outputs, so every exit speaks the same language and the head costs nothing
extra to store. ECO-M2F's three-step recipe:

1. Train the parent with early exits: the loss is the mean of the exits' losses (`exit_loss`).
2. For every training example, score each exit by its quality minus a compute penalty,
   score_k = q_k - beta * k, and turn the scores into targets over exits (`exit_targets`).
3. Train the gate: the average of the **input** tokens (before any layer, so the decision costs one
   Linear) -> one logit per exit (`ExitGate`), fitted to those targets (`gate_loss`).

A new compute trade-off (beta) repeats only steps 2-3; the parent is not retrained.
`gated_forward` runs argmax(gate) layers per example: examples leave the batch at their exit, so the
layers they skip are really not computed.

Departures from the paper's code, on purpose:
- targets: a softmax over exits at temperature tau (`tau=None` gives the one-hot argmax). Later exits
  often differ by less than noise, and a one-hot target would then pick among near-ties at random;
  the soft target splits them, and for large tau the gate's argmax tracks the expected score.
- gate loss: cross-entropy of softmax(gate logits over exits) to the soft targets. The paper's code uses
  MSE(softmax(gates, dim=0), targets), a softmax over the *batch* axis, which makes one example's
  gate depend on the others in its batch; here each example's distribution over exits is its own.
- the exit losses are averaged, not summed (the same optimum; the scale does not grow with depth).

Dimensions: B batch, T tokens, D width, E exits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.transformer import Transformer, init_transformer_weights


@dataclass
class EarlyExitConfig:
    """An early-exit encoder: `depth` blocks of width `dim`, exits after layers min_exit .. depth."""

    dim: int = 64
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    min_exit: int = 1  # the first layer after which the encoder may stop (ECO-M2F: 2 of 6)

    def __post_init__(self) -> None:
        if not 1 <= self.min_exit <= self.depth:
            raise ValueError(f"min_exit must be in 1..depth={self.depth}, got {self.min_exit}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")

    @property
    def exits(self) -> tuple[int, ...]:
        """Layer counts after which the encoder may stop, shallowest first."""
        return tuple(range(self.min_exit, self.depth + 1))


class ExitGate(nn.Module):
    """Average-pooled input tokens -> one logit per exit. tokens [B, T, D] -> logits [B, E]."""

    def __init__(self, dim: int, exits: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, exits)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.proj(tokens.mean(dim=1))


class EarlyExitEncoder(nn.Module):
    """A `Transformer` that can stop after any layer in `cfg.exits`, a shared `head` applied at every
    exit (features [B, T, D] -> outputs [B, ...]; e.g. pool + Linear -> logits) and an `ExitGate`."""

    def __init__(self, cfg: EarlyExitConfig, head: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.exits = cfg.exits
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio)
        init_transformer_weights(self.transformer, cfg.depth)
        self.head = head
        self.gate = ExitGate(cfg.dim, len(self.exits))

    def exit_output(self, h: Tensor) -> Tensor:
        """The shared LayerNorm and head on features h [B, T, D], at whichever layer h was taken."""
        return self.head(self.transformer.norm(h))

    def forward(self, tokens: Tensor, depth: int | None = None) -> Tensor:
        """Outputs after the first `depth` layers (all of them by default). tokens [B, T, D]."""
        depth = self.cfg.depth if depth is None else depth
        if depth not in self.exits:
            raise ValueError(f"depth {depth} is not an exit {self.exits}")
        h = tokens
        for block in self.transformer.blocks[:depth]:
            h = block(h)
        return self.exit_output(h)

    def forward_exits(self, tokens: Tensor) -> list[Tensor]:
        """Outputs at every exit, shallowest first, from one pass through the stack. tokens [B, T, D]."""
        outputs, h = [], tokens
        for layer, block in enumerate(self.transformer.blocks, start=1):
            h = block(h)
            if layer >= self.cfg.min_exit:
                outputs.append(self.exit_output(h))
        return outputs

    def gate_logits(self, tokens: Tensor) -> Tensor:
        """The gate's logits [B, E] from the input tokens [B, T, D] (before any layer)."""
        return self.gate(tokens)

    def gated_forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Run each example to the exit its gate picks (argmax), and no further.

        Examples leave the batch at their exit, so a layer only processes the examples still going:
        the batch is grouped by chosen depth without sorting, and skipped layers cost nothing.

        Returns:
            outputs [B, ...] (the head's, each at its example's exit) and depths int64 [B] (layers run).
        """
        choice = self.gate_logits(tokens).argmax(dim=-1)  # [B] index into exits
        depths = torch.tensor(self.exits, device=tokens.device)[choice]  # [B]
        outputs: Tensor | None = None
        active = torch.arange(tokens.shape[0], device=tokens.device)  # rows of the batch still going
        h = tokens
        for layer, block in enumerate(self.transformer.blocks, start=1):
            h = block(h)  # [b, T, D], b = examples still going
            if layer < self.cfg.min_exit:
                continue
            stop = depths[active] == layer  # [b]
            if stop.any():
                out = self.exit_output(h[stop])
                if outputs is None:  # the head's output shape is known only now
                    outputs = out.new_empty((tokens.shape[0], *out.shape[1:]))
                outputs[active[stop]] = out
                h, active = h[~stop], active[~stop]
            if active.numel() == 0:
                break
        assert outputs is not None  # every example stops by the last layer
        return outputs, depths


def exit_loss(outputs: list[Tensor], target: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Step 1's training loss: the mean over exits of loss_fn(exit outputs, target)."""
    return torch.stack([loss_fn(out, target) for out in outputs]).mean()


def exit_targets(quality: Tensor, beta: float, tau: float | None = None) -> Tensor:
    """Step 2: per-example targets over exits from per-exit quality.

    Args:
        quality: [B, E] quality of each exit for each example (e.g. the probability of the true class),
            exits shallowest first, in the units beta is given in.
        beta: compute penalty per exit step (score_k = q_k - beta * k; k counts exits from 0, the
            shift is the same for every exit and cancels in the softmax and the argmax).
        tau: softmax temperature over exits; None: one-hot at the argmax (ties go to the shallowest).

    Returns:
        targets [B, E], each row a distribution over exits.
    """
    steps = torch.arange(quality.shape[-1], device=quality.device, dtype=quality.dtype)  # [E]
    score = quality - beta * steps  # [B, E]
    if tau is None:
        return F.one_hot(score.argmax(dim=-1), quality.shape[-1]).to(quality.dtype)
    return torch.softmax(score / tau, dim=-1)


def gate_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Step 3: cross-entropy of the gate's softmax over exits ([B, E] logits) to [B, E] targets."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def fit_gate(gate: ExitGate, tokens: Tensor, targets: Tensor, steps: int = 300, lr: float = 1e-2) -> list[float]:
    """Step 3: fit `gate` to targets [N, E] by full-batch Adam on `gate_loss`; the parent stays frozen.

    tokens: the encoder's input tokens [N, T, D], or their average [N, 1, D] (all the gate reads, and
    far smaller to keep for a whole training set). Returns the loss at every step.
    """
    tokens, targets = tokens.detach(), targets.detach()
    opt = torch.optim.Adam(gate.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = gate_loss(gate(tokens), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
