"""A peer's weights -> a latentforge model folder (config.json + model.safetensors + README.md).

    latentforge convert sd-vae-ft-ema vae/                       # diffusers AutoencoderKL folder
    latentforge convert kl16.ckpt kl16/ scaling_factor=0.2325    # LDM / MAR checkpoint
    latentforge convert DiT-XL-2-256x256.pt dit-xl/              # facebookresearch DiT

The kind is read from the source: a DiT (a diffusers `DiTTransformer2DModel` / `Transformer2DModel`
folder, or a file with DiT's `x_embedder.proj.weight`) becomes a generator; every other format
`load_autoencoder` knows becomes a tokenizer. The written folder loads with
`latentforge.from_pretrained` and needs neither the peer's package nor its file again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from latentforge.peers.autoencoders import detect_format, load_autoencoder
from latentforge.peers.dit import load_dit
from latentforge.serialization import CONFIG_NAME, read_json, read_weights, save_pretrained

DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


def _is_dit(path: Path) -> bool:
    if path.is_dir():
        for folder in (path, path / "transformer"):
            cfg = folder / CONFIG_NAME
            if cfg.is_file() and isinstance(meta := read_json(cfg), dict) and meta.get("_class_name") in DIT_CLASSES:
                return True
        return False
    if path.suffix == ".safetensors":  # the header names the keys without reading the tensors
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return "x_embedder.proj.weight" in f.keys()
    return "x_embedder.proj.weight" in read_weights(path)


def peer_format(path: str | os.PathLike) -> str:
    """"dit" (facebookresearch file or diffusers folder) or one of `load_autoencoder`'s formats."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    return "dit" if _is_dit(path) else detect_format(path)


def load_peer(path: str | os.PathLike, **overrides: Any) -> tuple[nn.Module, str]:
    """The model a peer's file or folder holds, and its format."""
    fmt = peer_format(path)
    model = load_dit(path, **overrides) if fmt == "dit" else load_autoencoder(path, **overrides)
    return model, fmt


def convert(source: str | os.PathLike, out: str | os.PathLike, **overrides: Any) -> Path:
    """Load `source` (any peer format) and save it as a latentforge folder `out`, with its model card."""
    model, fmt = load_peer(source, **overrides)
    origin = {"source": str(Path(source).resolve()), "source format": fmt, "modality": "image",
              "training data": "as published with the source weights (not recorded by the conversion)"}
    if overrides:
        origin["conversion overrides"] = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return save_pretrained(model, out, data=origin)
