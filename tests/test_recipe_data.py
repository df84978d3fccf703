"""Recipes on every embedded data set: class-conditional digits, tokenizer-only photos, and the
checks `link` makes between data, tokenizer, generator and conditioner."""

import json

import numpy as np
import pytest
import torch

from latentforge.config import ConfigError
from latentforge.data.store import load_split
from latentforge.pipeline import condition_tensors
from latentforge.recipes import Run, load_recipe
from latentforge.registry import lookup

TINY_TOKENIZER = ["tokenizer.channels=[16, 32]", "tokenizer.quantizer.codebook_size=64",
                  "tokenizer_train.steps=4", "tokenizer_train.batch_size=16", "eval.recon_images=32", "eval.show=8"]
TINY_GENERATOR = ["generator.dim=32", "generator.depth=1", "generator.heads=2", "generator.conditioner.dim=16",
                  "generator_train.steps=4", "generator_train.batch_size=16"]


@pytest.mark.slow
def test_digits_class_conditional_run(tmp_path, digits_probe):
    cfg = load_recipe("configs/digits_class_ar.yaml", [f"out_dir={tmp_path}", *TINY_TOKENIZER, *TINY_GENERATOR,
                                                      "sample.conditions=5", "sample.per_graph=2"])
    assert cfg.generator.conditioner.num_classes == 10
    metrics = Run(cfg, progress=False).run()
    run = tmp_path / "digits"
    train = load_split(run, "train")  # memory-mapped, one file per entry
    assert isinstance(train["images"], np.memmap) and (run / "data" / "train" / "images.npy").is_file()
    assert train["images"].shape[1:] == (32, 32, 3) and set(np.unique(train["label"])) == set(range(10))
    with np.load(run / "samples.npz") as f:
        assert f["samples"].shape == (10, 32, 32, 3)
        val_labels = load_split(run, "val")["label"][:5]
        assert np.array_equal(f["label"], np.repeat(val_labels, 2))  # sampled for the val labels
    assert {"val_loss", "bits_per_token", "diversity", "samples_per_s", "class_acc"} <= set(metrics["generator"])
    assert metrics["generator"]["real_images_class_acc"] >= 0.8  # the probe reads real digits
    assert metrics["distribution"]["features"]["name"] == "probe"
    info = json.loads((run / "sample_info.json").read_text())
    assert info["conditional"] and "digit class" in info["shows"]


@pytest.mark.slow
def test_tokenizer_only_photo_run(tmp_path):
    cfg = load_recipe("configs/photos_tokenizer.yaml",
                      [f"out_dir={tmp_path}", "data.train_size=64", "data.val_size=16", *TINY_TOKENIZER])
    assert cfg.generator is None
    metrics = Run(cfg, progress=False).run()
    run = tmp_path / "photos_tok"
    assert set(metrics) == {"tokenizer", "eval"} and 0 < metrics["tokenizer"]["psnr"] < 100
    # no labels to train a probe on and no Inception weights: FID is left out, and says why
    assert "no probe network" in metrics["eval"]["skipped"]["fid"]
    assert "ms_ssim" in metrics["tokenizer"]
    assert set(json.loads((run / "stages.json").read_text())) == {"data", "tokenizer", "eval", "report"}
    assert not (run / "generator").exists() and not (run / "samples.npz").exists()
    assert "tokenizer-only run" in (run / "report.html").read_text()


def test_data_size_sets_the_tokenizer_and_bad_sizes_are_named():
    cfg = load_recipe("configs/photos_tokenizer.yaml", ["data.size=64"])
    assert cfg.tokenizer.image_size == 64
    with pytest.raises(ConfigError, match="data 'shapes' gives image_size 30, which does not suit tokenizer 'conv'.*multiple"):
        load_recipe("configs/shapes_sg2im.yaml", ["data.size=30"])


def test_link_names_a_conditioner_the_data_cannot_feed():
    with pytest.raises(ConfigError, match="'scene_graph' reads .*obj_shape.*data 'digits'.*its conditioner is 'class'"):
        load_recipe("configs/shapes_sg2im.yaml", ["data.name=digits"])
    with pytest.raises(ConfigError, match="'class' reads label.*data 'photos'.*unlabelled"):
        load_recipe("configs/digits_class_ar.yaml", ["data.name=photos"])
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; available: atari, audiofolder, deepmimic, digits, "
                                          "imagefolder, meshes, meshfolder, moving_mnist, moving_shapes, music, notes, "
                                          "photos, primitives, shapes, speech, stickfigure"):
        load_recipe("configs/digits_class_ar.yaml", ["data.name=mnist"])


def test_unknown_sampling_option_is_named(tmp_path):
    from latentforge.generators.autoregressive import ARConfig, ARGenerator
    from latentforge.pipeline import sampling_options

    cfg = load_recipe("configs/shapes_sg2im.yaml", [f"out_dir={tmp_path}", "sample.options={steps: 8}"])
    with pytest.raises(ConfigError, match="sample.options: steps not accepted by generator 'autoregressive'"):
        sampling_options(ARGenerator(ARConfig(dim=32, depth=1, heads=2, vocab_size=8, grid=(2, 2))), cfg.sample)


@pytest.mark.slow
def test_caption_conditioned_masked_generator_run(tmp_path):
    """Any generator and conditioner by name: MaskGIT reading Shapes captions, end to end."""
    cfg = load_recipe("configs/shapes_sg2im.yaml", [
        f"out_dir={tmp_path}", "name=cap", "data.train_size=64", "data.val_size=16", *TINY_TOKENIZER,
        "generator.name=masked", "generator.dim=32", "generator.depth=1", "generator.heads=2",
        "generator.conditioner.name=caption", "generator.conditioner.dim=16", "generator.conditioner.depth=1",
        "generator.conditioner.heads=2", "generator_train.steps=4", "generator_train.batch_size=16",
        "sample.conditions=3", "sample.options={steps: 2}"])
    vocab = cfg.generator.conditioner.vocab
    assert {"circle", "left", "of", "red"} <= set(vocab) and len(vocab) < 40  # the data's own words
    run = Run(cfg, progress=False)
    model = lookup("generator", cfg.generator.name)[1](cfg.generator)
    cond = condition_tensors(run.dataset, {"captions": np.array(["a red circle left of a blue square"])}, model)
    ids = cond["caption_ids"][0, :8].tolist()
    assert ids[:3] == [vocab.index("a") + 2, vocab.index("red") + 2, vocab.index("circle") + 2]
    metrics = run.run()
    with np.load(tmp_path / "cap" / "samples.npz") as f:
        assert f["samples"].shape == (6, 32, 32, 3)
    assert {"scene_exact", "bits_per_token"} <= set(metrics["generator"])


def test_link_refuses_captions_the_data_lacks():
    with pytest.raises(ConfigError, match="'caption' reads captions, which data 'digits'.*its conditioner is 'class'"):
        load_recipe("configs/digits_class_ar.yaml", ["generator.conditioner.name=caption"])


def test_link_derives_the_generator_from_the_latent_spec():
    cfg = load_recipe("configs/shapes_sg2im.yaml", ["tokenizer.quantizer.codebook_size=64"])
    assert cfg.generator.vocab_size == 64 and cfg.generator.grid == (8, 8)
    cfg = load_recipe("configs/motion_mogo.yaml", ["tokenizer.quantizer.depth=3"])
    assert cfg.generator.levels == 3 and cfg.generator.grid == (16,)
    assert cfg.tokenizer.in_channels == 112 and cfg.tokenizer.seq_len == 64   # from the motion modality
    with pytest.raises(ConfigError, match="generator 'dit' models continuous latents, but tokenizer 'conv' with "
                                          "quantizer 'vq' gives discrete ones"):
        load_recipe("configs/shapes_sg2im.yaml", ["generator.name=dit"])
    with pytest.raises(ConfigError, match="generator 'masked' models one discrete code per position, but "
                                          "tokenizer 'conv1d' with quantizer 'rvq' gives 4 levels"):
        load_recipe("configs/motion_mogo.yaml", ["generator.name=masked"])
    assert load_recipe("configs/motion_mogo.yaml", ["generator.name=autoregressive"]).generator.levels == 4
    with pytest.raises(ConfigError, match="tokenizer 'conv' reads image data, but data 'deepmimic' holds motion"):
        load_recipe("configs/shapes_sg2im.yaml", ["data.name=deepmimic"])


def test_load_split_reads_both_layouts(tmp_path):
    """Splits are one memory-mapped .npy per entry; runs stored before keep one .npz per split."""
    from latentforge.atomic import write_npy, write_npz

    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    write_npz(tmp_path / "old" / "data" / "train.npz", images=images, captions=np.array(["a", "b"]))
    write_npy(tmp_path / "new" / "data" / "train" / "images.npy", images)
    write_npy(tmp_path / "new" / "data" / "train" / "captions.npy", np.array(["a", "b"]))
    for run in ("old", "new"):
        split = load_split(tmp_path / run, "train")
        assert np.array_equal(split["images"], images) and split["captions"].tolist() == ["a", "b"]
    assert isinstance(load_split(tmp_path / "new", "train")["images"], np.memmap)
    with pytest.raises(FileNotFoundError, match="run the data stage first"):
        load_split(tmp_path / "new", "val")


def test_initial_weights_follow_the_seed_not_what_ran_before(tmp_path):
    """Two runs of one recipe in one process, with random draws between them, train the same
    tokenizer: its initial weights come from tokenizer_train.seed."""
    from safetensors.torch import load_file

    base = ["data.train_size=32", "data.val_size=8", *TINY_TOKENIZER, "tokenizer_train.steps=2", "generator=null"]
    for name in ("a", "b"):
        torch.rand(7)  # whatever ran before must not matter
        Run(load_recipe("configs/shapes_sg2im.yaml", [*base, f"out_dir={tmp_path}", f"name={name}"]),
            progress=False).run(stages=("data", "tokenizer"))
    a, b = (load_file(tmp_path / n / "tokenizer" / "model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
