"""Image-folder decoding and its cache: N photo crops written as PNG/JPEG files in two class
folders, read as an `imagefolder` data set once (decode + memory-mapped cache) and again (cache).

    python benchmarks/folder.py [--n 2000] [--source-size 64] [--size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from latentforge.data.folder import ImageFolderConfig, ImageFolderData
from latentforge.data.photos import PhotosConfig, photo_crops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--source-size", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp()) / "images"
    for i, crop in enumerate(photo_crops(PhotosConfig(size=args.source_size), "train", args.n)):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / (f"{i}.png" if i % 2 else f"{i}.jpg"), quality=90)
    run = Path(tempfile.mkdtemp())
    times = []
    for _ in range(2):
        data = ImageFolderData(ImageFolderConfig(path=str(root), size=args.size))
        data.run_dir = run
        t = time.perf_counter()
        data.split("train")
        data.split("val")
        times.append(time.perf_counter() - t)
    print(f"{args.n} files ({args.source_size} px, half PNG, half JPEG) -> {args.size} px: "
          f"train + val splits {times[0]:.2f} s the first time (decode + cache), {times[1]:.2f} s from the cache")


if __name__ == "__main__":
    main()
