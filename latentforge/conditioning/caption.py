"""Caption conditioning: a word-level tokenizer and a small bidirectional transformer encoder.

Legend: B batch, L caption length in words (padded), D width, V = len(vocab) + 2 word ids.
Tokenizer: lowercase, split on anything that is not a letter; ids 0 = padding, 1 = unknown word,
2 + i = vocab[i]. The vocabulary is built from the training captions (`build_vocab`) and lives in
the config, so a saved generator reloads with the same word ids.
Encoder: word embedding + learned position embedding -> non-causal `Transformer` whose attention
skips padding (key mask) -> Context(tokens [B, L, D], mask [B, L]) for the generator to cross-attend.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register

PAD, UNK = 0, 1
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any alphabet): digits, punctuation, spaces split


def split_words(text: str) -> list[str]:
    """'The red circle, left of it!' -> ['the', 'red', 'circle', 'left', 'of', 'it']"""
    return _WORD.findall(text.lower())


def build_vocab(captions: Iterable[str], min_count: int = 1) -> tuple[str, ...]:
    """The words seen at least min_count times, most frequent first (ties alphabetical) so that the
    ids do not depend on the order of the captions."""
    counts = Counter(w for caption in captions for w in split_words(caption))
    return tuple(sorted((w for w, k in counts.items() if k >= min_count), key=lambda w: (-counts[w], w)))


def encode_captions(captions: Sequence[str], vocab: Sequence[str], max_len: int) -> dict[str, Tensor]:
    """Word ids padded to max_len: caption_ids [B, max_len] int64, caption_mask [B, max_len] bool.

    The mask is True on real words. Words past max_len are dropped. An empty caption becomes one
    unknown word: attention needs at least one key per row.
    """
    index = {w: i + 2 for i, w in enumerate(vocab)}
    ids = torch.full((len(captions), max_len), PAD, dtype=torch.long)
    for row, caption in enumerate(captions):
        words = [index.get(w, UNK) for w in split_words(caption)][:max_len] or [UNK]
        ids[row, : len(words)] = torch.tensor(words)
    return {"caption_ids": ids, "caption_mask": ids != PAD}


@dataclass
class CaptionConfig(ConditionerConfig):
    name: str = "caption"
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    max_len: int = 64              # words per caption (shapes captions of <= 3 objects have <= 59)
    vocab: tuple[str, ...] = ()    # build_vocab(training captions); word ids are 2 + index

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        repeated = [w for w, k in Counter(self.vocab).items() if k > 1]
        if repeated:
            raise ValueError(f"vocab lists words more than once: {repeated[:5]}")

    @classmethod
    def tiny(cls) -> "CaptionConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(dim=16, depth=1, heads=2, max_len=8, vocab=("a", "red", "circle", "left", "of"))


@register("conditioner", "caption", CaptionConfig)
class CaptionConditioner(Conditioner):
    keys = ("caption_ids", "caption_mask")

    def __init__(self, config: CaptionConfig) -> None:
        super().__init__(config)
        D = config.dim
        self.word = nn.Embedding(len(config.vocab) + 2, D)
        self.pos = GridPositionEmbedding((config.max_len,), D)
        self.encoder = Transformer(D, config.depth, config.heads, config.mlp_ratio)
        init_transformer_weights(self.encoder, config.depth)
        nn.init.normal_(self.word.weight, std=0.02)

    def tokenize(self, captions: Sequence[str]) -> dict[str, Tensor]:
        """Captions -> the batch entries this conditioner reads, with its own vocabulary."""
        return encode_captions(captions, self.config.vocab, self.config.max_len)

    def forward(self, cond: dict[str, Tensor], generator: torch.Generator | None = None) -> Context:
        ids, mask = cond["caption_ids"].long(), cond["caption_mask"].bool()  # [B, L]
        L = ids.shape[1]
        if mask.shape != ids.shape:
            raise ValueError(f"caption_mask {list(mask.shape)} does not match caption_ids {list(ids.shape)}")
        if L > self.config.max_len:
            raise ValueError(f"captions have {L} word slots, more than max_len={self.config.max_len}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.word.num_embeddings):
            raise ValueError(f"caption ids must be in [0, {self.word.num_embeddings}) for a vocabulary of "
                             f"{len(self.config.vocab)} words, got {ids.min()}..{ids.max()}")
        if not mask.any(1).all():
            raise ValueError("every caption needs at least one word (caption_mask has an all-False row)")
        x = self.word(ids) + self.pos()[:L]  # [B, L, D]
        return Context(self.encoder(x, key_mask=mask), mask)
