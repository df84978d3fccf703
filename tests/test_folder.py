"""Image folders as a data set: decoding rules, bad files, the decode cache, and a tiny recipe run."""

import json

import numpy as np
import pytest
from PIL import Image

from latentforge.cli import main
from latentforge.config import ConfigError
from latentforge.data.folder import (
    ImageFolderConfig,
    ImageFolderData,
    find_images,
    fit_square,
    to_rgb,
)
from latentforge.data.shapes import ShapesConfig, render_batch
from latentforge.data.store import load_split
from latentforge.recipes import Run, load_recipe

TINY = ["tokenizer.channels=[16, 32]", "tokenizer.quantizer.codebook_size=64", "tokenizer_train.steps=4",
        "tokenizer_train.batch_size=16", "generator.dim=32", "generator.depth=1", "generator.heads=2",
        "generator.conditioner.dim=16", "generator_train.steps=4", "generator_train.batch_size=16",
        "sample.conditions=4", "eval.recon_images=16", "eval.show=8", "eval.metrics=[recon,val,diversity]"]


@pytest.fixture()
def folder(tmp_path):
    """Two class folders of Shapes renders (PNG and JPEG, one RGBA, one grey, one with a caption),
    plus a truncated JPEG and a text file named .png."""
    root = tmp_path / "images"
    renders = render_batch(ShapesConfig(size=40), "train", range(24))
    for i, image in enumerate(renders):
        sub = root / ("circles" if i % 2 else "squares")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / (f"img{i:02d}.png" if i % 3 else f"img{i:02d}.JPG"))
    rgba = np.dstack([renders[0], np.full(renders[0].shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "circles" / "rgba.png")
    Image.fromarray(renders[1].mean(-1).astype(np.uint8), "L").save(root / "squares" / "grey.bmp")
    (root / "squares" / "img02.txt").write_text("two\nsquares  here")
    jpeg = (root / "squares" / "img00.JPG").read_bytes()
    (root / "squares" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "circles" / "notes.png").write_text("not an image")
    return root


def test_decoding_rules():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red -> white
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.full((4, 4, 3), 255))
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))  # half-transparent black on white -> mid grey
    assert abs(int(np.asarray(to_rgb(half))[0, 0, 0]) - 127) <= 1
    grey = Image.fromarray(np.array([[0, 200]], np.uint8), "L")
    assert np.array_equal(np.asarray(to_rgb(grey))[0, 1], [200, 200, 200])
    deep = Image.new("I;16", (2, 1))
    deep.putpixel((1, 0), 65535)
    assert np.asarray(to_rgb(deep))[0, 1].tolist() == [255, 255, 255]
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [0, 0, 255]
    # EXIF orientation 6 (rotate 90° clockwise to view): a 4x2 (wide) file shows as 2x4 (tall)
    wide = Image.new("RGB", (4, 2))
    exif = wide.getexif()
    exif[0x0112] = 6
    wide.info["exif"] = exif.tobytes()
    wide = Image.open(_roundtrip(wide, exif))
    assert to_rgb(wide).size == (2, 4)
    tall = Image.fromarray(np.zeros((60, 30, 3), np.uint8))
    assert fit_square(tall, 16, "crop").shape == (16, 16, 3)
    padded = fit_square(Image.fromarray(np.full((20, 10, 3), 255, np.uint8)), 16, "pad")
    assert padded[:, :4].max() == 0 and padded[:, 5:11].min() == 255  # centred, black either side


def _roundtrip(image, exif):
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    buf.seek(0)
    return buf


def test_finds_images_recursively_and_classes(folder):
    files = [f.relative_to(folder).as_posix() for f in find_images(folder)]
    assert "squares/img00.JPG" in files and "squares/grey.bmp" in files and "circles/notes.png" in files
    assert "squares/img02.txt" not in files and len(files) == 28
    data = ImageFolderData(ImageFolderConfig(path=str(folder)))
    assert data.classes == ["circles", "squares"] and data.natural_conditioner == "class"
    assert data.caption_key == "captions"


def test_bad_files_are_skipped_listed_and_strict_names_them(folder, tmp_path):
    data = ImageFolderData(ImageFolderConfig(path=str(folder), size=16))
    data.run_dir = tmp_path / "run"
    train, val = data.split("train"), data.split("val")
    assert len(train["images"]) + len(val["images"]) == 26  # 28 files, 2 unreadable
    assert train["images"].shape[1:] == (16, 16, 3) and train["images"].dtype == np.uint8
    skipped = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in skipped) == ["circles/notes.png", "squares/truncated.jpg"]
    labels = np.concatenate([train["label"], val["label"]])
    files = np.concatenate([train["files"], val["files"]])
    assert all(data.classes[lab] == f.split("/")[0] for lab, f in zip(labels, files, strict=True))
    captions = dict(zip(files, np.concatenate([train["captions"], val["captions"]]), strict=True))
    assert captions["squares/img02.png"] == "two squares here" and captions["squares/img04.png"] == ""
    assert len(set(val["label"][:3].tolist())) == 2  # shuffled rows: the first val rows mix the classes
    split = json.loads((tmp_path / "run" / "data" / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == sorted(files.tolist()) and not set(split["train"]) & set(split["val"])
    strict = ImageFolderData(ImageFolderConfig(path=str(folder), size=16, strict=True))
    with pytest.raises(ConfigError, match=r"data.strict: .*circles/notes.png is not a readable image"):
        strict.split("train")


def test_decode_cache_is_reused_and_invalidated_by_a_new_file(folder, tmp_path, monkeypatch):
    import latentforge.data.folder as folder_mod

    first = ImageFolderData(ImageFolderConfig(path=str(folder), size=16))
    first.run_dir = tmp_path
    images, index = first.decoded(progress=False)
    assert not index["cache_hit"] and isinstance(images, np.memmap)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder_mod, "decode", no_decoding)
    again = ImageFolderData(ImageFolderConfig(path=str(folder), size=16))
    again.run_dir = tmp_path
    cached, index = again.decoded(progress=False)
    assert index["cache_hit"] and np.array_equal(cached, images)
    monkeypatch.undo()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "circles" / "new.png")
    changed = ImageFolderData(ImageFolderConfig(path=str(folder), size=16))
    changed.run_dir = tmp_path
    assert changed.content_key() != first.content_key()
    assert not changed.decoded(progress=False)[1]["cache_hit"]


def test_folders_that_cannot_train_stop_with_a_message(tmp_path):
    with pytest.raises(ConfigError, match="data.path: give the folder"):
        ImageFolderData(ImageFolderConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no png/jpg/jpeg/webp/bmp images under"):
        ImageFolderData(ImageFolderConfig(path=str(tmp_path / "empty")))
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "a.png")
    with pytest.raises(ConfigError, match="has 1 readable image.*at least 2 are needed"):
        ImageFolderData(ImageFolderConfig(path=str(tmp_path / "one"))).split("train")
    with pytest.raises(ConfigError, match="data 'imagefolder' gives image_size 30, which does not suit tokenizer 'conv'"):
        load_recipe("configs/imagefolder.yaml", [f"data.path={tmp_path / 'one'}", "data.size=30"])


@pytest.mark.slow
def test_tiny_imagefolder_recipe_end_to_end(folder, tmp_path, capsys):
    args = ["run", "configs/imagefolder.yaml", "--no-progress", f"data.path={folder}", "data.size=16", "data.val_fraction=0.2",
            f"out_dir={tmp_path / 'runs'}", "name=mine", *TINY]
    assert main(args) == 0
    run = tmp_path / "runs" / "mine"
    assert sorted(line.split("\t")[0] for line in (run / "skipped.txt").read_text().splitlines()) == \
        ["circles/notes.png", "squares/truncated.jpg"]
    cfg = json.loads((run / "generator" / "config.json").read_text())["config"]
    assert cfg["conditioner"]["name"] == "class" and cfg["conditioner"]["num_classes"] == 2
    with np.load(run / "samples.npz") as f:
        assert f["samples"].shape == (8, 16, 16, 3) and set(f["label"]) <= {0, 1}
    assert (run / "report.html").is_file() and list((run / "data").glob("folder-*.npy"))
    rows = sum(len(load_split(run, split)["images"]) for split in ("train", "val"))
    assert rows == 26  # every readable file, none of the two bad ones
    capsys.readouterr()
    assert main(args) == 0  # everything cached: nothing decoded or trained again
    assert "stage data: done already, skipped" in capsys.readouterr().err
    # a changed folder is other data: the trained run is not silently mixed with it
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "circles" / "late.png")
    assert main(args) == 2
    assert "already holds a tokenizer trained with another config or other data" in capsys.readouterr().err


@pytest.mark.slow
def test_a_folder_without_classes_trains_an_unconditional_generator(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i, image in enumerate(render_batch(ShapesConfig(size=16), "train", range(12))):
        Image.fromarray(image).save(root / f"{i}.png")
    cfg = load_recipe("configs/imagefolder.yaml", [f"data.path={root}", "data.size=16", f"out_dir={tmp_path}", *TINY])
    assert cfg.generator.conditioner is None
    Run(cfg, progress=False).run()
    with np.load(tmp_path / "imagefolder" / "samples.npz") as f:
        assert f["samples"].shape[1:] == (16, 16, 3)
