"""Your own images: any folder of PNG / JPEG / WebP / BMP files as a data set (`data.name: imagefolder`).

    latentforge run configs/imagefolder.yaml data.path=DIR [data.size=64]

* Files are found recursively (extensions in any case). Classes come from the first-level
  subfolder names when every image sits in one of at least two such subfolders (class-conditional
  generation); otherwise the set is unlabelled. A caption is read from a sidecar `NAME.txt`
  beside `NAME.png` when there is one.
* Each image is read as follows:
  1. Its EXIF orientation is applied.
  2. It is converted to RGB. Grey levels are copied to the three channels, and 16-bit or float
     grey is scaled to 0–255. A palette is expanded. Transparency (RGBA, LA, a palette with a
     transparent index) is composited onto white. CMYK goes through PIL's conversion.
  3. `fit: crop` scales the shorter side to `size` and cuts the centre square; `fit: pad` scales
     the longer side to `size` and centres the image on black.
  Resampling is Lanczos.
* Decoding happens once. The decoded images go to a memory-mapped `.npy` in the run's `data/`
  folder, with a JSON index beside it, keyed by the file list, sizes and modification times and
  by the size and fit. Later stages and later runs read that; a changed folder makes a new key.
* A file that does not decode (truncated, or not an image whatever its extension) is skipped and
  counted, and the list goes to `runs/<name>/skipped.txt`. `strict: true` stops instead, naming
  the first bad file. An empty folder, or fewer than 2 good images, stops before any training.
* The train/val split is a permutation of the good files drawn from `seed`, and the rows keep that
  order, so the first val rows mix the classes. The split is written to `data/split.json` in the
  run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from latentforge.atomic import atomic_path, write_json, write_text
from latentforge.config import ConfigError
from latentforge.data.base import DataConfig, DataSet, check_split
from latentforge.registry import register

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHE_VERSION = 1


@dataclass
class ImageFolderConfig(DataConfig):
    name: str = "imagefolder"
    path: str = ""                              # the folder (searched recursively)
    size: int = 32
    fit: Literal["crop", "pad"] = "crop"
    labels: Literal["auto", "none"] = "auto"    # auto: classes from first-level subfolders
    val_fraction: float = 0.1
    strict: bool = False                        # stop at the first file that does not decode

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @classmethod
    def tiny(cls) -> "ImageFolderConfig":
        """scikit-image's own sample photographs (the `data` extra), 16 pixels a side: a real
        folder of PNG/JPEG files of mixed modes and sizes for the registry's contract tests. The
        package's own folder: `skimage.data.data_dir` is a download cache that exists only once
        something has asked for a photo."""
        import skimage.data

        return cls(path=str(Path(skimage.data.__file__).parent), size=16, labels="none")


def find_files(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Files under root with one of the extensions (any case), recursively, sorted by relative path
    (hidden files and folders left out)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in files if not f.startswith(".") and f.lower().endswith(extensions)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def find_images(root: Path) -> list[Path]:
    """Image files under root (`find_files` with the image extensions)."""
    return find_files(root, EXTENSIONS)


def to_rgb(image):
    """A PIL image of any mode -> RGB, by the rule in the module docstring."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
        image = Image.fromarray(np.clip(grey / top * 255.0, 0, 255).round().astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image, size: int, fit: str) -> np.ndarray:
    """RGB PIL image -> uint8 [size, size, 3], centre-cropped or padded."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h) if fit == "crop" else size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = image.resize(new, Image.Resampling.LANCZOS)
    if fit == "crop":
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(image, ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def decode(path: Path, size: int, fit: str) -> np.ndarray:
    """One file -> uint8 [size, size, 3]; raises on anything that is not a whole image."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # a truncated file fails here, not later
        return fit_square(to_rgb(image), size, fit)


class FolderData(DataSet):
    """A folder of a user's files (images here, audio in data/audio_folder.py): finding them, classes
    from subfolders, sidecar captions, decoding once into a keyed memory-mapped cache, skipping and
    listing bad files, the seeded train/val split. `run_dir` (set by the recipe) holds the decode
    cache and skipped.txt. Subclasses name their extensions and nouns and decode one file."""

    extensions: ClassVar[tuple[str, ...]]
    noun: ClassVar[str]                   # "image": messages say "image(s)", "images"
    nouns: ClassVar[str | None] = None    # the plural, when it is not noun + "s"

    @property
    def plural(self) -> str:
        return self.nouns or f"{self.noun}s"
    example = "~/my_images"               # a folder in the error that asks for one
    condition_text = "Each sample is drawn for the class in its caption."

    def decode_file(self, path: Path) -> np.ndarray:
        """One file -> one example in the modality's stored layout; raises on a bad file."""
        raise NotImplementedError

    def decode_fields(self) -> dict:
        """The config fields that change what a file decodes to (part of the cache key)."""
        raise NotImplementedError

    def decode_notes(self) -> dict:
        """Entries for the cache's index that the decoding gathered, asked for once the files are
        decoded (audio: the files it resampled); none here."""
        return {}

    def __init__(self, config) -> None:
        super().__init__(config)
        if not config.path:
            raise ConfigError(f"data.path: give the folder of {self.plural}, e.g. data.path={self.example}")
        self.root = Path(config.path).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"data.path: {self.root} is not a folder")
        self.files = find_files(self.root, self.extensions)
        if not self.files:
            raise ConfigError(f"data.path: no {'/'.join(e[1:] for e in self.extensions)} {self.plural} under {self.root}")
        self.run_dir: Path | None = None
        rel = [f.relative_to(self.root) for f in self.files]
        folders = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
        labelled = config.labels == "auto" and len(folders) >= 2 and all(len(r.parts) > 1 for r in rel)
        self.classes = folders if labelled else []
        self.class_names = tuple(self.classes)
        self.has_captions = any(f.with_suffix(".txt").is_file() for f in self.files)
        self.natural_conditioner = "class" if self.classes else None
        self.condition_keys = ("label",) if self.classes else ()
        self.caption_key = "captions" if self.has_captions else None
        if not self.classes:
            self.condition_text = "unconditional samples"

    # -- decoding and its cache ----------------------------------------------------------
    def content_key(self) -> str:
        return self._key()

    def _key(self) -> str:
        stats = [(f, f.stat()) for f in self.files]
        listing = [(f.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns) for f, st in stats]
        blob = json.dumps({"files": listing, **self.decode_fields(), "version": CACHE_VERSION})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _cache_dir(self) -> Path | None:
        return self.run_dir / "data" if self.run_dir is not None else None

    def decoded(self, progress: bool | None = None) -> tuple[np.ndarray, dict]:
        """All good images (memory-mapped when cached) and the index: files, skipped, cache hit."""
        key = self._key()
        cache = self._cache_dir()
        if cache is not None and (cache / f"folder-{key}.json").is_file():
            index = json.loads((cache / f"folder-{key}.json").read_text())
            return np.load(cache / f"folder-{key}.npy", mmap_mode="r"), {**index, "cache_hit": True}
        from tqdm.auto import tqdm

        cfg = self.config
        good, skipped, images = [], [], []
        show = self.progress if progress is None else progress
        for f in tqdm(self.files, desc=f"decoding {self.plural}", disable=not show, file=sys.stderr, mininterval=1.0):
            rel = f.relative_to(self.root).as_posix()
            try:
                images.append(self.decode_file(f))
                good.append(rel)
            except Exception as err:  # decoders raise many types for bad files; each is a skip
                if cfg.strict:
                    raise ConfigError(f"data.strict: {f} is not a readable {self.noun} ({type(err).__name__}: {err})") from None
                skipped.append(f"{rel}\t{type(err).__name__}: {err}")
        if len(good) < 2:
            raise ConfigError(f"data.path: {self.root} has {len(good)} readable {self.noun}(s) "
                              f"({len(skipped)} skipped); at least 2 are needed (one train, one val)")
        stacked = np.stack(images)
        index = {"files": good, "skipped": skipped, **self.decode_notes()}
        if cache is not None:
            with atomic_path(cache / f"folder-{key}.npy") as tmp:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=stacked.dtype, shape=stacked.shape)
                out[:] = stacked
                out.flush()
                del out
            write_json(cache / f"folder-{key}.json", index)
            stacked = np.load(cache / f"folder-{key}.npy", mmap_mode="r")
        return stacked, {**index, "cache_hit": False}

    # -- the DataSet contract -----------------------------------------------------------
    def split(self, name: str) -> dict[str, np.ndarray]:
        check_split(name)
        if name == "test":
            raise ValueError(f"{self.config.name} data has train and val splits only")
        images, index = self.decoded()
        files = index["files"]
        if self.run_dir is not None:
            write_text(self.run_dir / "skipped.txt", "".join(line + "\n" for line in index["skipped"]))
        if index["skipped"]:
            print(f"[data] skipped {len(index['skipped'])} unreadable file(s); list in "
                  f"{self.run_dir / 'skipped.txt' if self.run_dir else 'the run folder'}", file=sys.stderr)
        order = np.random.default_rng(self.config.seed).permutation(len(files))
        n_val = min(len(files) - 1, max(1, round(self.config.val_fraction * len(files))))
        # in the permutation's order, not the folder's: the first val rows (the ones a run draws
        # samples for) then mix the classes instead of all coming from the first subfolder
        rows = order[:n_val] if name == "val" else order[n_val:]
        if self.run_dir is not None:
            write_json(self.run_dir / "data" / "split.json",
                       {"seed": self.config.seed, "train": [files[i] for i in np.sort(order[n_val:])],
                        "val": [files[i] for i in np.sort(order[:n_val])]})
        out = {self.modality.key: np.ascontiguousarray(images[rows]), "files": np.array([files[i] for i in rows])}
        if self.classes:
            out["label"] = np.array([self.classes.index(files[i].split("/")[0]) for i in rows], dtype=np.int64)
        if self.has_captions:
            out["captions"] = np.array([self._caption(files[i]) for i in rows])
        return out

    def _caption(self, rel: str) -> str:
        sidecar = (self.root / rel).with_suffix(".txt")
        return " ".join(sidecar.read_text(errors="replace").split()) if sidecar.is_file() else ""

    def link_conditioner(self, cfg):
        import dataclasses

        return dataclasses.replace(cfg, num_classes=len(self.classes)) if hasattr(cfg, "num_classes") else cfg

    def training_captions(self) -> list[str]:
        if not self.has_captions:
            raise NotImplementedError(f"no .txt captions beside the {self.plural} in {self.root}")
        return [str(c) for c in self.split("train")["captions"]]

    def captions(self, arrays: dict[str, np.ndarray]) -> list[str]:
        if "label" in arrays:
            return [self.classes[int(i)] for i in arrays["label"]]
        if "captions" in arrays:
            return [str(c) for c in arrays["captions"]]
        return super().captions(arrays)


@register("dataset", "imagefolder", ImageFolderConfig)
class ImageFolderData(FolderData):
    """A folder of images, each decoded by `decode` (the module docstring's rules)."""

    extensions = EXTENSIONS
    noun = "image"

    def decode_file(self, path: Path) -> np.ndarray:
        return decode(path, self.config.size, self.config.fit)

    def decode_fields(self) -> dict:
        return {"size": self.config.size, "fit": self.config.fit}
