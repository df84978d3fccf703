"""Axial Transformer (P13, Ho et al. 2019): autoregression over a 2D code grid in raster order,
with row and column attention instead of full attention.

Legend: B batch, H rows, W columns, N = H*W, D width, V vocabulary (codebook size), L context length.
Each code (r, c) is predicted from the rows above (all columns) and the codes left of it in its row.
Two stacks split that context:

  where  = pos(r, c) + spatial condition(r, c)                  (known before any code)   [B, H, W, D]
  upper  = UpperStack(emb(code) + where)   over rows 0..H-2, blocks alternating
           unmasked row attention and causal column attention          -> row r' has seen rows <= r'
  u      = shift_down(upper)                one row down, zeros on top -> row r has seen rows < r
  x      = shift_right(emb(code)) + u + where                          (BOS in column 0)
  logits = Head(RowStack(x))                causal row attention only                     [B, H, W, V]

The two shifts are what keep it causal (notes pitfall 2): without shift_down the causal column
attention would show row r its own codes, and without shift_right the row stack would see the
code it predicts. Every block may also cross-attend to the condition's tokens.

Sampling is semi-parallel, as in the paper: the upper stack runs once per row, for all W columns
at once, and only the (shallower) row stack runs per token. With KV caches (`use_cache=True`,
the default) the upper stack sees only the newest row, its causal column attentions reading the
earlier rows from a per-column cache, and the row stack sees only the newest token. With
`use_cache=False` every token recomputes the full model on the whole grid (the slow reference).
The head is a `CodeHead`; guidance goes through the run's `Guidance` like every family's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.guidance import Guidance
from latentforge.generators.heads import CodeHead, code_nll
from latentforge.generators.sampling import sample_tokens
from latentforge.nn.axial import AxialStack
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import init_transformer_weights
from latentforge.registry import register


@dataclass
class AxialConfig(GeneratorConfig):
    name: str = "axial"
    vocab_size: int = 512
    dim: int = 256
    upper_depth: int = 2     # (unmasked row, causal column) block pairs over the rows above
    row_depth: int = 2       # causal row-attention blocks over the current row
    heads: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.grid) != 2:
            raise ValueError(f"the axial generator needs a 2D latent grid (H, W), got grid={tuple(self.grid)}")
        if self.upper_depth < 1 or self.row_depth < 1:
            raise ValueError(f"upper_depth and row_depth must be >= 1, got {self.upper_depth}, {self.row_depth}")

    @classmethod
    def tiny(cls) -> AxialConfig:
        """Builds and samples in well under a second (tests)."""
        return cls(grid=(4, 4), vocab_size=8, dim=32, upper_depth=1, row_depth=1, heads=2)


@register("generator", "axial", AxialConfig)
class AxialARGenerator(Generator):
    def __init__(self, config: AxialConfig) -> None:
        super().__init__()
        self.config = config
        self.build_conditioner(config.dim)
        D = config.dim
        self.token_emb = nn.Embedding(config.vocab_size, D)
        self.bos = nn.Parameter(torch.zeros(D))  # shift_right's filler: the input of column 0
        self.pos = GridPositionEmbedding(config.grid, D)
        self.upper = AxialStack(D, config.heads, [("row", False), ("column", True)] * config.upper_depth,
                                config.mlp_ratio, self.context_dim)
        self.rows = AxialStack(D, config.heads, [("row", True)] * config.row_depth, config.mlp_ratio,
                               self.context_dim)
        self.head = CodeHead(D, config.vocab_size)
        # residual projections start small (the paper starts them near zero), scaled by the
        # number of residual blocks on the longest path
        init_transformer_weights(self.upper, 2 * config.upper_depth + config.row_depth)
        init_transformer_weights(self.rows, 2 * config.upper_depth + config.row_depth)
        nn.init.normal_(self.token_emb.weight, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"bos"}

    def _where(self, context: Context | None) -> Tensor:
        """What each position knows before any code: its position plus the condition's map there,
        [H, W, D] or [B, H, W, D]."""
        H, W = self.config.grid
        where = self.pos().view(H, W, -1)
        spatial = self.spatial_inputs(context)
        return where if spatial is None else where + spatial.view(-1, H, W, where.shape[-1])

    @staticmethod
    def _cross(context: Context | None) -> dict:
        return {} if context is None else {"context": context.tokens, "context_mask": context.mask}

    def logits(self, codes: Tensor, context: Context | None) -> Tensor:
        """Teacher-forced logits for codes [B, H, W] -> [B, H, W, V]."""
        B, H, _ = codes.shape
        emb = self.token_emb(codes)                                          # [B, H, W, D]
        where = self._where(context)
        # the last row's upper output would only be the context of a row H, so it is not computed
        u = torch.zeros_like(emb)                                            # row 0 has nothing above
        if H > 1:
            upper = self.upper(emb[:, :-1] + where[..., :-1, :, :], **self._cross(context))  # [B, H-1, W, D]
            u = F.pad(upper, (0, 0, 0, 0, 1, 0))                             # shift_down: [B, H, W, D]
        left = torch.cat([self.bos.expand(B, H, 1, -1), emb[:, :, :-1]], dim=2)  # shift_right
        h = self.rows(left + u + where, **self._cross(context))
        return self.head(h)

    def loss(self, z: Tensor, context: Context | None = None) -> dict[str, Tensor]:
        codes = self.flat_codes(z).view_as(z)  # checked, kept as [B, H, W]
        logits = self.logits(codes, self.drop_condition(context))
        return self.code_loss(code_nll(logits, codes), context)

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, use_cache: bool = True) -> Tensor:
        """Code grids [n, H, W] in raster order.

        Args:
            temperature, top_k, top_p: how each token is drawn (see sampling.sample_tokens).
            use_cache: True decodes semi-parallel with KV caches; False recomputes the whole model
                for every token. Both draw the same tokens for the same generator state.
        """
        g, n, ctx = guidance, guidance.n, guidance.context
        H, W = self.config.grid
        where = self._where(ctx).expand(g.rows, H, W, -1)                     # [rows, H, W, D]
        codes = torch.zeros(n, H, W, dtype=torch.long, device=where.device)
        draw = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator}

        # a guidance schedule's progress: the fraction of tokens drawn
        if not use_cache:  # every token recomputes the grid: an unguided step runs the cond rows alone
            for r in range(H):
                for c in range(W):
                    step = g.at(r * W + c + 1, H * W)
                    logits = step(lambda grid, r=r, c=c, step=step: self.logits(grid, step.context)[:, r, c],
                                  codes)  # [n, V]
                    codes[:, r, c] = sample_tokens(logits, **draw)
            return codes

        cross = {} if ctx is None else {"context_mask": ctx.mask}
        upper_kv = None if ctx is None else self.upper.context_kv(ctx.tokens)
        row_kv = None if ctx is None else self.rows.context_kv(ctx.tokens)
        column_caches = self.upper.new_caches(g.rows, (H, W), where, axis="column")
        u = torch.zeros_like(where[:, :1])                                    # row 0 has nothing above
        for r in range(H):
            row_caches = self.rows.new_caches(g.rows, (1, W), where, axis="row")
            x = self.bos + u[:, :, :1] + where[:, r : r + 1, :1]              # input of (r, 0): [rows, 1, 1, D]
            for c in range(W):
                h = self.rows(x, context_kv=row_kv, caches=row_caches, **cross)
                step = g.at(r * W + c + 1, H * W, keep_rows=True)                 # the caches need every row
                codes[:, r, c] = sample_tokens(step.mix(self.head(h[:, 0, 0])), **draw)  # from [n, V]
                if c + 1 < W:
                    emb = g.rows_of(self.token_emb(codes[:, r, c]))[:, None, None]
                    x = emb + u[:, :, c + 1 : c + 2] + where[:, r : r + 1, c + 1 : c + 2]
            if r + 1 < H:
                # the finished row enters the upper stack; its output is the next row's context
                emb = g.rows_of(self.token_emb(codes[:, r : r + 1]))          # [rows, 1, W, D]
                u = self.upper(emb + where[:, r : r + 1], context_kv=upper_kv, caches=column_caches, **cross)
        return codes
