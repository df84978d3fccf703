"""P2 ATVC: accountable textual-visual chat as one autoregressive stream.

A decoder-only transformer reads and writes one causal sequence of four segments

    [ T instruction words | V input-image codes | M re-created image codes | A answer words ]
      0 .. Lt-1             Lt .. Lt+N-1          Lt+N .. Lt+2N-1           Lt+2N .. Lt+2N+La-1

(N = h * w image codes from a discrete tokenizer, e.g. the Gumbel dVAE). As in DALLE-pytorch, text
and image tokens have separate embeddings and separate position tables: one learned table over the
Lt + La text slots, and a factorised (segment, row, column) table over both images, so V and M share
the grid's rows and columns and differ by a segment vector. Each modality has its own output head:
the image head (K codes) predicts M, the text head (word ids) predicts A; T and V are only read.

Accountability: an instruction the rules refuse has no target image, so the image loss over M is
masked out for it (`mask_rejected_image_loss`) and only the answer ("no, because ...") is learnt. The
M segment of a refused example still needs tokens for teacher forcing: the caller's `target_codes`
fill it (the paper does not say with what). Filling it with the input's codes lets the answer read
the verdict off M ("unchanged -> no"), which the model's own M never shows at inference; filling it
with the image the instruction would have made anyway (data/shapes_edit.counterfactual_target)
removes that shortcut. With the mask off (the paper's ablation) the filler becomes M's target.

Loss = CE(A) + image_loss_weight * CE(M), each a mean over its own tokens (A's padding included:
predicting padding is how an answer ends). Decoding (`generate`) runs M then A, greedy or sampled,
with the shared Transformer's KV cache.

Shapes: B batch, Lt / La instruction / answer slots, N image codes, K codebook size, W word ids, D width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.generators.sampling import sample_tokens
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import Transformer, init_transformer_weights


@dataclass
class ATVCConfig:
    text_vocab: int                          # word ids, padding (0) and unknown (1) included
    codebook_size: int                       # K image codes
    image_grid: tuple[int, int] = (8, 8)     # (h, w) codes per image
    instruction_len: int = 12                # Lt word slots
    answer_len: int = 12                     # La word slots
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    image_loss_weight: float = 1.0
    mask_rejected_image_loss: bool = True    # False: the ablation (M is learnt on refusals too)

    def __post_init__(self) -> None:
        if self.text_vocab < 2 or self.codebook_size < 2:
            raise ValueError(f"need >= 2 word ids and codes, got {self.text_vocab} and {self.codebook_size}")
        if self.instruction_len < 1 or self.answer_len < 1:
            raise ValueError(f"instruction_len and answer_len must be >= 1, got {self.instruction_len}, "
                             f"{self.answer_len}")
        if self.image_loss_weight < 0:
            raise ValueError(f"image_loss_weight must be >= 0, got {self.image_loss_weight}")

    @property
    def image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    @classmethod
    def tiny(cls) -> "ATVCConfig":
        """Builds and runs in milliseconds (tests)."""
        return cls(text_vocab=12, codebook_size=8, image_grid=(2, 2), instruction_len=3, answer_len=2,
                   dim=32, depth=2, heads=2)


class ATVC(nn.Module):
    """The one-stream model: `loss` for training, `generate` to re-create the image and answer."""

    def __init__(self, config: ATVCConfig) -> None:
        super().__init__()
        self.config = config
        D, (h, w) = config.dim, config.image_grid
        self.text_embed = nn.Embedding(config.text_vocab, D)
        self.image_embed = nn.Embedding(config.codebook_size, D)
        # text slots: T's Lt positions, then A's La positions
        self.text_pos = nn.Parameter(torch.randn(config.instruction_len + config.answer_len, D) * 0.02)
        self.image_pos = GridPositionEmbedding((2, h, w), D)  # axis 0: V (0) or M (1)
        self.transformer = Transformer(D, config.depth, config.heads, config.mlp_ratio)
        self.image_head = nn.Linear(D, config.codebook_size)
        self.text_head = nn.Linear(D, config.text_vocab)
        init_transformer_weights(self.transformer, config.depth)
        for table in (self.text_embed, self.image_embed):
            nn.init.normal_(table.weight, std=0.02)

    # --- layout ---------------------------------------------------------------------------------

    def segments(self) -> dict[str, slice]:
        """Where each segment sits in the stream."""
        Lt, N, La = self.config.instruction_len, self.config.image_tokens, self.config.answer_len
        return {"T": slice(0, Lt), "V": slice(Lt, Lt + N), "M": slice(Lt + N, Lt + 2 * N),
                "A": slice(Lt + 2 * N, Lt + 2 * N + La)}

    @property
    def length(self) -> int:
        return self.segments()["A"].stop

    def embed_text(self, ids: Tensor, slot: int) -> Tensor:
        """Word ids [B, L] at text slots slot .. slot+L-1 (A's first slot is Lt) -> [B, L, D]."""
        return self.text_embed(ids) + self.text_pos[slot:slot + ids.shape[1]]

    def embed_image(self, codes: Tensor, segment: int, start: int = 0) -> Tensor:
        """Codes [B, L] of image `segment` (0: V, 1: M) at raster positions start.. -> [B, L, D]."""
        N = self.config.image_tokens
        rows = segment * N + start
        return self.image_embed(codes) + self.image_pos()[rows:rows + codes.shape[1]]

    def embed(self, instruction: Tensor, input_codes: Tensor, recreated_codes: Tensor, answer: Tensor) -> Tensor:
        """The whole stream: [B, Lt], [B, N], [B, N], [B, La] -> [B, Lt + 2N + La, D]."""
        return torch.cat([self.embed_text(instruction, 0), self.embed_image(input_codes, 0),
                          self.embed_image(recreated_codes, 1),
                          self.embed_text(answer, self.config.instruction_len)], dim=1)

    def _check(self, instruction: Tensor, input_codes: Tensor) -> None:
        cfg = self.config
        if instruction.dim() != 2 or instruction.shape[1] != cfg.instruction_len:
            raise ValueError(f"instruction must be [B, {cfg.instruction_len}] word ids, got {list(instruction.shape)}")
        if input_codes.shape != (instruction.shape[0], cfg.image_tokens):
            raise ValueError(f"input codes must be [B, {cfg.image_tokens}] (raster order), got "
                             f"{list(input_codes.shape)}")

    # --- training -------------------------------------------------------------------------------

    def logits(self, instruction: Tensor, input_codes: Tensor, recreated_codes: Tensor,
               answer: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced predictions: image logits [B, N, K] for M, text logits [B, La, W] for A.
        Position p predicts token p + 1, so M is read from V's last slot on, A from M's last."""
        self._check(instruction, input_codes)
        seg = self.segments()
        h = self.transformer(self.embed(instruction, input_codes, recreated_codes, answer), causal=True)  # [B, L, D]
        image = self.image_head(h[:, seg["M"].start - 1:seg["M"].stop - 1])  # [B, N, K]
        text = self.text_head(h[:, seg["A"].start - 1:seg["A"].stop - 1])    # [B, La, W]
        return image, text

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch: instruction [B, Lt], input_codes [B, N], target_codes [B, N] (a filler on refusals:
        read, and learnt only with the mask off), answer [B, La], accepted [B] bool -> 'loss', its terms and answer accuracy."""
        accepted = batch["accepted"].bool()
        target, answer = batch["target_codes"], batch["answer"]
        image_logits, text_logits = self.logits(batch["instruction"], batch["input_codes"], target, answer)
        text_loss = F.cross_entropy(text_logits.flatten(0, 1).float(), answer.flatten())
        image_ce = F.cross_entropy(image_logits.flatten(0, 1).float(), target.flatten(),
                                   reduction="none").view_as(target)  # [B, N]
        weight = torch.ones_like(image_ce)
        if self.config.mask_rejected_image_loss:
            # refusals have no target image: their M tokens add nothing, not even a zero-weighted mean term
            weight = weight * accepted[:, None].to(image_ce.dtype)
        image_loss = (image_ce * weight).sum() / weight.sum().clamp_min(1.0)
        loss = text_loss + self.config.image_loss_weight * image_loss
        with torch.no_grad():
            answer_acc = (text_logits.argmax(-1) == answer).all(1).float().mean()
        return {"loss": loss, "text_loss": text_loss.detach(), "image_loss": image_loss.detach(),
                "answer_exact": answer_acc}

    # --- decoding -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, instruction: Tensor, input_codes: Tensor, *, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Re-create the image, then answer: -> M codes [B, N], answer word ids [B, La].

        temperature 0 is greedy (the answer is always decoded greedily: it is a verdict, not a
        sample). One pass over [T | V] fills the KV cache; every later token costs one step.
        """
        self._check(instruction, input_codes)
        cfg = self.config
        B, N, Lt = instruction.shape[0], cfg.image_tokens, cfg.instruction_len
        caches = self.transformer.new_caches(B, self.length, self.image_pos.tables[0])
        prefix = torch.cat([self.embed_text(instruction, 0), self.embed_image(input_codes, 0)], dim=1)
        h = self.transformer(prefix, causal=True, caches=caches)[:, -1]  # [B, D]
        codes = input_codes.new_zeros(B, N)
        for j in range(N):
            codes[:, j] = sample_tokens(self.image_head(h), temperature=temperature, top_k=top_k, generator=generator)
            h = self.transformer(self.embed_image(codes[:, j:j + 1], 1, j), causal=True, caches=caches)[:, -1]
        words = instruction.new_zeros(B, cfg.answer_len)
        for j in range(cfg.answer_len):
            words[:, j] = self.text_head(h).argmax(-1)
            if j + 1 < cfg.answer_len:
                h = self.transformer(self.embed_text(words[:, j:j + 1], Lt + j), causal=True, caches=caches)[:, -1]
        return codes, words
