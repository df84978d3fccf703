"""Next-scale autoregression (VAR; P7 VAT's generator) over multi-scale codes.

Legend: B batch, K scales, t_k tokens of scale k (the tokenizer's `LatentSpec.scales`), S = Σ t_k,
D width, V codes.

One step generates a whole scale: the tokens of scale k are drawn in parallel given the condition
and every token of scales < k. The sequence holds all S tokens, coarse first:

    scale 0's inputs : the start embedding (t_0 copies)
    scale k's inputs : the embeddings of scale k-1's codes, linearly resampled to t_k tokens
    every input      + a scale embedding + a position-within-scale embedding
    attention        : block-causal, token i attends token j iff scale(j) <= scale(i) (VAR's mask)
    output i         : logits of token i's code; cross-entropy over all S tokens

Sampling makes K model calls instead of S (raster AR's), each recomputing the prefix (S is small);
classifier-free guidance mixes each scale's logits. A scale is a side^rank grid (`scale_rank`, from
the tokenizer's LatentSpec): 1 for sets and sequences, 2 for images (VAR), where scale k-1's
embeddings are resampled to scale k's side bilinearly in 2D, each scale's tokens in raster order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.config import ADDED_LATER
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.guidance import Guidance
from latentforge.generators.heads import CodeHead, code_nll
from latentforge.generators.sampling import sample_tokens
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register
from latentforge.tokenizers.base import LatentSpec


@dataclass
class NextScaleConfig(GeneratorConfig):
    name: str = "next_scale"
    vocab_size: int = 256
    # tokens per scale, from the tokenizer's LatentSpec; () splits the grid's N tokens into doubling
    # scales 1, 2, 4, ... whose last takes the rest (N = 16: 1, 2, 4, 9)
    scales: tuple[int, ...] = ()
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    scale_rank: int = field(default=1, metadata=ADDED_LATER)   # each scale a side^rank grid (2: images)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scales = tuple(int(s) for s in self.scales)
        if any(s < 1 for s in self.scale_sizes):
            raise ValueError(f"scales must be positive token counts, got {list(self.scales)}")
        if self.scale_rank not in (1, 2, 3):
            raise ValueError(f"scale_rank must be 1, 2 or 3, got {self.scale_rank}")
        bad = [t for t in self.scale_sizes if round(t ** (1 / self.scale_rank)) ** self.scale_rank != t]
        if bad:
            raise ValueError(f"scale_rank {self.scale_rank}: every scale's token count must be a side^"
                             f"{self.scale_rank}; {bad} are not")
        if sum(self.scale_sizes) != self.num_tokens:
            raise ValueError(f"the scales' tokens ({sum(self.scale_sizes)}) must fill the grid {list(self.grid)}")

    @property
    def scale_sizes(self) -> tuple[int, ...]:
        """Tokens per scale: `scales`, or doubling ones when it is empty."""
        return self.scales or doubling_scales(self.num_tokens)

    def fields_for(self, spec: LatentSpec, made_by: str) -> dict[str, Any]:
        fields = super().fields_for(spec, made_by)
        if not spec.scales:
            raise ValueError(f"generator 'next_scale' needs multi-scale codes, but {made_by} gives single-scale "
                             "ones: use the multiscale quantizer (tokenizer.quantizer.name: multiscale)")
        return {**fields, "scales": tuple(spec.scales), "scale_rank": spec.scale_rank}

    @classmethod
    def tiny(cls) -> "NextScaleConfig":
        return cls(grid=(7,), vocab_size=8, dim=32, depth=2, heads=2)


_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def doubling_scales(tokens: int) -> tuple[int, ...]:
    """1, 2, 4, ... while they fit in `tokens`, the last scale taking what is left."""
    out, total = [1], 1
    while total + 2 * out[-1] <= tokens:
        out.append(2 * out[-1])
        total += out[-1]
    out[-1] += tokens - total
    return tuple(out)


@register("generator", "next_scale", NextScaleConfig)
class NextScaleGenerator(Generator):
    def __init__(self, config: NextScaleConfig) -> None:
        super().__init__()
        self.config = config
        self.build_conditioner(config.dim)
        D, K = config.dim, len(config.scale_sizes)
        self.token_emb = nn.Embedding(config.vocab_size, D)
        self.start = nn.Parameter(torch.zeros(1, 1, D))
        self.scale_emb = nn.Embedding(K, D)
        self.position = nn.Parameter(torch.zeros(max(config.scale_sizes), D))
        self.transformer = Transformer(D, config.depth, config.heads, config.mlp_ratio, context_dim=self.context_dim)
        self.head = CodeHead(D, config.vocab_size)
        init_transformer_weights(self.transformer, config.depth)
        for p in (self.token_emb.weight, self.scale_emb.weight, self.position, self.start):
            nn.init.normal_(p, std=0.02)
        # where each scale's tokens start in the sequence, as Python ints: slicing by a tensor's
        # values would read the device (and break a torch.compile graph) at every scale
        self.bounds = list(itertools.accumulate(config.scale_sizes, initial=0))
        level = torch.repeat_interleave(torch.arange(K), torch.tensor(config.scale_sizes))     # [S] scale of each token
        self.register_buffer("level", level, persistent=False)
        self.register_buffer("mask", level[None, :] <= level[:, None], persistent=False)  # [S, S] block-causal

    def no_weight_decay(self) -> set[str]:
        return {"start", "position"}

    def _inputs(self, codes: Tensor, upto: int) -> Tensor:
        """Inputs [B, S_upto, D] of scales 0 .. upto-1 from codes [B, >= S_{upto-1}] (the codes of
        scales < upto - 1 are read)."""
        cfg, B = self.config, codes.shape[0]
        parts = [self.start.expand(B, cfg.scale_sizes[0], -1)]
        rank = cfg.scale_rank
        for k in range(1, upto):
            prev = self.token_emb(codes[:, self.bounds[k - 1]: self.bounds[k]])           # [B, t_{k-1}, D]
            side_in, side_out = (round(cfg.scale_sizes[j] ** (1 / rank)) for j in (k - 1, k))
            grid = prev.transpose(1, 2).reshape(B, -1, *(side_in,) * rank)               # [B, D, s, (s, s)]
            up = F.interpolate(grid, size=(side_out,) * rank, mode=_MODES[rank], align_corners=False)
            parts.append(up.flatten(2).transpose(1, 2))                                   # [B, t_k, D]
        x = torch.cat(parts, 1)
        S = x.shape[1]
        within = torch.cat([torch.arange(cfg.scale_sizes[k], device=x.device) for k in range(upto)])
        return x + self.scale_emb(self.level[:S]) + self.position[within]

    def logits(self, codes: Tensor, context: Context | None, upto: int | None = None) -> Tensor:
        """Teacher-forced logits [B, S_upto, V] for codes [B, S] (scales coarse first)."""
        upto = len(self.config.scale_sizes) if upto is None else upto
        x = self._inputs(codes, upto)
        S = x.shape[1]
        h = self.transformer(x, attn_mask=self.mask[:S, :S], context=None if context is None else context.tokens,
                             context_mask=None if context is None else context.mask)
        return self.head(h)

    def loss(self, z: Tensor, context: Context | None = None) -> dict[str, Tensor]:
        codes = self.flat_codes(z)
        return self.code_loss(code_nll(self.logits(codes, self.drop_condition(context)), codes), context)

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None) -> Tensor:
        """Codes [n, S], one scale per step: K model calls (see the module docstring)."""
        g, n, cfg = guidance, guidance.n, self.config
        codes = torch.zeros(n, self.config.num_tokens, dtype=torch.long, device=self.start.device)
        for k in range(len(cfg.scale_sizes)):
            # a guidance schedule's progress: the fraction of tokens drawn once this scale is; every
            # pass recomputes the coarser scales, so an unguided one runs the cond rows alone
            step = g.at(self.bounds[k + 1], self.bounds[-1])
            logits = self.logits(step.rows_of(codes), step.context, upto=k + 1)[:, self.bounds[k]: self.bounds[k + 1]]
            mixed = step.mix(logits)                                                       # [n, t_k, V]
            drawn = sample_tokens(mixed.reshape(-1, mixed.shape[-1]), temperature=temperature, top_k=top_k,
                                  top_p=top_p, generator=generator)
            codes[:, self.bounds[k]: self.bounds[k + 1]] = drawn.view(n, -1)
        return codes.view(n, *cfg.grid)
