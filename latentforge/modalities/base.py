"""The modality contract: what one kind of data looks like to the rest of the library.

A data set stores its examples as NumPy arrays under the modality's `key` (images: uint8
[N, H, W, 3]; motion: float32 joint positions [N, T, J, 3]). Everything above the data layer
(the recipe stages, the pipeline, evaluation, the report, the CLI) goes through a `Modality`
to turn those arrays into model tensors and back, to draw previews a person looks at, and to
score reconstructions; none of it branches on the kind of data.

    modality = dataset.modality
    x = modality.to_model(arrays[modality.key])        # what the tokenizer reads
    arrays = modality.from_model(tokenizer.decode(z))  # back to the stored layout
    files = modality.preview(samples, captions, run_dir / "samples", title="...")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import Tensor


class Modality:
    name: ClassVar[str]               # "image", "motion", ...
    key: ClassVar[str]                # the split's array holding the examples, and the tokenizer's batch key
    noun: ClassVar[str]               # plural, for messages and the report: "images", "clips"
    layout: ClassVar[str]             # what a tokenizer must read: "image" (2D grids), "sequence" (1D)

    def to_model(self, array: np.ndarray | Tensor) -> Tensor:
        """Stored examples -> the float tensor a tokenizer reads."""
        raise NotImplementedError

    def from_model(self, x: Tensor) -> np.ndarray:
        """A tokenizer's output -> stored examples (the layout `to_model` reads)."""
        raise NotImplementedError

    @property
    def inference_batch(self) -> int:
        """Examples per batch when a tokenizer encodes or decodes without gradients (encoding a
        split, evaluation, decoding samples): large for small examples, small for clips."""
        return 500

    def tokenizer_fields(self) -> dict[str, Any]:
        """The tokenizer config fields that follow from the data (image side, sequence length...)."""
        return {}

    @property
    def seconds(self) -> float | None:
        """How long one example lasts when played (clips), None for timeless examples (images): the
        sampling speed then reads as a real-time factor too."""
        return None

    def check(self, array: np.ndarray, where: str) -> None:
        """Raise a ValueError naming `where` when `array` is not this modality's stored layout."""
        raise NotImplementedError

    def preview(self, samples: np.ndarray, captions: list[str] | None, path: Path, title: str) -> list[str]:
        """Write files a person looks at for `samples` (stored layout) beside `path` (a stem: the
        modality adds suffixes); return their names relative to path's folder, in display order."""
        raise NotImplementedError

    def preview_pairs(self, real: np.ndarray, recon: np.ndarray, path: Path, title: str) -> list[str]:
        """Data above its reconstruction, as `preview` writes them."""
        raise NotImplementedError

    def recon_metrics(self, real: np.ndarray, recon: np.ndarray) -> dict[str, Any]:
        """How close reconstructions are to the data (both in stored layout)."""
        raise NotImplementedError

    def baselines(self, train: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
        """Trivial 'models' beside the real one in the distribution metrics: name -> n examples.
        Every modality has "train copies" (a model that memorised its data)."""
        raise NotImplementedError

    def sample_set_metrics(self, fake: np.ndarray, real: np.ndarray) -> dict[str, float]:
        """Distribution metrics of a generated set against real examples computed in the data's own
        space (no features), beside the feature-based FID/KID; none by default."""
        return {}

    def flat(self, array: np.ndarray) -> np.ndarray:
        """float32 [N, D] rows in comparable units, for nearest-neighbour and diversity distances."""
        return np.asarray(array, dtype=np.float32).reshape(len(array), -1)


def train_copies(train: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n distinct training examples (all of them, repeated, when there are fewer than n)."""
    rng = np.random.default_rng(seed)
    return train[np.resize(rng.permutation(len(train)), n)]
