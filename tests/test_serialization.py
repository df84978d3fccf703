import json

import pytest
import torch

from latentforge import from_pretrained, save_pretrained
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.quantize.vq import VQConfig
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer


def test_tokenizer_round_trip(tmp_path):
    tok = ConvTokenizer(ConvConfig(channels=(8, 16), quantizer=VQConfig(codebook_size=32, dim=8))).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    save_pretrained(tok, tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert meta["kind"] == "tokenizer" and meta["name"] == "conv" and meta["config"]["channels"] == [8, 16]
    loaded = from_pretrained(tmp_path / "tok")
    assert torch.equal(loaded(x), tok(x))
    assert torch.equal(loaded.encode(x), tok.encode(x))


def test_generator_round_trip_keeps_conditioner(tmp_path):
    gen = ARGenerator(ARConfig(grid=(2, 2), vocab_size=8, dim=16, depth=1, heads=2,
                               conditioner=SceneGraphConfig(dim=16, depth=1, heads=2)))
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_pretrained(gen, tmp_path / "gen")
    loaded = from_pretrained(tmp_path / "gen")
    codes = torch.randint(8, (3, 4))
    cond = {"obj_shape": torch.zeros(3, 3, dtype=torch.long), "obj_color": torch.ones(3, 3, dtype=torch.long),
            "obj_size": torch.zeros(3, 3, dtype=torch.long), "obj_mask": torch.ones(3, 3, dtype=torch.bool),
            "rel_subj": torch.zeros(3, 6, dtype=torch.long), "rel_pred": torch.zeros(3, 6, dtype=torch.long),
            "rel_obj": torch.ones(3, 6, dtype=torch.long), "rel_mask": torch.ones(3, 6, dtype=torch.bool)}
    gen.eval()

    def context(model):  # no centres given: the layout is sampled, from the same seed
        return model.encode_condition(cond, generator=torch.Generator().manual_seed(0))

    assert torch.equal(loaded.logits(codes, context(loaded)), gen.logits(codes, context(gen)))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        from_pretrained(tmp_path)
    tok = ConvTokenizer(ConvConfig(channels=(8, 16), quantizer=VQConfig(codebook_size=32, dim=8)))
    save_pretrained(tok, tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "config.json").read_text())
    meta["config"]["channels"] = [8, 32]
    (tmp_path / "tok" / "config.json").write_text(json.dumps(meta))
    with pytest.raises((ValueError, RuntimeError)):
        from_pretrained(tmp_path / "tok")


def test_atomic_writes_replace_whole_files_with_normal_permissions(tmp_path):
    import os

    from latentforge.atomic import atomic_path, write_text

    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    write_text(target, "new")
    assert target.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
