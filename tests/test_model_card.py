"""Every saved model folder carries a model card (README.md) in the Hub's layout, built from the folder's facts."""

import json
import math

import torch
import yaml

from latentforge import from_pretrained, save_pretrained
from latentforge.model_card import count_parameters, write_model_card
from latentforge.registry import lookup


def _tiny_tokenizer():
    config_cls, model_cls = lookup("tokenizer", "conv")
    return model_cls(config_cls.tiny())


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_saved_folder_has_a_card_with_the_folders_facts(tmp_path):
    model = _tiny_tokenizer()
    folder = save_pretrained(model, tmp_path / "tok", extra={"precision": "fp32", "training": {"steps": 7}},
                             data={"dataset": "shapes", "modality": "image"})
    card = (folder / "README.md").read_text()
    header = _front_matter(card)
    assert header["library_name"] == "latentforge"
    assert {"latentforge", "tokenizer", "conv", "image"} <= set(header["tags"])
    assert header["pipeline_tag"] == "image-to-image"
    n = sum(p.numel() for p in model.state_dict().values())
    assert count_parameters(folder / "model.safetensors") == n
    assert f"{n:,} parameters" in card
    assert "- dataset: shapes" in card and "- steps: 7" in card and "- precision: fp32" in card
    # the config block is config.json's config, verbatim
    block = card.split("```json\n")[1].split("```")[0]
    assert json.loads(block) == json.loads((folder / "config.json").read_text())["config"]
    assert "Not evaluated yet" in card


def test_the_cards_loading_snippet_loads_the_model(tmp_path, monkeypatch):
    model = _tiny_tokenizer()
    folder = save_pretrained(model, tmp_path / "tok")
    card = (folder / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)  # the snippet names the folder relative to where it is shared from
    scope: dict = {}
    exec(snippet, scope)
    loaded = scope["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert type(loaded) is type(model)


def test_metrics_are_added_as_a_flat_table(tmp_path):
    folder = save_pretrained(_tiny_tokenizer(), tmp_path / "tok")
    metrics = {"tokenizer": {"psnr": 23.456789, "codebook_usage": 0.5}, "generator": {"n_samples": 1200,
               "curve": [1, 2], "note": "text", "bad": math.nan}}
    write_model_card(folder, metrics=metrics)
    card = (folder / "README.md").read_text()
    assert "| tokenizer.psnr | 23.46 |" in card
    assert "| tokenizer.codebook_usage | 0.5 |" in card
    assert "| generator.n_samples | 1,200 |" in card
    for left_out in ("curve", "note", "bad"):  # lists, texts and non-finite values are not table rows
        assert f"generator.{left_out}" not in card
    assert from_pretrained(folder) is not None  # the card does not disturb loading


def test_pipeline_tag_follows_the_conditioning():
    from latentforge.model_card import pipeline_tag

    assert pipeline_tag("generator", {"conditioner": None}, "image") == "unconditional-image-generation"
    assert pipeline_tag("generator", {"conditioner": {"name": "caption"}}, "image") == "text-to-image"
    assert pipeline_tag("generator", {"conditioner": {"name": "scene_graph"}}, "image") is None  # no Hub tag fits
    assert pipeline_tag("tokenizer", {}, "audio") is None


def test_card_of_a_folder_with_broken_weights_still_writes(tmp_path):
    folder = save_pretrained(_tiny_tokenizer(), tmp_path / "tok")
    (folder / "model.safetensors").write_bytes(b"broken")
    write_model_card(folder)
    card = (folder / "README.md").read_text()
    assert "parameters" not in card.split("\n## ")[0]  # unknown count: not claimed
