"""Interpretability-aware token dropping for a ViT classifier (P32 IA-RED², Pan et al., NeurIPS 2021).

The ViT's blocks (a shared `Transformer`, iterated block by block, not forked) are split into groups;
before each group sits a **multi-head interpreter**, a small attention-like policy that gives every
patch token still alive a keep probability:

    q_h = W_q,h LN(summary)   k_{h,n} = W_k,h LN(patch_n)   p_n = mean_h sigmoid(q_h . k_{h,n} / sqrt(E) + b_h)

where the summary is the CLS token (or the mean of the alive patch tokens). Drops are hierarchical:
a patch dropped before group g takes no part in group g or any later one. The CLS token is never
dropped; the class is read from it.

Training (the paper's curriculum; the loops live in the caller, the pieces here):
1. train the ViT as usual (all tokens);
2. freeze it and train the interpreters one group at a time with REINFORCE (`reinforce_loss`): each
   alive patch's keep decision is a Bernoulli(p_n) draw, and an example's reward is
   1 - w * keep_fraction^2 when the prediction is right, -penalty when it is wrong; a baseline (the
   mean reward of other draws for the same image, or of the batch) reduces the gradient's variance;
3. optionally fine-tune the ViT with the interpreters fixed (thresholded decisions).

Inference keeps the patches with p > threshold (0.5). `masked_forward` keeps the sequence and hides
dropped tokens from attention with a key mask (the reference, and the training pass, where every
example's keep set differs); `gathered_forward` really removes them: each example's kept tokens are
gathered to the front; examples with similar kept counts go on together (sorted by count, in groups
of `bucket`), each group padded to its largest count (the padding is masked), so the blocks run on
shorter sequences and compute falls with the keep ratio.

Departures, on purpose: the interpreter scores carry a learned per-head bias (started at
`init_keep_logit`, so the policy begins by keeping most tokens and the frozen ViT's first rewards
are mostly "right"); the reward's keep fraction is the fraction of patches alive after the last
interpreter in use (what the compute depends on).

Dimensions: B batch, N patch tokens, T = 1 + N tokens (CLS first), D width, H interpreter heads,
E interpreter head size, S interpreter stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.patches import PatchEmbedding
from latentforge.nn.transformer import Transformer, init_transformer_weights

# How one stage decides which alive patches go on: draw Bernoulli(p) (REINFORCE training),
# threshold p (inference, or an interpreter that is trained already), or keep all (not yet in use).
Decision = Literal["sample", "threshold", "all"]


@dataclass
class TokenDropConfig:
    """A ViT classifier (CLS token, learned 2D positions) with interpreters before some of its blocks."""

    image_size: int = 64
    patch: int = 8
    channels: int = 3
    classes: int = 3
    dim: int = 64
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    stages: tuple[int, ...] = (1, 3)  # an interpreter sits before each of these blocks; each starts a group
    policy_heads: int = 4
    policy_head_dim: int = 16
    summary: Literal["cls", "mean"] = "cls"  # what the interpreters' query is computed from
    init_keep_logit: float = 2.0  # starting score bias: sigmoid(2) = 0.88 keep probability
    threshold: float = 0.5  # inference keeps p > threshold
    compute_weight: float = 1.0  # w in the reward 1 - w * keep_fraction^2 (right predictions)
    wrong_penalty: float = 1.0  # the reward of a wrong prediction is -wrong_penalty

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not self.stages or list(self.stages) != sorted(set(self.stages)):
            raise ValueError(f"stages must be increasing block indices, got {self.stages}")
        if self.stages[0] < 0 or self.stages[-1] >= self.depth:
            raise ValueError(f"stages {self.stages} must lie in 0..depth-1 = {self.depth - 1}")
        if self.summary not in ("cls", "mean"):
            raise ValueError(f"summary must be 'cls' or 'mean', got {self.summary!r}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch
        return side, side

    @property
    def patches(self) -> int:
        return math.prod(self.grid)


class Interpreter(nn.Module):
    """Multi-head keep policy: summary [B, D] and patch tokens [B, N, D] -> keep probabilities [B, N]."""

    def __init__(self, dim: int, heads: int, head_dim: int, init_keep_logit: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, heads * head_dim)
        self.key = nn.Linear(dim, heads * head_dim)
        self.bias = nn.Parameter(torch.full((heads,), float(init_keep_logit)))

    def forward(self, summary: Tensor, patches: Tensor) -> Tensor:
        B, N, _ = patches.shape
        q = self.query(self.norm(summary)).view(B, self.heads, self.head_dim)        # [B, H, E]
        k = self.key(self.norm(patches)).view(B, N, self.heads, self.head_dim)       # [B, N, H, E]
        scores = torch.einsum("bhe,bnhe->bnh", q, k) / math.sqrt(self.head_dim)     # [B, N, H]
        return torch.sigmoid(scores + self.bias).mean(dim=-1)                       # [B, N]


@dataclass
class PolicyPass:
    """One pass of the ViT with its interpreters.

    logits [B, classes]; keeps: per stage, bool [B, N] of the patches alive after it (original
    raster positions; hierarchical, so each is a subset of the one before); probs: per stage, the
    keep probabilities [B, N] (0 where the patch was already dropped); log_probs: per stage, the log
    probability [B] of that stage's decisions (0 for stages that did not sample).
    """

    logits: Tensor
    keeps: list[Tensor]
    probs: list[Tensor]
    log_probs: list[Tensor]

    @property
    def keep_fraction(self) -> Tensor:
        """Fraction of the patches alive after the last stage, [B]."""
        return self.keeps[-1].float().mean(dim=1)


class TokenDropViT(nn.Module):
    """ViT classifier: images [B, C, H, W] in [-1, 1] -> logits [B, classes], with token dropping."""

    def __init__(self, cfg: TokenDropConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = PatchEmbedding(cfg.channels, cfg.dim, cfg.patch)
        self.pos = GridPositionEmbedding(cfg.grid, cfg.dim)
        self.cls = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio)
        init_transformer_weights(self.transformer, cfg.depth)
        self.head = nn.Linear(cfg.dim, cfg.classes)
        self.interpreters = nn.ModuleList(
            Interpreter(cfg.dim, cfg.policy_heads, cfg.policy_head_dim, cfg.init_keep_logit) for _ in cfg.stages)

    # --- the plain ViT ----------------------------------------------------------------

    def tokens(self, images: Tensor) -> Tensor:
        """[B, C, H, W] -> CLS + patch tokens with positions, [B, T, D]."""
        x = self.embed(images) + self.pos()  # [B, N, D]
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)

    def classify(self, h: Tensor) -> Tensor:
        """The stack's final LayerNorm and the head on the CLS token of the last block's output h [B, T', D]."""
        return self.head(self.transformer.norm(h[:, 0]))

    def forward(self, images: Tensor) -> Tensor:
        """The full model, every token through every block (the plain `Transformer`): logits [B, classes]."""
        return self.head(self.transformer(self.tokens(images))[:, 0])

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("interpreters.")]

    # --- token dropping -----------------------------------------------------------------

    def _summary(self, x: Tensor, alive: Tensor) -> Tensor:
        """The interpreters' query input [B, D]: the CLS token, or the mean alive patch token."""
        if self.cfg.summary == "cls":
            return x[:, 0]
        weights = alive.to(x.dtype)[..., None]                                         # [B, n, 1]
        return (x[:, 1:] * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def _check_decisions(self, decisions: Sequence[Decision] | None) -> list[Decision]:
        decisions = list(decisions) if decisions is not None else ["threshold"] * len(self.cfg.stages)
        if len(decisions) != len(self.cfg.stages):
            raise ValueError(f"one decision per stage ({len(self.cfg.stages)}), got {decisions}")
        return decisions

    def masked_forward(self, images: Tensor, decisions: Sequence[Decision] | None = None,
                       keeps: Sequence[Tensor] | None = None, threshold: float | None = None,
                       generator: torch.Generator | None = None) -> PolicyPass:
        """Every token stays in the sequence; dropped ones are hidden from attention by a key mask.

        Args:
            decisions: per stage, how it decides (`Decision`); default: threshold at every stage.
            keeps: per stage, given keep sets bool [B, N] that replace the interpreters' decisions
                (still made hierarchical); for checking other passes on the same keep sets.
            threshold: overrides cfg.threshold.
            generator: for the Bernoulli draws.
        """
        decisions = self._check_decisions(decisions)
        threshold = self.cfg.threshold if threshold is None else threshold
        x = self.tokens(images)                                                        # [B, T, D]
        B, N = x.shape[0], x.shape[1] - 1
        alive = torch.ones(B, N, dtype=torch.bool, device=x.device)
        out_keeps, out_probs, out_logp = [], [], []
        stage_at = {block: s for s, block in enumerate(self.cfg.stages)}
        for i, block in enumerate(self.transformer.blocks):
            if i in stage_at:
                s = stage_at[i]
                p = self.interpreters[s](self._summary(x, alive), x[:, 1:]) * alive   # [B, N]
                log_p = x.new_zeros(B)
                if keeps is not None:
                    keep = keeps[s].to(torch.bool)
                elif decisions[s] == "sample":
                    keep = torch.bernoulli(p.detach(), generator=generator).to(torch.bool)
                    # only alive patches make a decision; clamp keeps log finite at p = 0 or 1
                    chosen = torch.where(keep, p, 1 - p).clamp(min=1e-6)
                    log_p = (chosen.log() * alive).sum(dim=1)                        # [B]
                elif decisions[s] == "threshold":
                    keep = p > threshold
                else:
                    keep = alive
                alive = alive & keep  # hierarchical: a dropped patch never comes back
                out_keeps.append(alive)
                out_probs.append(p)
                out_logp.append(log_p)
            key_mask = None
            if not alive.all():
                key_mask = torch.cat([alive.new_ones(B, 1), alive], dim=1)             # [B, T]
            x = block(x, key_mask=key_mask)
        return PolicyPass(self.classify(x), out_keeps, out_probs, out_logp)

    @torch.no_grad()
    def gathered_forward(self, images: Tensor, threshold: float | None = None, bucket: int | None = 64
                         ) -> PolicyPass:
        """Inference that really drops tokens: after each interpreter, every example's kept patches
        (p > threshold) are gathered to the front, and the examples, sorted by kept count, go on in
        groups of `bucket` (None: all together), each cut to its own largest count; a shorter
        example's tail is padding, hidden by a key mask (none when a group's counts are equal).
        The result equals `masked_forward` with the same keep sets (up to float rounding)."""
        threshold = self.cfg.threshold if threshold is None else threshold
        x = self.tokens(images)                                                        # [B, T, D]
        B, N = x.shape[0], x.shape[1] - 1
        position = torch.arange(N, device=x.device).expand(B, N)  # original index of each patch token
        valid = torch.ones(B, N, dtype=torch.bool, device=x.device)  # False on padding
        logits, keeps, probs = self._gathered_from(x, position, valid, 0, False, threshold, bucket or B)
        return PolicyPass(logits, keeps, probs, [x.new_zeros(B) for _ in keeps])

    def _gathered_from(self, x: Tensor, position: Tensor, valid: Tensor, start: int, stage_done: bool,
                       threshold: float, bucket: int) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Blocks start.. on gathered tokens x [b, 1 + m, D]; position [b, m]: each patch token's
        original index; valid [b, m]: not padding. stage_done: block start's interpreter has decided.
        Returns logits [b, classes] and, for each stage from here on, keeps and probs [b, N]."""
        N = self.cfg.patches
        stage_at = {block: s for s, block in enumerate(self.cfg.stages)}
        for i in range(start, len(self.transformer.blocks)):
            s = stage_at.get(i)
            if s is not None and not (i == start and stage_done):
                p = self.interpreters[s](self._summary(x, valid), x[:, 1:]) * valid   # [b, m]
                keep = p > threshold
                count = keep.sum(dim=1)                                                # [b]
                b, stages_left = x.shape[0], len(self.cfg.stages) - s
                logits = x.new_empty(b, self.cfg.classes)
                keeps = [torch.zeros(b, N, dtype=torch.bool, device=x.device) for _ in range(stages_left)]
                probs = [_scatter_values(position, p, N)] + [x.new_zeros(b, N) for _ in range(stages_left - 1)]
                for group in torch.argsort(count, stable=True).split(bucket):
                    width = int(count[group].max())
                    # kept tokens first, in their order (a stable sort of "not kept")
                    order = torch.sort((~keep[group]).to(torch.uint8), dim=1, stable=True).indices[:, :width]
                    patches = torch.gather(x[group, 1:], 1, order[..., None].expand(-1, -1, x.shape[2]))
                    x_g = torch.cat([x[group, :1], patches], dim=1)                   # [g, 1 + w, D]
                    position_g = torch.gather(position[group], 1, order)               # [g, w]
                    valid_g = torch.arange(width, device=x.device) < count[group, None]
                    logits[group], later_keeps, later_probs = self._gathered_from(
                        x_g, position_g, valid_g, i, True, threshold, bucket)
                    keeps[0][group] = _scatter_mask(position_g, valid_g, N)
                    for j, (k, q) in enumerate(zip(later_keeps, later_probs), start=1):
                        keeps[j][group], probs[j][group] = k, q
                return logits, keeps, probs
            key_mask = None if valid.all() else torch.cat([valid.new_ones(x.shape[0], 1), valid], dim=1)
            x = self.transformer.blocks[i](x, key_mask=key_mask)
        return self.classify(x), [], []


def _scatter_mask(position: Tensor, valid: Tensor, n: int) -> Tensor:
    """Valid entries [B, m] at original positions [B, m] -> bool [B, n]."""
    out = torch.zeros(position.shape[0], n, dtype=torch.bool, device=position.device)
    return out.scatter(1, position, valid)


def _scatter_values(position: Tensor, values: Tensor, n: int) -> Tensor:
    """Values [B, m] (0 on padding) at original positions [B, m] -> [B, n], 0 elsewhere."""
    out = values.new_zeros(position.shape[0], n)
    return out.scatter_add(1, position, values)


def policy_reward(logits: Tensor, labels: Tensor, keep_fraction: Tensor, cfg: TokenDropConfig) -> Tensor:
    """IA-RED²'s reward per example [B]: 1 - w * keep_fraction^2 if the prediction is right, else -penalty."""
    right = logits.argmax(dim=-1) == labels
    return torch.where(right, 1 - cfg.compute_weight * keep_fraction ** 2,
                       torch.full_like(keep_fraction, -cfg.wrong_penalty))


def reinforce_loss(log_prob: Tensor, reward: Tensor, samples: int = 1) -> Tensor:
    """REINFORCE with a baseline: -mean((R - b) * log pi(decisions)). log_prob [B] is differentiable in
    the interpreter; the reward [B] is a constant.

    samples = 1: b is the batch's mean reward. samples > 1: the batch holds each image `samples` times
    in a row (B = images * samples, each copy with its own decisions) and b is the mean reward of the
    image's other copies (leave-one-out), so what stays in R - b is what the decisions changed, not
    how easy the image is; this is a far lower-variance estimate for the same number of passes.
    """
    reward = reward.detach()
    if samples == 1:
        return -((reward - reward.mean()) * log_prob).mean()
    if samples < 1 or reward.shape[0] % samples:
        raise ValueError(f"batch {reward.shape[0]} is not a whole number of groups of {samples} samples")
    r = reward.view(-1, samples)                                                       # [images, samples]
    baseline = (r.sum(dim=1, keepdim=True) - r) / (samples - 1)
    return -((r - baseline).flatten() * log_prob).mean()
