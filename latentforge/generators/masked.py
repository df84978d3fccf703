"""Masked (non-autoregressive) generation over discrete codes: MaskGIT, and ENAT's encoder/decoder split.

Legend: B batch, N = prod(grid) tokens, D width, V vocabulary, K decoding steps, T visible tokens.

Training (MaskGIT; also P22 MotionAura's absorbing-state discrete diffusion): per example draw
u ~ U(0, 1), mask r = cos(pi/2 u) of the tokens (at least one), replace them by a learned [MASK]
embedding and predict them with a bidirectional transformer that cross-attends to the condition.
Input at position i = (code_i or [MASK]) embedding + grid position + condition map    [B, N, D]
Output = logits for every position; cross-entropy counts only the masked ones          [B, N, V]

Sampling: start from all [MASK] and decode in K steps. Each step samples every masked token
(temperature, top-k/top-p, classifier-free guidance through the run's `Guidance`), scores it by
confidence = log p(sampled) + Gumbel noise x choice_temperature x (1 - (k+1)/K) ("temperature
annealing"), keeps the most confident and re-masks the rest, so that about floor(N cos(pi/2 (k+1)/K))
stay masked after step k (`masking.masked_counts`, shared with MAR): few tokens early, when little
is known, many late. The head is a `CodeHead`; training masks come from `masking` too.

ENAT (P31, `enat=True`) splits the blocks:
  * the encoder (`depth` blocks) runs on the visible tokens only, gathered and padded to [B, T, D];
  * the decoder (`decoder_depth` blocks) runs self-attention over all N positions, where visible
    positions carry their projected encoder features and masked positions the [MASK] embedding
    (+ position). We pick full self-attention over the concatenation, rather than ENAT's masked-only
    queries, because it reuses the shared blocks as they are; it costs K N decoder tokens.
  * Exact reuse at sampling. The encoder is *step-ordered*: a token revealed at step s attends only
    to tokens revealed at steps <= s (during training, the visible tokens get simulated reveal steps
    drawn from the cosine schedule). Features of earlier tokens therefore never depend on later
    ones, so with `reuse=True` the sampler keeps the encoder's per-layer keys/values in a KV cache
    and encodes only the tokens revealed by the previous step: every token passes through the
    encoder at most once, and the result equals recomputing from scratch (`reuse=False`) up to
    float rounding. ENAT itself reuses approximately (projected stale features, trained by
    simulation with an EMA model); the step-order mask is our exact alternative. Guided and
    unguided rows keep separate caches because they are separate rows of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.guidance import Guidance, by_rows
from latentforge.generators.heads import CodeHead, code_nll
from latentforge.generators.masking import cosine_ratio, masked_counts, random_rank_mask
from latentforge.generators.sampling import sample_tokens
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register

# ----------------------------------------------------------------------------- helpers

def run_with_attention_mask(stack: Transformer, x: Tensor, allowed: Tensor, **cross) -> Tensor:
    """`stack(x, **cross)` with self-attention restricted by allowed [B, T, T] (True: query sees key).

    The shared `Attention` takes only a key padding mask [B, S]; this runs the same blocks and
    weights with a per-query mask. Every query row of `allowed` must have a True entry (SDPA gives
    NaN on an empty row). Shared building block: belongs in nn/ once Attention takes `attn_mask`.
    """
    kv = cross.pop("context_kv", None)
    for i, block in enumerate(stack.blocks):
        attn = block.attn
        q, k, v = (attn._split(t) for t in attn.qkv(block.norm1(x)).chunk(3, dim=-1))  # [B, H, T, Dh]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        x = x + attn.proj(out.transpose(1, 2).reshape(x.shape))
        if block.cross is not None:
            x = x + block.cross(block.cross_norm(x), key_mask=cross.get("context_mask"),
                                context=cross.get("context"), context_kv=None if kv is None else kv[i])
        x = x + block.mlp(block.norm2(x))
    return stack.norm(x)


def _cross_kwargs(stack: Transformer, context: Context | None, precompute: bool) -> dict:
    """Cross-attention arguments for a block stack; at sampling the context keys/values are computed once."""
    if context is None:
        return {}
    if precompute:
        return dict(context_kv=stack.context_kv(context.tokens), context_mask=context.mask)
    return dict(context=context.tokens, context_mask=context.mask)


# ----------------------------------------------------------------------------- model

@dataclass
class MaskedConfig(GeneratorConfig):
    name: str = "masked"
    vocab_size: int = 512
    dim: int = 256
    depth: int = 4             # blocks over all tokens (MaskGIT), or over the visible ones (ENAT's encoder)
    heads: int = 4
    mlp_ratio: float = 4.0
    enat: bool = False         # P31: encoder on visible tokens, small decoder on all positions, reuse
    decoder_depth: int = 2     # ENAT decoder blocks
    reveal_steps: int = 8      # ENAT training: reveal steps simulated for the encoder's step-order mask

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.enat and (self.decoder_depth < 1 or self.reveal_steps < 1):
            raise ValueError(f"enat needs decoder_depth >= 1 and reveal_steps >= 1, got {self.decoder_depth}, "
                             f"{self.reveal_steps}")

    @classmethod
    def tiny(cls) -> MaskedConfig:
        """Builds and samples in well under a second (tests); `enat=True` on it gives the ENAT variant."""
        return cls(grid=(4, 4), vocab_size=8, dim=32, depth=2, heads=2, decoder_depth=1)


@register("generator", "masked", MaskedConfig)
class MaskedGenerator(Generator):
    def __init__(self, config: MaskedConfig) -> None:
        super().__init__()
        self.config = config
        self.build_conditioner(config.dim)
        D = config.dim
        self.token_emb = nn.Embedding(config.vocab_size, D)
        self.mask_emb = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        self.pos = GridPositionEmbedding(config.grid, D)
        # MaskGIT: all tokens. ENAT: the visible-token encoder.
        self.transformer = Transformer(D, config.depth, config.heads, config.mlp_ratio, context_dim=self.context_dim)
        init_transformer_weights(self.transformer, config.depth)
        if config.enat:
            # encoder features live in another space than embeddings: project before the decoder
            self.bridge = nn.Linear(D, D)
            self.decoder = Transformer(D, config.decoder_depth, config.heads, config.mlp_ratio,
                                       context_dim=self.context_dim)
            init_transformer_weights(self.decoder, config.decoder_depth)
            nn.init.normal_(self.bridge.weight, std=0.02)
            nn.init.zeros_(self.bridge.bias)
        self.head = CodeHead(D, config.vocab_size)
        nn.init.normal_(self.token_emb.weight, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_emb"}

    def _base(self, context: Context | None) -> Tensor:
        """What every position adds to its input: grid position + the condition's map. [1 or B, N, D]"""
        base = self.pos()[None]
        spatial = self.spatial_inputs(context)
        return base if spatial is None else base + spatial

    # ------------------------------------------------------------------ forward passes

    def _maskgit_logits(self, codes: Tensor, masked: Tensor, base: Tensor, cross: dict) -> Tensor:
        x = torch.where(masked[..., None], self.mask_emb, self.token_emb(codes)) + base  # [B, N, D]
        return self.head(self.transformer(x, **cross))

    def encode_visible(self, codes: Tensor, visible: Tensor, reveal: Tensor, base: Tensor, cross: dict) -> Tensor:
        """ENAT encoder on the visible tokens only, step-ordered: a token sees the tokens revealed at
        the same or an earlier step (reveal [B, N] int). Returns features [B, N, D] (zero where masked)."""
        B, N = codes.shape
        D = self.config.dim
        T = int(visible.sum(1).max())
        out = base.new_zeros(B, N, D)
        if T == 0:
            return out  # nothing visible (first sampling step): the encoder is skipped
        order = torch.argsort((~visible).to(torch.uint8), dim=1, stable=True)[:, :T]  # visible first [B, T]
        valid = visible.gather(1, order)                                               # [B, T]
        index = order[..., None].expand(-1, -1, D)
        x = (self.token_emb(codes) + base).gather(1, index) * valid[..., None]          # padding zeroed [B, T, D]
        step = reveal.gather(1, order)
        allowed = valid[:, None, :] & (step[:, None, :] <= step[:, :, None])            # [B, T (query), T (key)]
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=codes.device)        # no empty row for padding
        h = run_with_attention_mask(self.transformer, x, allowed, **cross)
        # padding rows land on masked positions, which the decoder overwrites with [MASK]
        return out.scatter(1, index, h)

    def _decode(self, features: Tensor, masked: Tensor, base: Tensor, cross: dict) -> Tensor:
        x = torch.where(masked[..., None], self.mask_emb, self.bridge(features)) + base  # [B, N, D]
        return self.head(self.decoder(x, **cross))

    def logits(self, codes: Tensor, masked: Tensor, context: Context | None = None,
               reveal: Tensor | None = None) -> Tensor:
        """Logits [B, N, V] for codes [B, N] (flattened) with masked [B, N] bool hidden.

        reveal [B, N] (ENAT only): the step at which each visible token was revealed, for the
        encoder's step-order mask; drawn from the cosine schedule when None (training).
        """
        base = self._base(context)
        if not self.config.enat:
            return self._maskgit_logits(codes, masked, base, _cross_kwargs(self.transformer, context, False))
        if reveal is None:
            reveal = self._simulate_reveal(masked)
        features = self.encode_visible(codes, ~masked, reveal, base, _cross_kwargs(self.transformer, context, False))
        return self._decode(features, masked, base, _cross_kwargs(self.decoder, context, False))

    def _simulate_reveal(self, masked: Tensor) -> Tensor:
        """Reveal steps of the visible tokens as the sampler would have produced them.

        With mask ratio r = cos(pi/2 u) now, the fraction revealed by time t <= u is 1 - cos(pi/2 t),
        so reveal times have CDF (1 - cos(pi/2 t)) / (1 - r); invert it, then bin into reveal_steps.
        """
        r = masked.float().mean(1, keepdim=True)                              # [B, 1]
        w = torch.rand(masked.shape, device=masked.device)
        t = torch.acos((1 - w * (1 - r)).clamp(-1, 1)) * (2 / math.pi)       # [B, N] in [0, u]
        steps = self.config.reveal_steps
        return (t * steps).long().clamp_max(steps - 1)

    # ------------------------------------------------------------------ training

    def loss(self, z: Tensor, context: Context | None = None, *, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Masked-token cross-entropy. `mask` [B, *grid] bool (True = masked) overrides the random one."""
        codes = self.flat_codes(z)
        B, N = codes.shape
        masked = random_rank_mask(cosine_ratio(B, device=codes.device), N) if mask is None else mask.reshape(B, N).bool()
        logits = self.logits(codes, masked, self.drop_condition(context))
        return self.code_loss(code_nll(logits, codes, masked), context)

    # ------------------------------------------------------------------ sampling

    def _inpainting_start(self, known: Tensor | None, region: Tensor | None, n: int,
                          device: torch.device) -> tuple[Tensor, Tensor]:
        """Checked inpainting inputs -> the first step's codes and mask, [n, N] each."""
        grid = tuple(self.config.grid)
        if known is None or region is None:
            raise ValueError("inpainting needs both known codes and a region")
        if self.config.enat:
            raise ValueError("inpainting is implemented for MaskGIT decoding (enat: false)")
        if tuple(known.shape) != (n, *grid) or tuple(region.shape) != (n, *grid) or region.dtype != torch.bool:
            raise ValueError(f"known must be codes [{n}, {', '.join(map(str, grid))}] and region bool of the same shape; "
                             f"got {known.dtype} {list(known.shape)} and {region.dtype} {list(region.shape)}")
        region = region.reshape(n, -1).to(device)
        counts = region.sum(1)
        if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
            raise ValueError(f"every sample's region must hold the same number (> 0) of tokens, got {counts.tolist()}")
        codes = torch.where(region, 0, known.reshape(n, -1).to(device).long())
        return codes, region

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None, steps: int = 8,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             choice_temperature: float = 4.5, reuse: bool = True, known: Tensor | None = None,
             region: Tensor | None = None) -> Tensor:
        """Code grids [n, *grid] in `steps` parallel decoding steps.

        Args:
            temperature, top_k, top_p: how each masked token is drawn (see sampling.sample_tokens).
            choice_temperature: scale of the Gumbel noise on confidences, annealed linearly to 0.
            reuse: ENAT only; encode each token once and reuse its features (exact, see module doc).
            known, region: inpainting (P22): codes [n, *grid] kept outside `region` (bool [n, *grid],
                True where codes are drawn; as many per sample); decoding starts with the region masked
                and the rest visible. MaskGIT only (not ENAT).
        """
        g, n = guidance, guidance.n
        N, V = self.config.num_tokens, self.config.vocab_size
        # per row layout (a guidance schedule's unguided steps run the cond rows alone): position + map, cross kv
        prepared = by_rows(lambda ctx: (self._base(ctx), _cross_kwargs(self.transformer, ctx, True),
                                        _cross_kwargs(self.decoder, ctx, True) if self.config.enat else {}))
        base, enc_cross, dec_cross = prepared(g)
        device = base.device
        codes = torch.zeros(n, N, dtype=torch.long, device=device)
        masked = torch.ones(n, N, dtype=torch.bool, device=device)
        if known is not None or region is not None:
            codes, masked = self._inpainting_start(known, region, n, device)
        reveal = torch.zeros(n, N, dtype=torch.long, device=device)
        incremental = self.config.enat and reuse
        if incremental:
            caches = self.transformer.new_caches(g.rows, N, base)
            features = base.new_zeros(g.rows, N, self.config.dim)
            newly = torch.zeros_like(masked)

        def logits_of(codes: Tensor, masked: Tensor, reveal: Tensor) -> Tensor:
            """Every row's logits [rows, N, V] from per-row codes, mask and reveal steps; the ENAT
            cache also reads `newly`, what the previous step revealed."""
            nonlocal features
            if incremental:
                if newly.any():  # encode only what the previous step revealed, against the cached earlier tokens
                    idx = g.rows_of(newly.nonzero()[:, 1].view(n, -1))                  # [rows, c]
                    index = idx[..., None].expand(-1, -1, self.config.dim)
                    x = (self.token_emb(codes) + base).gather(1, index)                 # [rows, c, D]
                    features = features.scatter(1, index, self.transformer(x, caches=caches, **enc_cross))
                return self._decode(features, masked, base, dec_cross)
            if self.config.enat:
                return self._decode(self.encode_visible(codes, ~masked, reveal, base, enc_cross), masked, base, dec_cross)
            return self._maskgit_logits(codes, masked, base, enc_cross)

        total = int(masked[0].sum())
        for k, remaining in enumerate(masked_counts(total, steps)):
            if remaining == int(masked[0].sum()):
                continue  # more steps than tokens: this one reveals nothing (every sample has the same count)
            # progress: the fraction of tokens drawn once this step is done; ENAT's cache holds every row
            step = g.at(total - remaining, total, keep_rows=incremental)
            base, enc_cross, dec_cross = prepared(step)  # what logits_of reads
            logits = step(logits_of, codes, masked, reveal)                              # [n, N, V]
            sampled = sample_tokens(logits.reshape(n * N, V), temperature=temperature, top_k=top_k, top_p=top_p,
                                    generator=generator).view(n, N)
            logp = logits.log_softmax(-1).gather(-1, sampled[..., None]).squeeze(-1)    # [n, N]
            u = torch.rand(n, N, generator=generator, device=device).clamp_min(1e-20)
            anneal = choice_temperature * (1 - (k + 1) / steps)
            confidence = (logp - anneal * torch.log(-torch.log(u))).masked_fill(~masked, math.inf)
            # the `remaining` least confident stay masked; visible tokens (+inf) are never re-masked
            still = torch.zeros_like(masked).scatter(1, confidence.argsort(1)[:, :remaining], True)
            newly = masked & ~still
            codes = torch.where(newly, sampled, codes)
            reveal = torch.where(newly, k, reveal)
            masked = still
        return codes.view(n, *self.config.grid)
