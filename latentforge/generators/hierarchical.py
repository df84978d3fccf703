"""Hierarchical causal transformer over residual-VQ codes (P3 Mogo's streaming generator).

Legend: B batch, N = prod(grid) positions, Q levels (RVQ depth), D base width, Dd depth width,
V codes per level. Codes are [B, *grid, Q], level-major: codes[..., 0] is the coarsest
(quantize/rvq.py); positions are flattened in raster order.

A position carries Q codes whose embeddings add up, like the RVQ code vectors do. Two transformers
split the work:

1. The *base* transformer (causal over positions, cross-attention to the condition) reads at
   position i the running sum of the code embeddings of all levels of position i-1 (a learned BOS
   at i = 0), plus the grid position of i and the condition's spatial map at i. Its state
   h_i [B, N, D] summarises everything before position i.
2. The *depth* transformer (RQ-Transformer style, small, causal over levels) runs one short
   sequence per position: input at level 0 is h_i, at level q > 0 it is h_i plus the running sum
   of the embeddings of levels < q of position i (Mogo's cumulative input); output q predicts
   code q of position i with that level's head. Training runs the B*N sequences as one batch.

   position i-1 codes ──Σ emb──▶ base (causal over N) ──h_i──▶ depth (causal over Q) ──▶ logits_i,q
                                                     h_i + Σ_{j<q} emb_j(c_i,j) ──┘

Sampling: one base step per position with a KV cache (cross-attention keys/values of the context
computed once), then Q depth steps for that position, each drawing one code with its level's
`CodeHead`; both loops are `samplers.causal_decode`, every logit guided through the run's `Guidance`.

Streaming past the training length (1D grids (T,), e.g. motion: `sample(..., length=L)`, L > T).
The position embedding is a learned table of the T trained positions, and it is added to the
residual stream, so cached keys cannot be re-positioned. Positions beyond T are therefore drawn
in windows of T positions that slide by `window_stride` s: a window starting at frame a feeds
BOS, then the codes of frames a .. a+T-s-1 (already drawn, encoded in one pass into a fresh KV
cache, with positions 0 .. T-s relative to the window), and draws frames a+T-s .. a+T-1 with the
cache. A window is exactly what training sees of a clip cropped at frame a, so the model is in
distribution everywhere; each new frame sees at least T - s frames of history (s = 1, the default,
keeps the full T - 1: an exact sliding window, at the cost of re-encoding it for every frame).
Frames are only ever appended and drawn in order from one generator, so a prefix never changes
when generation continues: `sample(length=2T)[:, :T]` equals `sample()` for the same seed.

Note: Mogo itself (notes.md pitfall 3) has one causal transformer per level and predicts all levels
of frame t in parallel from frames < t; this file follows the brief's RQ-Transformer-style depth
transformer, which lets level q see levels < q of the same position, and keeps Mogo's cumulative
embedding sums and one embedding table per level.

Fewer levels (`levels_to_sample=L`): because the base input sums *all* levels of the previous
position, drawing only L < Q levels changes what the base transformer reads. With
`prefix_dropout > 0` training feeds, for that fraction of examples, the sums of a random prefix of
k < Q levels (the generator's version of the RVQ's quantizer dropout) and tells the model k through
a learned embedding; sampling then conditions on the L drawn levels and returns [n, *grid, L],
which `ResidualVQ.lookup` decodes as a prefix. A model trained with prefix_dropout = 0 refuses
L < Q rather than feed it history it has never seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.guidance import Guidance, GuidanceSchedule
from latentforge.generators.heads import CodeHead, token_nll
from latentforge.generators.samplers import causal_decode
from latentforge.generators.sampling import sample_tokens
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.kv_quant import Staircase
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register


@dataclass
class HierarchicalConfig(GeneratorConfig):
    residual = True
    name: str = "hierarchical"
    vocab_size: int = 512            # codes per level
    levels: int = 4                  # RVQ depth Q
    dim: int = 256                   # base transformer (causal over positions)
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    depth_dim: int = 256             # depth transformer (causal over the levels of one position)
    depth_layers: int = 2
    depth_heads: int = 4
    prefix_dropout: float = 0.0      # fraction of examples whose base inputs sum only a random level prefix

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.levels}")
        if not 0.0 <= self.prefix_dropout < 1.0:
            raise ValueError(f"prefix_dropout must be in [0, 1), got {self.prefix_dropout}")

    @classmethod
    def tiny(cls) -> HierarchicalConfig:
        """Builds and samples in well under a second (tests): motion-like, a 1D grid of 2-level RVQ codes."""
        return cls(grid=(6,), vocab_size=8, levels=2, dim=32, depth=2, heads=2, depth_dim=32, depth_layers=1,
                   depth_heads=2)


def _per_level(value, levels: int, name: str) -> list:
    """A sampling option given once for all levels or as one value per level."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) < levels:
            raise ValueError(f"{name} has {len(value)} values for {levels} levels")
        return list(value[:levels])
    return [value] * levels


@register("generator", "hierarchical", HierarchicalConfig)
class HierarchicalGenerator(Generator):
    def __init__(self, config: HierarchicalConfig) -> None:
        super().__init__()
        self.config = config
        self.build_conditioner(config.dim)
        D, Dd, Q = config.dim, config.depth_dim, config.levels
        # One table per level (separate RVQ codebooks); both transformers read the same sums.
        self.code_emb = nn.ModuleList(nn.Embedding(config.vocab_size, D) for _ in range(Q))
        self.bos = nn.Parameter(torch.zeros(1, 1, D))
        self.pos = GridPositionEmbedding(config.grid, D)
        # How many levels the base inputs sum (index k-1): constant Q unless prefix_dropout trains prefixes.
        self.history_levels = nn.Embedding(Q, D)
        self.base = Transformer(D, config.depth, config.heads, config.mlp_ratio, context_dim=self.context_dim)
        self.depth_in = nn.Identity() if Dd == D else nn.Linear(D, Dd)
        self.level_pos = nn.Parameter(torch.zeros(Q, Dd))
        self.depth_tf = Transformer(Dd, config.depth_layers, config.depth_heads, config.mlp_ratio)
        self.level_heads = nn.ModuleList(CodeHead(Dd, config.vocab_size) for _ in range(Q))  # uniform start
        init_transformer_weights(self.base, config.depth)
        init_transformer_weights(self.depth_tf, config.depth_layers)
        # Code embeddings start on the scale of h (a LayerNorm output, unit variance): at GPT-2's
        # 0.02 the codes of a position are a 2% ripple on h in the depth inputs, and level q learns
        # its dependence on levels < q far slower (test_hierarchical's toy, batch 32: level-1 bits
        # 0.34 after 200 steps at std 0.02, 0.02 after 150 steps at std 1).
        for table in self.code_emb:
            nn.init.normal_(table.weight, std=1.0)
        # ... but the base transformer reads the previous position's sum through a learned scale that
        # starts at GPT-2's 0.02: at unit scale the codes drown the position embedding and the
        # condition's spatial map in its inputs, and the model predicts colour from the previous
        # code instead of learning it from the graph (measured: +0.001 nats when the graph's colours
        # are shifted, against +0.48 with the scale; BENCHMARKS.md, issue 14).
        self.base_code_scale = nn.Parameter(torch.tensor(0.02))

        def unit_scale_for_old_checkpoints(module, state_dict, prefix, *args) -> None:
            state_dict.setdefault(prefix + "base_code_scale", torch.tensor(1.0))  # what they were trained with

        self.register_load_state_dict_pre_hook(unit_scale_for_old_checkpoints)
        nn.init.normal_(self.history_levels.weight, std=0.02)
        nn.init.normal_(self.level_pos, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"bos", "level_pos", "base_code_scale"}

    # ---------------------------------------------------------------- shapes and embeddings

    def _flatten(self, z: Tensor) -> Tensor:
        grid, Q = tuple(self.config.grid), self.config.levels
        if Q == 1 and z.dim() == len(grid) + 1:
            z = z.unsqueeze(-1)  # LatentSpec writes depth-1 codes without the level axis
        if z.dtype != torch.long or tuple(z.shape[1:]) != (*grid, Q):
            raise ValueError(f"expected int64 codes [B, {', '.join(map(str, grid))}, {Q}], "
                             f"got {z.dtype} {list(z.shape)}")
        return z.reshape(z.shape[0], -1, Q)  # raster order [B, N, Q]

    def _level_sums(self, codes: Tensor) -> Tensor:
        """Running sums of code embeddings, codes [..., k] -> [..., k, D]: entry q = Σ_{j<=q} emb_j."""
        if codes.shape[-1] == 0:
            return self.bos.new_zeros(*codes.shape, self.config.dim)
        embs = torch.stack([self.code_emb[q](codes[..., q]) for q in range(codes.shape[-1])], dim=-2)
        return embs.cumsum(dim=-2)

    def _history(self, sums: Tensor) -> Tensor:
        """What the base transformer reads of a position's summed codes [..., D]: scaled (see __init__)."""
        return self.base_code_scale * sums

    def _depth_inputs(self, h: Tensor, sums: Tensor) -> Tensor:
        """Depth-sequence inputs from base states h [..., D] and the running sums of the first
        levels [..., q, D] of the same position -> [..., q + 1, Dd] (levels 0..q)."""
        x = torch.cat([h.unsqueeze(-2), h.unsqueeze(-2) + sums], dim=-2)  # [..., q+1, D]
        return self.depth_in(x) + self.level_pos[: x.shape[-2]]

    def _head(self, y: Tensor) -> Tensor:
        """Each level's head on the depth outputs y [..., Q, Dd] -> [..., Q, V]."""
        return torch.stack([head(y[..., q, :]) for q, head in enumerate(self.level_heads)], dim=-2)

    # ---------------------------------------------------------------- training

    def logits(self, codes: Tensor, context: Context | None, history: Tensor | None = None) -> Tensor:
        """Teacher-forced logits for codes [B, N, Q] -> [B, N, Q, V].

        `history` [B] (1..Q) is how many levels each example's base inputs sum; all by default.
        """
        B, N, Q = codes.shape
        sums = self._level_sums(codes)  # [B, N, Q, D]
        if history is None:
            history = torch.full((B,), Q, dtype=torch.long, device=codes.device)
        prev = sums.gather(2, (history - 1).view(B, 1, 1, 1).expand(B, N, 1, sums.shape[-1]))[:, :, 0]
        x = torch.cat([self.bos.expand(B, 1, -1), self._history(prev[:, :-1])], dim=1)  # [B, N, D]
        x = x + self.pos()[:N] + self.history_levels(history - 1)[:, None]
        spatial = self.spatial_inputs(context)
        if spatial is not None:
            x = x + spatial[:, :N]  # the condition's map at the position being predicted
        h = self.base(x, causal=True, context=None if context is None else context.tokens,
                      context_mask=None if context is None else context.mask)  # [B, N, D]
        # B*N independent level sequences of length Q, as one batch
        y = self.depth_tf(self._depth_inputs(h, sums[:, :, :-1]).flatten(0, 1), causal=True)  # [B*N, Q, Dd]
        return self._head(y).view(B, N, Q, -1)

    def loss(self, z: Tensor, context: Context | None = None) -> dict[str, Tensor]:
        """Cross-entropy averaged over positions *and levels* (nats per code, comparable across
        depths); `bits_per_position` is the sum over levels, `bits_level_q` each level's share."""
        codes = self._flatten(z)
        B, Q = codes.shape[0], self.config.levels
        history = None
        if self.training and self.config.prefix_dropout > 0 and Q > 1:
            short = torch.rand(B, device=codes.device) < self.config.prefix_dropout
            k = torch.randint(1, Q, (B,), device=codes.device)
            history = torch.where(short, k, torch.full_like(k, Q))
        logits = self.logits(codes, self.drop_condition(context), history)
        per_level = token_nll(logits, codes).view(-1, Q).mean(0)  # [Q] nats
        out = {"loss": per_level.mean(), "bits_per_position": per_level.sum().detach() / math.log(2)}
        out.update({f"bits_level_{q}": per_level[q].detach() / math.log(2) for q in range(Q)})
        return self.add_condition_losses(out, context)

    # ---------------------------------------------------------------- sampling

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None,
             temperature: float | Sequence[float] = 1.0, top_k: int | None | Sequence[int | None] = None,
             top_p: float | None | Sequence[float | None] = None, levels_to_sample: int | None = None,
             use_cache: bool = True, length: int | None = None, window_stride: int = 1,
             prefix: Tensor | None = None, kv_cache: str | Staircase = "full") -> Tensor:
        """Code grids [n, *grid, L] (L = levels_to_sample or all levels; [n, *grid] for a one-level
        model, as LatentSpec writes depth 1).

        Args:
            temperature, top_k, top_p: one value or one per level (so does cfg_scale).
            levels_to_sample: draw only the first L levels (needs prefix_dropout in training).
            use_cache: False recomputes every prefix (the reference the cached path must equal).
            length: 1D grids only: draw this many positions, past the trained T by sliding windows
                (see the module doc); [n, length, L].
            window_stride: positions drawn per window past the trained length, 1 .. T-1.
            prefix: 1D grids only: codes [n, P, L] (or [n, P] for one level) the samples start with,
                P < the drawn length; they are fed, not drawn, so they come out unchanged and the
                rest continues them (a prompt's continuation).
            kv_cache: how the base transformer's KV cache holds keys and values: "full", "int8",
                "int4", "int2", "staircase" or a `Staircase` (nn/kv_quant.py). The depth transformer's
                cache holds Q tokens per position and stays full precision.
        """
        cfg, g, n = self.config, guidance, guidance.n
        Q, N = cfg.levels, cfg.num_tokens
        L = Q if levels_to_sample is None else levels_to_sample
        if not 1 <= L <= Q:
            raise ValueError(f"levels_to_sample must be in 1..{Q}, got {levels_to_sample}")
        if L < Q and cfg.prefix_dropout == 0:
            raise ValueError(f"levels_to_sample={L} < {Q} levels needs a model trained with prefix_dropout > 0: "
                             "its base transformer has only seen inputs that sum all levels")
        # a guidance schedule gives one scale per position (each step's Guidance), the same for every level
        scale = None if isinstance(g.scale, GuidanceSchedule) else g.scale
        per_level = [_per_level(v, L, name) for v, name in
                     [(temperature, "temperature"), (top_k, "top_k"), (top_p, "top_p"), (scale, "cfg_scale")]]
        pos = self.pos() + self.history_levels.weight[L - 1]  # [N, D]
        spatial = self.spatial_inputs(g.context)
        if spatial is not None:
            pos = pos + spatial  # per-row inputs [rows, N, D] from here on
        T = N if length is None else length
        if T != N:
            if len(cfg.grid) != 1 or spatial is not None or T < 1:
                raise ValueError(f"length={length} streams a 1D grid without a spatial condition map; this model "
                                 f"has grid {tuple(cfg.grid)}" + (" and a spatial map" if spatial is not None else ""))
            if not 1 <= window_stride <= max(1, N - 1):
                raise ValueError(f"window_stride must be in 1..{max(1, N - 1)} (the trained length {N} minus one, "
                                 f"so that every window keeps some history), got {window_stride}")
        codes = torch.zeros(n, T, L, dtype=torch.long, device=pos.device)
        P = self._put_prefix(codes, prefix, N, window_stride)
        cross = {} if g.context is None else dict(context_kv=self.base.context_kv(g.context.tokens),
                                                  context_mask=g.context.mask)
        # first frame of the window, frames drawn (or given) so far: a prefix is the window's history
        drawn, start = P, max(0, P - (N - window_stride)) if P >= N else 0
        while drawn < T:
            known = drawn - start  # frames of this window already drawn: fed, not drawn again
            new = min(N - known, T - drawn)

            def emit(i: int, h: Tensor, known: int = known, drawn: int = drawn) -> Tensor | None:
                p, j = drawn + i, known + i  # absolute frame, position in the window
                # a schedule's progress: the fraction of positions drawn; the KV caches need every row
                self._draw_levels(h, g.at(p + 1, T, keep_rows=True), codes[:, p], per_level, generator, use_cache)
                if j + 1 < N:
                    return self._history(self._level_sums(g.rows_of(codes[:, p]))[:, None, -1]) + pos[..., j + 1 : j + 2, :]
                return None

            history = self._history(self._level_sums(g.rows_of(codes[:, start : start + known]))[..., -1, :])
            first = torch.cat([self.bos.expand(g.rows, 1, -1), history], dim=1) + pos[..., : known + 1, :]
            causal_decode(self.base, first, new, emit, use_cache=use_cache, kv_cache=kv_cache, **cross)
            drawn += new
            start = drawn - (N - window_stride)
        out = codes.view(n, *cfg.grid, L) if T == N else codes
        return out.squeeze(-1) if Q == 1 else out

    def _put_prefix(self, codes: Tensor, prefix: Tensor | None, N: int, window_stride: int) -> int:
        """Write a prompt's codes into codes [n, T, L]; return their length P (0 without a prefix)."""
        if prefix is None:
            return 0
        n, T, L = codes.shape
        given = torch.as_tensor(prefix, device=codes.device).long()
        given = given[..., None] if given.dim() == 2 else given
        if len(self.config.grid) != 1 or given.dim() != 3 or given.shape[0] != n or given.shape[2] != L \
                or not 1 <= given.shape[1] < T:
            raise ValueError(f"prefix must be codes [{n}, P, {L}] with 1 <= P < {T} on a 1D grid, got "
                             f"{list(torch.as_tensor(prefix).shape)} (grid {tuple(self.config.grid)})")
        if int(given.min()) < 0 or int(given.max()) >= self.config.vocab_size:
            raise ValueError(f"prefix codes must be in [0, {self.config.vocab_size})")
        codes[:, : given.shape[1]] = given
        return given.shape[1]

    def _draw_levels(self, h: Tensor, g: Guidance, out: Tensor, per_level: list[list], generator: torch.Generator | None,
                     use_cache: bool) -> None:
        """Fill out [n, L] with the levels of one position, coarse to fine, from its base state h [rows, D].

        per_level: temperature, top_k, top_p and cfg_scale, one value per level each.
        """
        temps, ks, ps, scales = per_level
        L = out.shape[1]

        def emit(q: int, y: Tensor) -> Tensor | None:
            logits = g.mix(self.level_heads[q](y), scales[q])  # [n, V]
            out[:, q] = sample_tokens(logits, temperature=temps[q], top_k=ks[q], top_p=ps[q], generator=generator)
            if q + 1 < L:
                s = self._level_sums(g.rows_of(out[:, : q + 1]))[:, -1]  # [rows, D]
                return self.depth_in(h + s)[:, None] + self.level_pos[q + 1]
            return None

        first = self._depth_inputs(h, h.new_zeros(h.shape[0], 0, h.shape[-1]))  # level 0 input, [rows, 1, Dd]
        causal_decode(self.depth_tf, first, L, emit, use_cache=use_cache)
