"""`latentforge convert`: a peer's weights become a latentforge folder that loads without the peer."""

import torch
from safetensors.torch import save_file
from test_peers_autoencoders import KL_CASES, diffusers_kl, images
from test_peers_dit import D, facebook_state

from latentforge import from_pretrained
from latentforge.cli import main
from latentforge.peers import load_autoencoder, load_dit
from latentforge.peers.convert import peer_format


def test_convert_a_diffusers_vae_folder(tmp_path, capsys):
    _, path = diffusers_kl(next(iter(KL_CASES)), tmp_path)
    assert peer_format(path) == "diffusers_kl"
    assert main(["convert", path, str(tmp_path / "vae")]) == 0
    assert "README.md" in capsys.readouterr().out
    ours, peer = from_pretrained(tmp_path / "vae"), load_autoencoder(path)
    x = images()
    with torch.no_grad():
        assert torch.equal(ours.encode(x), peer.encode(x))
    card = (tmp_path / "vae" / "README.md").read_text()
    assert "- source format: diffusers_kl" in card and "tokenizer" in card


def test_convert_a_facebookresearch_dit_with_an_override(tmp_path):
    path = tmp_path / "DiT-tiny.safetensors"
    save_file(facebook_state(torch.Generator().manual_seed(0)), str(path))
    assert peer_format(path) == "dit"
    # a width outside DiT-S/B/L/XL does not record its heads: the override says it
    assert main(["convert", str(path), str(tmp_path / "dit"), "heads=2"]) == 0
    ours, peer = from_pretrained(tmp_path / "dit"), load_dit(path, heads=2)
    assert ours.config.dim == D and ours.config.heads == 2
    for k, v in peer.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    assert "- conversion overrides: heads=2" in (tmp_path / "dit" / "README.md").read_text()


class Payload:  # any object that only unpickling can rebuild
    pass


def test_convert_refuses_pickle_and_unknown_layouts(tmp_path, capsys):
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"encoder.down.0.weight": torch.zeros(1)}, "obj": Payload()}, pickled)
    assert main(["convert", str(pickled), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model.ckpt" in err and "unpickling" in err and "save_file" in err
    assert not (tmp_path / "out").exists()

    odd = tmp_path / "odd.safetensors"
    save_file({"something.weight": torch.zeros(2)}, str(odd))
    assert main(["convert", str(odd), str(tmp_path / "out")]) == 2
    assert "odd.safetensors" in capsys.readouterr().err
