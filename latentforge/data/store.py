"""A run's stored splits: `data/<split>/<entry>.npy`, one memory-mappable array per entry.

Written piece by piece (`write_split`): each numeric entry goes straight into a memory-mapped
.npy of the split's full length, so a split (a video set, say) never has to fit in memory;
text entries (graphs, captions) are small and kept until the end. Every file appears under its
final name only when complete (temporary name + rename). Read back (`load_split`), a stage
touches only the rows it indexes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from latentforge.atomic import atomic_path, write_npy


def cache_root() -> Path:
    """Where data, probes and renders built once are kept: $LATENTFORGE_CACHE or ~/.cache/latentforge."""
    return Path(os.environ.get("LATENTFORGE_CACHE") or Path.home() / ".cache" / "latentforge")


def write_split(folder: str | os.PathLike, pieces: Iterable[dict[str, np.ndarray]], total: int,
                check: Callable[[dict[str, np.ndarray]], None] | None = None, progress: bool = False,
                desc: str = "data") -> None:
    """Store consecutive pieces of a split of `total` rows into `folder` (one .npy per entry).

    Every piece must hold the same entries, each with `len(piece)` rows and, for numeric entries,
    the same dtype and row shape as the first piece; `check` sees each piece before it is stored.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    numeric: dict[str, np.memmap] = {}
    text: dict[str, list[np.ndarray]] = {}
    files = []  # (context manager, temporary path) of each numeric entry, renamed at the end
    done = 0
    bar = tqdm(total=total, desc=desc, unit="row", disable=not progress, mininterval=1.0)
    try:
        for piece in pieces:
            rows = {len(v) for v in piece.values()}
            if len(rows) != 1:
                raise ValueError(f"{folder}: a piece's entries differ in length: "
                                 f"{ {k: len(v) for k, v in piece.items()} }")
            n = rows.pop()
            if done + n > total:
                raise ValueError(f"{folder}: pieces hold more than the {total} rows announced")
            if check is not None:
                check(piece)
            if not numeric and not text:  # the first piece fixes the entries and their layout
                for key, value in piece.items():
                    if value.dtype.kind in "USO":
                        text[key] = []
                        continue
                    ctx = atomic_path(folder / f"{key}.npy")
                    tmp = ctx.__enter__()
                    files.append((ctx, tmp))
                    numeric[key] = np.lib.format.open_memmap(tmp, mode="w+", dtype=value.dtype,
                                                             shape=(total, *value.shape[1:]))
            if set(piece) != set(numeric) | set(text):
                raise ValueError(f"{folder}: a piece has entries {sorted(piece)}, "
                                 f"the first had {sorted(set(numeric) | set(text))}")
            for key, value in piece.items():
                if key in text:
                    text[key].append(np.asarray(value))
                    continue
                out = numeric[key]
                if value.dtype != out.dtype or value.shape[1:] != out.shape[1:]:
                    raise ValueError(f"{folder}: entry {key!r} is {value.dtype} {list(value.shape[1:])} per row in "
                                     f"this piece, {out.dtype} {list(out.shape[1:])} in the first")
                out[done:done + n] = value
            done += n
            bar.update(n)
        if done != total:
            raise ValueError(f"{folder}: pieces hold {done} rows, {total} were announced")
        for out in numeric.values():
            out.flush()
        numeric.clear()  # close the maps before the files are renamed
        for ctx, _ in files:
            ctx.__exit__(None, None, None)
        files.clear()
        for key, parts in text.items():
            write_npy(folder / f"{key}.npy", np.concatenate(parts))
    finally:
        bar.close()
        numeric.clear()
        for ctx, _ in files:  # an error: the temporary files go, nothing half-written stays
            ctx.__exit__(RuntimeError, RuntimeError("write_split failed"), None)


def load_split(run_dir: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """A stored split, one memory-mapped array per entry (`data/<split>/<entry>.npy`): a stage
    reads the rows it indexes, never the whole split. Runs stored before this layout kept each
    split in one `data/<split>.npz`, read whole."""
    folder = Path(run_dir) / "data" / split
    if folder.is_dir():
        return {p.stem: np.load(p, mmap_mode="r", allow_pickle=False) for p in sorted(folder.glob("*.npy"))}
    legacy = folder.with_suffix(".npz")
    if not legacy.is_file():
        raise FileNotFoundError(f"{folder} is missing: run the data stage first")
    with np.load(legacy, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
