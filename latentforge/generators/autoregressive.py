"""Autoregressive transformer over discrete latent codes (P1's image GPT, P13-style raster AR).

Legend: B batch, N = prod(grid) tokens, D width, V vocabulary (codebook size).
Input  = [BOS, code_0, ..., code_{N-2}] embedded + grid position of the token being predicted
Output = logits for code_0 ... code_{N-1}                                      [B, N, V]
Blocks are causal self-attention + cross-attention to the condition + MLP. Sampling decodes one
token per step with a KV cache; cross-attention keys/values of the context are computed once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.sampling import guide, sample_tokens
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register


@dataclass
class ARConfig(GeneratorConfig):
    name: str = "autoregressive"
    vocab_size: int = 512
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0


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
        self.transformer = Transformer(D, config.depth, config.heads, config.mlp_ratio, context_dim=self.context_dim)
        self.head = nn.Linear(D, config.vocab_size)
        init_transformer_weights(self.transformer, config.depth)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.zeros_(self.head.weight)  # uniform start: initial loss = log V
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return {"bos"}

    def _flatten(self, z: Tensor) -> Tensor:
        grid = tuple(self.config.grid)
        if z.dtype != torch.long or tuple(z.shape[1:]) != grid:
            raise ValueError(f"expected int64 codes [B, {', '.join(map(str, grid))}], got {z.dtype} {list(z.shape)}")
        return z.reshape(z.shape[0], -1)  # raster order [B, N]

    def logits(self, codes: Tensor, context: Context | None) -> Tensor:
        """Teacher-forced logits for codes [B, N] (flattened) -> [B, N, V]."""
        B, N = codes.shape
        x = torch.cat([self.bos.expand(B, 1, -1), self.token_emb(codes[:, :-1])], dim=1)
        x = x + self.pos()[:N]
        spatial = self.spatial_inputs(context)
        if spatial is not None:
            x = x + spatial[:, :N]  # the condition's map of the token being predicted
        h = self.transformer(x, causal=True, context=None if context is None else context.tokens,
                             context_mask=None if context is None else context.mask)
        return self.head(h)

    def loss(self, z: Tensor, context: Context | None = None) -> dict[str, Tensor]:
        codes = self._flatten(z)
        logits = self.logits(codes, self.drop_condition(context))
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1))
        return self.add_condition_losses({"loss": nll, "bits_per_token": nll.detach() / math.log(2)}, context)

    @torch.no_grad()
    def sample(self, n: int, context: Context | None = None, *, generator: torch.Generator | None = None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               cfg_scale: float = 1.0, use_cache: bool = True) -> Tensor:
        """Draw n code grids [n, *grid]. With cfg_scale != 1 the batch runs [cond; uncond]."""
        if self.conditioner is not None and context is None:
            raise ValueError("this generator is conditional: pass a context (see encode_condition)")
        if context is not None and len(context) != n:
            raise ValueError(f"context has {len(context)} rows for n={n} samples")
        ctx = self.guidance_context(context, cfg_scale)
        rows = n if ctx is None else len(ctx)
        N = self.config.num_tokens
        pos = self.pos()
        spatial = self.spatial_inputs(ctx)
        if spatial is not None:
            pos = pos + spatial  # per-row inputs [rows, N, D] from here on
        codes = torch.zeros(n, N, dtype=torch.long, device=pos.device)
        ctx_kv = None if ctx is None else self.transformer.context_kv(ctx.tokens)
        ctx_mask = None if ctx is None else ctx.mask
        caches = self.transformer.new_caches(rows, N, pos) if use_cache else None
        x = self.bos.expand(rows, 1, -1) + pos[..., :1, :]  # input of step 0, [rows, 1, D]
        for i in range(N):
            if use_cache:
                h = self.transformer(x, causal=True, context_kv=ctx_kv, context_mask=ctx_mask, caches=caches)
            else:
                prefix = torch.cat([self.bos.expand(rows, 1, -1),
                                    self.token_emb(codes[:, :i].repeat(rows // n, 1))], dim=1) + pos[..., : i + 1, :]
                h = self.transformer(prefix, causal=True, context_kv=ctx_kv, context_mask=ctx_mask)
            logits = guide(self.head(h[:, -1]).float(), cfg_scale)  # [n, V]
            codes[:, i] = sample_tokens(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                        generator=generator)
            if i + 1 < N:
                x = self.token_emb(codes[:, i]).repeat(rows // n, 1)[:, None] + pos[..., i + 1 : i + 2, :]
        return codes.view(n, *self.config.grid)
