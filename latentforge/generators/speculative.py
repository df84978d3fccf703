"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a cheap draft proposes k tokens one
by one, the target scores all of them in one pass, and a rejection rule keeps the output distributed
exactly as the target's. MatFormer (P25) drafts with its own small nested submodel.

Legend: n samples, N steps of one sample, V vocabulary, k draft tokens per round.

One round, with the first t codes final:
  1. the draft draws d_t, ..., d_{t+k-1}, each from q(. | codes, earlier drafts);
  2. the target reads code_{t-1}, d_t, ..., d_{t+k-1} in ONE forward pass (its KV cache holds the
     rest) and gives p at steps t ... t+k;
  3. draft i is accepted with probability min(1, p(d_i) / q(d_i)); at the first rejection the token
     is drawn from norm(max(0, p - q)) instead, and the round ends; when all k are accepted, one bonus
     token is drawn from p at step t+k.
Every emitted token is then distributed as p given the tokens before it, whatever q is.

Batches: rows accept different numbers of drafts, but the KV caches keep one length, so every row
keeps a* + 1 tokens, a* the fewest drafts any row accepted. A row that accepted more keeps its
accepted draft at step t+a* (itself distributed as p) and drops the rest. The cut depends only on
the other rows' draws (or on the row's own rejection), so each row is still exact; the batch only
accepts fewer tokens per round than a single sample would.

Rejected positions are rolled back with `KVCache.truncate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from latentforge.generators.sampling import draw_from
from latentforge.nn.attention import KVCache


@dataclass
class Decoder:
    """One model's side of speculative decoding: a causal model with its own KV cache.

    step(fed, start, caches): fed [n, T] are the codes of steps start-1 ... start+T-2 (the entry for
    step -1 stands for BOS and is not read); the model reads them after its cached steps and returns
    its token distributions for steps start ... start+T-1, [n, T, V] fp32 (temperature, top-k/p and
    guidance applied: what a token would really be drawn from).
    """

    step: Callable[[Tensor, int, list[KVCache]], Tensor]
    caches: list[KVCache]

    @property
    def length(self) -> int:
        """Steps whose inputs the cache holds."""
        return self.caches[0].length

    def feed(self, fed: Tensor) -> Tensor:
        return self.step(fed, self.length, self.caches)

    def truncate(self, length: int) -> None:
        for cache in self.caches:
            cache.truncate(length)


@dataclass
class SpeculationStats:
    """What one speculative run did. `acceptance_rate`: drafts the rule accepted (leading accepts of
    each row, before the batch's common cut) over drafts proposed."""

    proposed: int = 0        # draft tokens proposed, summed over rows
    accepted: int = 0        # of which accepted by the rule
    kept: int = 0            # tokens emitted per row (the same for every row)
    target_calls: int = 0    # target forward passes
    draft_calls: int = 0     # draft forward passes

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.proposed, 1)

    @property
    def tokens_per_target_call(self) -> float:
        return self.kept / max(self.target_calls, 1)


def speculative_decode(target: Decoder, draft: Decoder, seq: Tensor, start: int, k: int, *,
                       greedy: bool = False, generator: torch.Generator | None = None) -> SpeculationStats:
    """Fill seq[:, start + 1:] with codes drawn from the target's distribution, k drafts a round.

    Args:
        target, draft: fresh decoders (empty caches) over the same steps and vocabulary.
        seq: [n, N + 1] int64; seq[:, j + 1] is the code of step j; seq[:, 0] stands for BOS; the
            codes of steps < start (a prefix) are given. Written in place.
        greedy: temperature 0: drafts, corrections and the bonus are argmaxes (the distributions are
            one-hot, so a draft is accepted iff it is the target's argmax).
        generator: seeds every draw.
    """
    if k < 1:
        raise ValueError(f"speculative decoding needs k >= 1 draft tokens, got {k}")
    n, N = seq.shape[0], seq.shape[1] - 1
    rows = torch.arange(n, device=seq.device)
    pick = (lambda probs: probs.argmax(-1)) if greedy else (lambda probs: draw_from(probs, generator))
    stats = SpeculationStats()
    t = start
    while t < N:
        kk = min(k, N - t)
        # 1. drafts: catch the draft up on the final codes it has not read, then k - 1 single steps
        qs = [draft.feed(seq[:, draft.length : t + 1])[:, -1]]                   # [n, V] at step t
        stats.draft_calls += 1
        for i in range(kk):
            seq[:, t + i + 1] = pick(qs[i])
            if i + 1 < kk:
                qs.append(draft.feed(seq[:, t + i + 1 : t + i + 2])[:, -1])
                stats.draft_calls += 1
        q = torch.stack(qs, 1)                                                     # [n, kk, V]
        drafts = seq[:, t + 1 : t + kk + 1]                                        # [n, kk]
        # 2. one target pass over code_{t-1} and the drafts (after a prefix, the whole prefix first):
        #    p at steps t .. t+kk (there is no step N)
        read = target.length
        p = target.feed(seq[:, read : min(t + kk + 1, N)])[:, t - read :]           # [n, kk(+1), V]
        stats.target_calls += 1
        # 3. accept draft i with probability min(1, p/q); a* = the fewest leading accepts of any row
        p_d = p[:, :kk].gather(-1, drafts[..., None])[..., 0]                      # [n, kk]
        q_d = q.gather(-1, drafts[..., None])[..., 0]
        u = torch.rand(n, kk, generator=generator, device=seq.device)
        accept = u < p_d / q_d.clamp_min(torch.finfo(q_d.dtype).tiny)
        leading = accept.long().cumprod(1).sum(1)                                  # [n]
        a = int(leading.min())
        stats.proposed += n * kk
        stats.accepted += int(leading.sum())
        if a < kk:
            # rows that rejected draft a draw from the residual; rows that accepted it keep it
            residual = (p[:, a] - q[:, a]).clamp_min(0)                            # [n, V]
            empty = residual.sum(-1, keepdim=True) <= 0  # p == q up to rounding: the residual is p
            fix = pick(torch.where(empty, p[:, a], residual))
            seq[:, t + a + 1] = torch.where(leading > a, drafts[rows, a], fix)
        elif t + kk < N:
            seq[:, t + kk + 1] = pick(p[:, kk])                                    # the bonus token
        t = min(t + a + 1, N)
        stats.kept = t - start
        # the caches keep the steps whose inputs are final: codes up to step t - 1 feed steps <= t
        target.truncate(min(target.length, t))
        draft.truncate(min(draft.length, t))
    return stats
