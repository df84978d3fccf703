from dataclasses import dataclass, field
from typing import Literal

import pytest

from latentforge.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from latentforge.recipes import RecipeConfig, load_recipe


@dataclass
class Inner:
    width: int = 4
    mode: Literal["a", "b"] = "a"
    scale: float = 1.0


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None


def test_builds_nested_and_coerces():
    cfg = from_dict(Outer, {"inner": {"width": 8, "scale": 2}, "sizes": [3, 4, 5], "limit": None})
    assert cfg.inner.width == 8 and cfg.inner.scale == 2.0 and isinstance(cfg.inner.scale, float)
    assert cfg.sizes == (3, 4, 5) and cfg.limit is None
    assert to_dict(cfg) == {"name": "x", "inner": {"width": 8, "mode": "a", "scale": 2.0}, "sizes": [3, 4, 5],
                            "limit": None}


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"inner": {"widht": 3}})
    msg = str(err.value)
    assert "inner.widht" in msg and "mode, scale, width" in msg


@pytest.mark.parametrize("data, fragment", [
    ({"inner": {"width": "wide"}}, "inner.width: expected an integer"),
    ({"inner": {"width": 2.5}}, "inner.width: expected an integer"),
    ({"inner": {"mode": "c"}}, "inner.mode: 'c' is not one of 'a', 'b'"),
    ({"sizes": 3}, "sizes: expected a list"),
    ({"sizes": [1, "x"]}, "sizes[1]: expected an integer"),
    ({"inner": 5}, "inner: expected a mapping"),
    ({"name": True}, "name: expected a string"),
])
def test_wrong_types_name_the_key(data, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Outer, data)


def test_overrides_parse_yaml_values():
    data = apply_overrides({"inner": {"width": 1}}, ["inner.width=16", "inner.mode=b", "sizes=[7, 8]", "limit=null"])
    cfg = from_dict(Outer, data)
    assert (cfg.inner.width, cfg.inner.mode, cfg.sizes, cfg.limit) == (16, "b", (7, 8), None)
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_registry_picks_config_class_by_name():
    cfg = from_dict(RecipeConfig, {"tokenizer": {"name": "conv", "channels": [16, 32]}})
    assert type(cfg.tokenizer).__name__ == "ConvConfig" and cfg.tokenizer.channels == (16, 32)
    with pytest.raises(ConfigError, match=r"tokenizer.name: unknown tokenizer 'nope'; available: .*conv"):
        from_dict(RecipeConfig, {"tokenizer": {"name": "nope"}})
    with pytest.raises(ConfigError, match="generator.conditioner.depht"):
        from_dict(RecipeConfig, {"generator": {"conditioner": {"name": "scene_graph", "depht": 2}}})


def test_validation_errors_become_config_errors():
    with pytest.raises(ConfigError, match="not a multiple of the downsampling factor"):
        from_dict(RecipeConfig, {"tokenizer": {"image_size": 30}})
    with pytest.raises(ConfigError, match="tokenizer_train: steps must be >= 1"):
        from_dict(RecipeConfig, {"tokenizer_train": {"steps": 0}})


def test_recipe_links_generator_to_tokenizer_and_data(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {max_objects: 4}\ntokenizer: {quantizer: {codebook_size: 300}}\n"
                    "generator: {conditioner: {name: scene_graph}}\nquick: {name: q, data.train_size: 10}\n")
    cfg = load_recipe(path, ["tokenizer.patch=4", "tokenizer.channels=[8, 8]"])
    assert cfg.generator.grid == (4, 4) and cfg.generator.vocab_size == 300
    assert cfg.generator.conditioner.max_objects == 6  # slots for the largest scene Shapes draws, not the 4 trained on
    quick = load_recipe(path, quick=True)
    assert quick.name == "q" and quick.data.train_size == 10


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_recipe_refuses_latents_the_generator_cannot_model():
    from latentforge.recipes import RecipeConfig, link

    rvq = {"name": "rvq", "depth": 2, "codebook_size": 16, "dim": 4}
    for quantizer, generator in ((rvq, "masked"), ({"name": "gaussian", "dim": 4}, "autoregressive")):
        cfg = from_dict(RecipeConfig, {"tokenizer": {"name": "conv", "channels": [16, 32], "quantizer": quantizer},
                                       "generator": {"name": generator}})
        with pytest.raises(ConfigError, match=f"quantizer '{quantizer['name']}'"):
            link(cfg)
    # the autoregressive generator takes residual codes, flattened: it learns their depth
    cfg = link(from_dict(RecipeConfig, {"tokenizer": {"name": "conv", "channels": [16, 32], "quantizer": rvq}}))
    assert cfg.generator.name == "autoregressive" and cfg.generator.levels == 2
    cfg = link(from_dict(RecipeConfig, {"tokenizer": {"name": "conv", "channels": [16, 32],
                                                      "quantizer": {"name": "fsq", "levels": [4, 4, 4], "dim": 3}}}))
    assert cfg.generator.vocab_size == 64


def test_overriding_a_section_name_starts_it_afresh():
    base = {"tokenizer": {"name": "conv", "quantizer": {"name": "vq", "codebook_size": 256, "dim": 8}}}
    out = apply_overrides(base, ["tokenizer.quantizer.dim=4", "tokenizer.quantizer.name=fsq"])
    assert out["tokenizer"]["quantizer"] == {"name": "fsq", "dim": 4}
    cfg = from_dict(RecipeConfig, out)
    assert type(cfg.tokenizer.quantizer).__name__ == "FSQConfig" and cfg.tokenizer.quantizer.dim == 4
    same = apply_overrides({"a": {"name": "x", "k": 1}}, ["a.name=x"])
    assert same == {"a": {"name": "x", "k": 1}}  # the same name keeps the section
