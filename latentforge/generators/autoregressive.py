"""Autoregressive transformer over discrete latent codes (P1's image GPT, P13-style raster AR), generating
in raster, random (σ-GPT / RandAR style) or coarse-to-fine order.

Legend: B batch, N = prod(grid) tokens, D width, V vocabulary (codebook size), σ the generation order:
a permutation of the N raster positions, step t generates the code at position σ(t).

Raster order (the default, σ = identity):
  Input  = [BOS, code_0, ..., code_{N-2}] embedded + grid position of the token being predicted
  Output = logits for code_0 ... code_{N-1}                                      [B, N, V]
Any other order runs the same causal transformer on the sequence permuted by σ. The step no longer
implies where the next token goes, nor where the last one sat, so every input names both (σ-GPT's
double position encoding; RandAR's position instruction tokens carry the same information):
  input_t = embed(code at σ(t-1)) + source_pos(σ(t-1))     what was generated last, and where
          + pos(σ(t))                                      the query: where to generate now
  input_0 = BOS + pos(σ(0))
`random` draws a fresh σ per training example, so the model learns every order and sampling may use
any (one per sample from the torch.Generator, or one passed in); `coarse_to_fine` is one fixed
hierarchical σ (`coarse_to_fine_order`). A condition's spatial map (P1's layout) is read at the query
position, like pos. `logits` returns raster layout whatever the order.
Residual codes (an RVQ tokenizer's [B, *grid, Q], `levels` Q > 1) are flattened position-major, as
in MusicGen's flattening pattern and VALL-E's NAR-free variant: the sequence holds the Q codes of
position 0, then those of position 1, ..., N·Q steps in all; each step's input adds a level
embedding to the position's, one shared vocabulary embeds every level's codes, and the head predicts
the next step's code. Exact (each level sees every earlier level) at Q times the steps: raster only.
Composition: a causal `nn.Transformer` backbone (self-attention + cross-attention to the condition +
MLP), a `CodeHead` (cross-entropy over codes), and the `causal_decode` sampler: one token per step
with a KV cache, cross-attention keys/values of the context computed once, every step's logits
guided through the run's `Guidance`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.config import ADDED_LATER
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.guidance import Guidance
from latentforge.generators.heads import CodeHead, code_nll
from latentforge.generators.samplers import causal_decode
from latentforge.generators.sampling import sample_tokens
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register

Order = Literal["raster", "random", "coarse_to_fine"]


@dataclass
class ARConfig(GeneratorConfig):
    name: str = "autoregressive"
    vocab_size: int = 512
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    order: Order = "raster"   # generation order; non-raster adds a source-position embedding
    # residual codes per position (RVQ depth Q), from the tokenizer
    levels: int = field(default=1, metadata=ADDED_LATER)

    residual = True           # takes RVQ codes, flattened position-major

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order not in typing.get_args(Order):
            raise ValueError(f"order must be one of {typing.get_args(Order)}, got {self.order!r}")
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.levels}")
        if self.levels > 1 and self.order != "raster":
            raise ValueError(f"residual codes ({self.levels} levels) are generated in raster order only, "
                             f"got order {self.order!r}")

    @property
    def seq_len(self) -> int:
        """Steps of one sample: positions x levels."""
        return self.num_tokens * self.levels

    @classmethod
    def tiny(cls) -> ARConfig:
        """Builds and samples in well under a second (tests)."""
        return cls(grid=(4, 4), vocab_size=8, dim=32, depth=2, heads=2)


def coarse_to_fine_order(grid: tuple[int, ...]) -> Tensor:
    """A fixed hierarchical order of a grid of any rank: raster positions [N], int64.

    Level k holds the positions whose coordinates are all multiples of 2^k, from the top stride
    (the largest power of two <= max(grid) / 2) down to 1; a level visits only positions no coarser
    level took, in raster order. (4, 4) -> 0, 2, 8, 10, then the 12 others; (8,) -> 0, 4, 2, 6, 1, 3, 5, 7.
    """
    top = max(0, (max(grid) // 2).bit_length() - 1)  # log2 of the top stride
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1)
    coords = coords.reshape(-1, len(grid))  # [N, rank]
    level = torch.zeros_like(coords)
    for k in range(1, top + 1):
        level += coords % 2**k == 0  # 2-adic valuation of each coordinate, capped at top (0 -> top)
    return torch.argsort(-level.min(-1).values, stable=True)


def in_order(t: Tensor, order: Tensor | None) -> Tensor:
    """Rows of t ([N, D] shared or [B, N, D]) in generation order [B, N]; unchanged when order is None."""
    if order is None:
        return t
    t = t.expand(order.shape[0], *t.shape[-2:])
    return t.gather(1, order[..., None].expand(-1, -1, t.shape[-1]))  # [B, N, D]


@register("generator", "autoregressive", ARConfig)
class ARGenerator(Generator):
    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.config = config
        self.build_conditioner(config.dim)
        D = config.dim
        self.token_emb = nn.Embedding(config.vocab_size, D)
        self.bos = nn.Parameter(torch.zeros(1, 1, D))
        self.pos = GridPositionEmbedding(config.grid, D)
        self.level_emb = nn.Embedding(config.levels, D) if config.levels > 1 else None
        self.transformer = Transformer(D, config.depth, config.heads, config.mlp_ratio, context_dim=self.context_dim)
        self.head = CodeHead(D, config.vocab_size)
        init_transformer_weights(self.transformer, config.depth)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        # raster models get no new parameters, so their weights and init stay as they were
        self.source_pos = None if config.order == "raster" else GridPositionEmbedding(config.grid, D)
        fixed = coarse_to_fine_order(tuple(config.grid)) if config.order == "coarse_to_fine" else None
        self.register_buffer("fixed_order", fixed, persistent=False)  # derived from the grid, not saved

    def no_weight_decay(self) -> set[str]:
        return {"bos"}

    def step_inputs(self) -> Tensor:
        """Each step's position input: [N·Q, D] (grid position, plus the level for residual codes)."""
        pos = self.pos()
        if self.level_emb is None:
            return pos
        return (pos[:, None] + self.level_emb.weight[None]).flatten(0, 1)

    def per_step(self, spatial: Tensor | None) -> Tensor | None:
        """A condition's per-position map [rows, N, D] -> per step [rows, N·Q, D]."""
        if spatial is None or self.level_emb is None:
            return spatial
        return spatial.repeat_interleave(self.config.levels, dim=1)

    def draw_order(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor | None:
        """The config's generation order for a batch: [B, N] raster positions, or None for raster."""
        if self.config.order == "raster":
            return None
        if self.config.order == "coarse_to_fine":
            return self.fixed_order.to(device).expand(batch, -1)
        return torch.rand(batch, self.config.num_tokens, generator=generator, device=device).argsort(-1)

    def _check_order(self, order: Tensor, batch: int, device: torch.device) -> Tensor:
        if self.source_pos is None:
            raise ValueError("a raster-order model (order='raster') cannot take another order: "
                             "train with order='random' to generate in any order")
        N = self.config.num_tokens
        order = torch.as_tensor(order, device=device).long()
        if order.dim() == 1:
            order = order.expand(batch, -1)
        if order.shape != (batch, N) or not torch.equal(order.sort(-1).values,
                                                         torch.arange(N, device=device).expand(batch, N)):
            raise ValueError(f"order must be a permutation of the {N} grid positions, [{N}] or [{batch}, {N}]; "
                             f"got shape {list(order.shape)}")
        return order

    def _source(self, order: Tensor) -> Tensor:
        """Step t's source-position term: where the code fed at step t (generated at t-1) sits. [B, N, D]"""
        return F.pad(in_order(self.source_pos(), order)[:, :-1], (0, 0, 1, 0))  # step 0 feeds BOS: zeros

    def logits(self, codes: Tensor, context: Context | None, order: Tensor | None = None) -> Tensor:
        """Teacher-forced logits for codes [B, N·Q] (flattened, raster, position-major) -> [B, N·Q, V],
        raster layout.

        order: [N] or [B, N] generation order σ (step t predicts position σ(t)); None takes the
        config's (for `random`, a fresh permutation per row from the global RNG).
        """
        B, N = codes.shape
        order = self.draw_order(B, codes.device) if order is None else self._check_order(order, B, codes.device)
        prev = codes[:, :-1] if order is None else codes.gather(1, order[:, :-1])  # fed codes, step order
        x = torch.cat([self.bos.expand(B, 1, -1), self.token_emb(prev)], dim=1)
        x = x + in_order(self.step_inputs()[:N], order)
        if order is not None:
            x = x + self._source(order)
        spatial = self.per_step(self.spatial_inputs(context))
        if spatial is not None:
            x = x + in_order(spatial[:, :N], order)  # the condition's map of the token being predicted
        h = self.transformer(x, causal=True, context=None if context is None else context.tokens,
                             context_mask=None if context is None else context.mask)
        logits = self.head(h)  # [B, N, V], step order
        if order is None:
            return logits
        return torch.empty_like(logits).scatter_(1, order[..., None].expand_as(logits), logits)

    def loss(self, z: Tensor, context: Context | None = None) -> dict[str, Tensor]:
        codes = self.flat_codes(z)
        logits = self.logits(codes, self.drop_condition(context))
        return self.code_loss(code_nll(logits, codes), context)

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             order: Tensor | None = None, prefix: Tensor | None = None) -> Tensor:
        """Code grids [n, *grid] ([n, *grid, Q] for residual codes), one token per step.

        Args:
            temperature, top_k, top_p: how each token is drawn (see sampling.sample_tokens).
            use_cache: False recomputes every prefix (the reference the cached path must equal).
            order: generation order, a permutation of the N raster positions, [N] or [n, N] (non-raster
                models only). None takes the config's: for `random`, one order per sample from `generator`.
            prefix: codes the samples start with, in raster order: [n, P] or leading slices of the
                grid [n, k, *grid[1:]] (a long video's next chunk continues the last one's frames;
                residual codes: [n, k, Q], a prompt clip's frames); they are fed, not drawn.
        """
        g, n, N, Q = guidance, guidance.n, self.config.seq_len, self.config.levels
        pos = self.step_inputs()
        spatial = self.per_step(self.spatial_inputs(g.context))
        if spatial is not None:
            pos = pos + spatial  # per-row inputs [rows, N·Q, D] from here on
        order = self.draw_order(n, pos.device, generator) if order is None else self._check_order(order, n, pos.device)
        forced = None
        if prefix is not None:
            forced = torch.as_tensor(prefix, device=pos.device).long().reshape(n, -1)  # [n, P·Q]
            if order is not None or not 0 < forced.shape[1] < N or forced.shape[1] % Q or forced.min() < 0 \
                    or forced.max() >= self.config.vocab_size:
                what = f"{Q} levels of each of " if Q > 1 else ""
                raise ValueError(f"prefix must be codes in [0, {self.config.vocab_size}) for {what}fewer than "
                                 f"{self.config.num_tokens} leading raster positions of a raster-order model, [n, P] "
                                 f"or [n, k, *grid[1:]]{' + [Q]' if Q > 1 else ''}; got {list(prefix.shape)} "
                                 f"(order {self.config.order})")
        # step t's input beyond the fed code: [rows, N, D] (or [N, D] shared, in raster order)
        inputs = pos
        if order is not None:
            row_order = g.rows_of(order)  # guided rows [cond; null] share their sample's order
            inputs = in_order(pos, row_order) + self._source(row_order)
        steps = torch.zeros(n, N, dtype=torch.long, device=pos.device)  # codes in generation order
        cross = {} if g.context is None else dict(context_kv=self.transformer.context_kv(g.context.tokens),
                                                  context_mask=g.context.mask)

        def emit(i: int, h: Tensor) -> Tensor | None:
            logits = g.mix(self.head(h))  # [n, V]
            if forced is not None and i < forced.shape[1]:
                steps[:, i] = forced[:, i]
            else:
                steps[:, i] = sample_tokens(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                            generator=generator)
            if i + 1 < N:
                return g.rows_of(self.token_emb(steps[:, i]))[:, None] + inputs[..., i + 1 : i + 2, :]
            return None

        first = self.bos.expand(g.rows, 1, -1) + inputs[..., :1, :]  # input of step 0, [rows, 1, D]
        causal_decode(self.transformer, first, N, emit, use_cache=use_cache, **cross)
        codes = steps if order is None else torch.empty_like(steps).scatter_(1, order, steps)
        return codes.view(n, *self.config.grid, *((Q,) if Q > 1 else ()))
