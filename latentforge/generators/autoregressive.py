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

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.config import ADDED_LATER
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.guidance import Guidance, GuidanceSchedule
from latentforge.generators.heads import CodeHead, code_nll
from latentforge.generators.samplers import causal_decode
from latentforge.generators.sampling import sample_tokens, token_probs
from latentforge.generators.speculative import Decoder, SpeculationStats, speculative_decode
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.kv_quant import Staircase
from latentforge.nn.matformer import each_width, extract, get_widths, nested_mlps, nested_units, use_widths
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register

Order = Literal["raster", "random", "coarse_to_fine"]
# learned: a table per grid axis added to the tokens; the others are relative positions over the step
# index, applied in self-attention by the shared stack (nn/transformer.py `Position`, P15)
PositionKind = Literal["learned", "rope", "alibi", "rope_alibi"]


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
    # MatFormer (P25): fractions of the MLP hidden units trained as nested submodels, e.g.
    # (0.25, 0.5, 1.0); the loss trains every one; () = a plain model
    nested_widths: tuple[float, ...] = field(default=(), metadata=ADDED_LATER)
    # positions: a learned grid table, or relative ones in attention that run past the trained length
    position: PositionKind = field(default="learned", metadata=ADDED_LATER)

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
        self.nested_widths = tuple(float(f) for f in self.nested_widths)
        if self.position not in typing.get_args(PositionKind):
            raise ValueError(f"position must be one of {typing.get_args(PositionKind)}, got {self.position!r}")
        if self.position != "learned" and self.order != "raster":
            raise ValueError(f"position {self.position!r} measures distance in steps, which says where a token "
                             f"sits only in raster order; order {self.order!r} needs position='learned'")
        nested_units(int(self.dim * self.mlp_ratio), self.nested_widths)  # checks them

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
        # relative positions live in the stack's attention: no table, so no length limit
        self.pos = GridPositionEmbedding(config.grid, D) if config.position == "learned" else None
        self.level_emb = nn.Embedding(config.levels, D) if config.levels > 1 else None
        self.transformer = Transformer(D, config.depth, config.heads, config.mlp_ratio, context_dim=self.context_dim,
                                       nested_widths=config.nested_widths,
                                       position="none" if config.position == "learned" else config.position)
        self.head = CodeHead(D, config.vocab_size)
        init_transformer_weights(self.transformer, config.depth)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        # raster models get no new parameters, so their weights and init stay as they were
        self.source_pos = None if config.order == "raster" else GridPositionEmbedding(config.grid, D)
        fixed = coarse_to_fine_order(tuple(config.grid)) if config.order == "coarse_to_fine" else None
        self.register_buffer("fixed_order", fixed, persistent=False)  # derived from the grid, not saved

    def no_weight_decay(self) -> set[str]:
        return {"bos"}

    def step_inputs(self, steps: int | None = None) -> Tensor:
        """Each step's position input: [S, D], S = steps (default N·Q): the grid position (zeros with
        relative positions, which any S may have), plus the level for residual codes."""
        S, Q = self.config.seq_len if steps is None else steps, self.config.levels
        if self.pos is not None and S > self.config.seq_len:
            raise ValueError(f"learned positions cover the {self.config.seq_len} trained steps, got {S}: "
                             "position 'rope', 'alibi' or 'rope_alibi' runs longer sequences")
        pos = self.pos() if self.pos is not None else self.bos.new_zeros(-(-S // Q), self.config.dim)
        if self.level_emb is not None:
            pos = (pos[:, None] + self.level_emb.weight[None]).flatten(0, 1)
        return pos[:S]

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
        x = x + in_order(self.step_inputs(N), order)
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
        if not self.config.nested_widths:
            logits = self.logits(codes, self.drop_condition(context))
            return self.code_loss(code_nll(logits, codes), context)
        # MatFormer: every granularity on the same batch, same dropped conditions and order. The paper
        # sums their gradients; the mean differs by a constant factor, which Adam does not see.
        kept, order = self.drop_condition(context), self.draw_order(codes.shape[0], codes.device)
        nll = {f: code_nll(self.logits(codes, kept, order), codes) for f in each_width(self.transformer)}
        out = self.code_loss(torch.stack(list(nll.values())).mean(), context)
        out["bits_per_token"] = nll[1.0].detach() / math.log(2)  # the whole model's
        out.update({f"nll_width_{f:g}": v.detach() for f, v in nll.items()})
        return out

    def submodel(self, width: float) -> ARGenerator:
        """MatFormer extraction: a standalone generator with plain MLPs of one nested `width`, holding
        the weights that width uses and computing what this model computes at it."""
        with use_widths(self.transformer, width):
            units = nested_mlps(self.transformer)[0].width
            state = extract(self).state_dict()
        config = dataclasses.replace(self.config, mlp_ratio=units / self.config.dim, nested_widths=())
        if int(config.dim * config.mlp_ratio) != units:
            raise ValueError(f"width {width}: {units} hidden units are not a ratio of width {config.dim} "
                             "that survives float rounding")
        out = type(self)(config)
        out.load_state_dict(state)
        return out.train(self.training)

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True,
             order: Tensor | None = None, prefix: Tensor | None = None, speculative: int = 0,
             draft_width: float | None = None, kv_cache: str | Staircase = "full") -> Tensor:
        """Code grids [n, *grid] ([n, *grid, Q] for residual codes), one token per step.

        Args:
            temperature, top_k, top_p: how each token is drawn (see sampling.sample_tokens).
            use_cache: False recomputes every prefix (the reference the cached path must equal).
            order: generation order, a permutation of the N raster positions, [N] or [n, N] (non-raster
                models only). None takes the config's: for `random`, one order per sample from `generator`.
            prefix: codes the samples start with, in raster order: [n, P] or leading slices of the
                grid [n, k, *grid[1:]] (a long video's next chunk continues the last one's frames;
                residual codes: [n, k, Q], a prompt clip's frames); they are fed, not drawn.
            speculative: k > 0 decodes speculatively (generators/speculative.py), k draft tokens a round
                from this network at `draft_width` (a nested width; default the smallest), checked by it
                at its current widths: the same distribution, fewer full-model passes. Needs nested_widths.
                `last_speculation` then holds the run's acceptance statistics.
            kv_cache: how the KV cache holds keys and values: "full", "int8", "int4", "int2" or
                "staircase" (P15: older blocks in fewer bits), or a `Staircase` (nn/kv_quant.py).
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
            # a guidance schedule's progress: the fraction of tokens drawn; the KV cache needs every row
            logits = g.at(i + 1, N, keep_rows=True).mix(self.head(h))  # [n, V]
            if forced is not None and i < forced.shape[1]:
                steps[:, i] = forced[:, i]
            else:
                steps[:, i] = sample_tokens(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                            generator=generator)
            if i + 1 < N:
                return g.rows_of(self.token_emb(steps[:, i]))[:, None] + inputs[..., i + 1 : i + 2, :]
            return None

        if speculative and kv_cache != "full":
            raise ValueError(f"speculative decoding rolls back full-precision caches; got kv_cache={kv_cache!r}")
        if speculative and isinstance(g.scale, GuidanceSchedule):
            raise ValueError("speculative decoding checks several positions per pass under one guidance scale: "
                             "pass cfg_scale as a number, not a GuidanceSchedule")
        if speculative:
            sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
            self._speculate(g, steps, forced, inputs, cross, speculative, draft_width, sampling, generator, use_cache)
        else:
            first = self.bos.expand(g.rows, 1, -1) + inputs[..., :1, :]  # input of step 0, [rows, 1, D]
            causal_decode(self.transformer, first, N, emit, use_cache=use_cache, kv_cache=kv_cache, **cross)
        codes = steps if order is None else torch.empty_like(steps).scatter_(1, order, steps)
        return codes.view(n, *self.config.grid, *((Q,) if Q > 1 else ()))

    last_speculation: SpeculationStats | None = None  # the last speculative draw's statistics

    def _speculate(self, g: Guidance, steps: Tensor, forced: Tensor | None, inputs: Tensor, cross: dict,
                   k: int, draft_width: float | None, sampling: dict, generator: torch.Generator | None,
                   use_cache: bool) -> None:
        """`draw`'s speculative path: fills steps [n, N] (generation order). Target and draft are this
        network at its current widths and at `draft_width`, each with its own KV cache."""
        if not self.config.nested_widths:
            raise ValueError("speculative decoding drafts with a nested submodel, and this model has none: "
                             "train it with nested_widths, e.g. (0.25, 0.5, 1.0)")
        if not use_cache:
            raise ValueError("speculative decoding rolls back KV caches: use_cache must be True")
        n, N = steps.shape
        seq = torch.zeros(n, N + 1, dtype=torch.long, device=steps.device)  # seq[:, j + 1]: code of step j
        start = 0 if forced is None else forced.shape[1]
        if forced is not None:
            seq[:, 1 : start + 1] = forced

        def decoder(widths: float | list[float]) -> Decoder:
            def step(fed: Tensor, first: int, caches: list) -> Tensor:
                x = self.token_emb(fed)                                              # [n, T, D]
                if first == 0:
                    x = torch.cat([self.bos.expand(n, 1, -1), x[:, 1:]], 1)          # step 0 reads BOS
                x = g.rows_of(x) + inputs[..., first : first + x.shape[1], :]
                with use_widths(self.transformer, widths):
                    h = self.transformer(x, causal=True, caches=caches, **cross)      # [rows, T, D]
                return token_probs(g.mix(self.head(h)), **sampling)                 # [n, T, V]

            return Decoder(step, self.transformer.new_caches(g.rows, N, inputs))

        target = decoder(get_widths(self.transformer))
        draft = decoder(self.config.nested_widths[0] if draft_width is None else draft_width)
        self.last_speculation = speculative_decode(target, draft, seq, start, k, greedy=sampling["temperature"] == 0,
                                                   generator=generator)
        steps.copy_(seq[:, 1:])
