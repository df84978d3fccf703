"""Published DiT weights (Peebles & Xie 2023) loaded into latentforge's `DiTGenerator`.

Two formats:
  * facebookresearch/DiT checkpoints (`DiT-XL-2-256x256.pt`, or that state dict saved as
    .safetensors), keyed as in https://github.com/facebookresearch/DiT/blob/main/models.py;
  * diffusers `DiTTransformer2DModel` folders (config.json + diffusion_pytorch_model.safetensors;
    a pipeline folder with a `transformer/` subfolder works too).

Both become a class-conditional DDPM DiT (linear betas over 1000 steps, epsilon prediction) whose
condition reaches the blocks through adaLN only (`cross_attention=False`). Legend: D width,
C latent channels, p patch size, K classes, N patch tokens.

    facebookresearch key                          latentforge key
    x_embedder.proj  (Conv2d p x p, stride p)     in_proj (Linear on (p q c) patches: weight permuted)
    pos_embed [1, N, D] (fixed sin-cos)           pos.table (position "sincos", loaded as given)
    t_embedder.mlp.{0,2}                          time_emb.mlp.{0,2}
    y_embedder.embedding_table [K + 1, D]         conditioner.embed (rows 0..K-1), conditioner.null_token (row K)
    c = t + y                                     context_proj = the identity: c = time + the label token
    blocks.i.attn.qkv / attn.proj                 blocks.i.attn.qkv / attn.proj
    blocks.i.mlp.fc1 / mlp.fc2 (GELU tanh)        blocks.i.mlp.fc / mlp.proj
    blocks.i.adaLN_modulation.1 (6 D)             blocks.i.modulation.1 (same order: shift, scale, gate x 2)
    final_layer.adaLN_modulation.1 (2 D)          final.modulation.1
    final_layer.linear [p p Cout, D]              final.linear: with learn_sigma (Cout = 2C) the epsilon rows
                                                  only; the variance half is dropped (DDIM needs epsilon alone)
    LayerNorm eps 1e-6, timestep freqs / half     norm_eps 1e-6, time_freq_shift 0

diffusers' port differs from the original in two numerical details, both reproduced exactly: its
timestep frequencies are spaced over half - 1 steps (time_freq_shift 1), and the norm before each
MLP uses the config's `norm_eps` (1e-5 by default; the others 1e-6). Its blocks each hold a copy
of the timestep and label embedders (identical in converted checkpoints; latentforge shares one,
so copies that differ are refused), and its positions are not stored: our sin-cos table is used.

Latent scale: DiT was trained on SD-VAE latents times 0.18215. latentforge's tokenizers own their
scale (`peers.load_autoencoder`'s SD VAE encodes to latent * 0.18215 and decodes from it), so by
default `latent_norm` is the identity; `latent_scale=0.18215` makes the generator read and draw
raw, unscaled VAE latents instead (latent_norm std 1 / 0.18215).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor

from latentforge.conditioning.class_label import ClassConfig
from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.serialization import read_json, read_weights

SD_VAE_SCALE = 0.18215
# the heads of DiT-S, -B, -L and -XL (models.py presets) by width: no weight shape records them
DIT_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}
# DiTTransformer2DModel's defaults, for keys an older config.json leaves out
DIFFUSERS_DEFAULTS = {"num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": None,
                      "num_layers": 28, "sample_size": 32, "patch_size": 2, "activation_fn": "gelu-approximate",
                      "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_zero", "norm_elementwise_affine": False,
                      "norm_eps": 1e-5, "attention_bias": True}

# latentforge key -> (the peer's key it came from, tensor): the source name goes into error messages
Mapped = dict[str, tuple[str, Tensor]]


def load_dit(path: str | Path, *, latent_scale: float = 1.0, **overrides) -> DiTGenerator:
    """A facebookresearch DiT weights file (.pt/.pth/.safetensors) or a diffusers DiT folder ->
    `DiTGenerator` in eval mode, computing the peer's epsilon prediction.

    Args:
        latent_scale: what the tokenizer's latents still need multiplying by to be the DiT's inputs:
            1 for a tokenizer that applies SD's scaling_factor itself (load_autoencoder's), 0.18215
            (SD_VAE_SCALE) for raw SD-VAE latents; latent_norm's std becomes 1 / latent_scale.
        overrides: DiTConfig fields to set, e.g. `heads=` for a width outside DiT-S/B/L/XL
            (the shapes do not record the heads), `p_uncond=` for fine-tuning.
    """
    path = Path(path)
    if path.is_dir():
        fields, mapped = _from_diffusers(path)
    else:
        fields, mapped = _from_facebook(read_weights(path), path)
    unknown = sorted(set(overrides) - set(DiTConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"load_dit: unknown DiTConfig field(s) {', '.join(unknown)}")
    fields.update(overrides)
    if "heads" not in fields:
        raise ValueError(f"{path}: width {fields['dim']} is none of DiT-S/B/L/XL's ({sorted(DIT_HEADS)}), and the "
                         "weights do not record the number of heads: pass heads=")
    model = DiTGenerator(DiTConfig(**fields))
    own = model.state_dict()
    for key, (source, value) in mapped.items():
        if key not in own:
            raise ValueError(f"{path}: {source} has no place in this DiT: the overrides {sorted(overrides)} "
                             "changed its layout")
        if tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{path}: {source} has shape {list(value.shape)}, but this DiT ({_describe(fields)}) "
                             f"needs {list(own[key].shape)}")
        own[key] = value
    D = fields["dim"]
    # DiT adds the label embedding to the time embedding as it is: our pooled-context projection
    # becomes the identity (exact: each output is one input times 1 plus zeros)
    own["context_proj.weight"] = torch.eye(D)
    own["context_proj.bias"] = torch.zeros(D)
    own["mask_token"] = torch.zeros_like(own["mask_token"])
    own["latent_norm.mean"] = torch.zeros(fields["channels"])
    own["latent_norm.std"] = torch.full((fields["channels"],), 1.0 / latent_scale)
    own["latent_norm.bound"] = torch.tensor(float("inf"))  # DiT samples with clip_denoised=False
    model.load_state_dict(own)
    return model.eval()


def _describe(fields: dict) -> str:
    return (f"dim {fields['dim']}, depth {fields['depth']}, patch {fields['patch']}, grid {tuple(fields['grid'])}, "
            f"channels {fields['channels']}, mlp_ratio {fields['mlp_ratio']}")


def _dit_fields(*, dim: int, depth: int, channels: int, patch: int, side: int, classes: int, hidden: int,
                mlp_norm_eps: float | None, time_freq_shift: float) -> dict:
    """The DiTConfig of a published DiT from the sizes its weights show."""
    fields = dict(name="dit", grid=(side, side), channels=channels, patch=patch, dim=dim, depth=depth,
                  mlp_ratio=hidden / dim, objective="ddpm", ddpm_steps=1000, ddpm_schedule="linear",
                  cross_attention=False, conditioner=ClassConfig(dim=dim, num_classes=classes), p_uncond=0.1,
                  position="sincos", norm_eps=1e-6, mlp_norm_eps=mlp_norm_eps, time_freq_shift=time_freq_shift)
    if dim in DIT_HEADS:
        fields["heads"] = DIT_HEADS[dim]
    return fields


def _eps_rows(w: Tensor, p: int, channels: int, source: str, path: Path) -> Tensor:
    """The output layer's rows [p p Cout, ...] -> the epsilon rows [p p C, ...]: rows are (p q c),
    and with learn_sigma (Cout = 2C) channels C.. are the variance interpolation."""
    out = w.shape[0] // (p * p)
    if out * p * p != w.shape[0] or out not in (channels, 2 * channels):
        raise ValueError(f"{path}: {source} has {w.shape[0]} rows; a DiT with patch {p} and {channels} latent "
                         f"channels has {p * p * channels} (or {2 * p * p * channels} with learn_sigma)")
    return w.reshape(p * p, out, *w.shape[1:])[:, :channels].reshape(p * p * channels, *w.shape[1:])


def _patch_weight(w: Tensor, source: str, path: Path) -> Tensor:
    """Conv2d patch embedding [D, C, p, p] -> Linear weight [D, p p C] on (p q c) patches."""
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"{path}: {source} must be a square Conv2d kernel [D, C, p, p], got {list(w.shape)}")
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def _depth(keys: list[str], prefix: str, path: Path) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not found or found != set(range(len(found))):
        raise ValueError(f"{path}: expected blocks {prefix}0.. {prefix}n-1, found indices {sorted(found)}")
    return len(found)


class _Keys:
    """The peer's state dict, taken key by key; what is left at the end was not understood."""

    def __init__(self, state: dict[str, Tensor], path: Path, layout: str) -> None:
        self.state, self.path, self.layout = dict(state), path, layout
        self.mapped: Mapped = {}

    def put(self, ours: str, theirs: str, value: Tensor | None = None) -> None:
        """Map the peer's `theirs` (taken as it is, or `value` computed from it) to our `ours`."""
        self.mapped[ours] = (theirs, self.take(theirs) if value is None else value)

    def put_label_table(self, source: str, table: Tensor) -> None:
        """DiT's label table [K + 1, D]: rows 0..K-1 the classes, the last the null class."""
        self.mapped["conditioner.embed.weight"] = (source, table[:-1])
        self.mapped["conditioner.null_token"] = (source, table[-1:][None])

    def put_final(self, modulation: str, linear: str, p: int, channels: int) -> None:
        """The final layer: its adaLN modulation as it is, and the epsilon rows of its output linear."""
        for kind in ("weight", "bias"):
            self.put(f"final.modulation.1.{kind}", f"{modulation}.{kind}")
            source = f"{linear}.{kind}"
            self.put(f"final.linear.{kind}", source, _eps_rows(self.take(source), p, channels, source, self.path))

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise ValueError(f"{self.path}: missing key {key!r} of the {self.layout} DiT layout")
        return self.state.pop(key).float()

    def done(self) -> None:
        if self.state:
            extra = sorted(self.state)
            raise ValueError(f"{self.path}: {len(extra)} key(s) outside the {self.layout} DiT layout, e.g. "
                             f"{', '.join(extra[:5])}")


def _from_facebook(state: dict[str, Tensor], path: Path) -> tuple[dict, Mapped]:
    keys = _Keys(state, path, "facebookresearch")
    put, m = keys.put, keys.mapped

    conv = keys.take("x_embedder.proj.weight")
    D, C, p = conv.shape[0], conv.shape[1], conv.shape[-1]
    put("in_proj.weight", "x_embedder.proj.weight", _patch_weight(conv, "x_embedder.proj.weight", path))
    put("in_proj.bias", "x_embedder.proj.bias")
    pos = keys.take("pos_embed")
    side = math.isqrt(pos.shape[-2])
    if pos.dim() != 3 or side * side != pos.shape[1]:
        raise ValueError(f"{path}: pos_embed must be [1, N, D] with N a square number of patches, "
                         f"got {list(pos.shape)}")
    m["pos.table"] = ("pos_embed", pos[0])
    for i in (0, 2):
        for kind in ("weight", "bias"):
            put(f"time_emb.mlp.{i}.{kind}", f"t_embedder.mlp.{i}.{kind}")
    table = keys.take("y_embedder.embedding_table.weight")  # [K + 1, D]: the last row is the null class
    keys.put_label_table("y_embedder.embedding_table.weight", table)
    depth = _depth(list(keys.state), "blocks.", path)
    for i in range(depth):
        for ours, theirs in (("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj"), ("mlp.fc", "mlp.fc1"),
                             ("mlp.proj", "mlp.fc2"), ("modulation.1", "adaLN_modulation.1")):
            for kind in ("weight", "bias"):
                put(f"blocks.{i}.{ours}.{kind}", f"blocks.{i}.{theirs}.{kind}")
    keys.put_final("final_layer.adaLN_modulation.1", "final_layer.linear", p, C)
    keys.done()
    fields = _dit_fields(dim=D, depth=depth, channels=C, patch=p, side=side * p, classes=table.shape[0] - 1,
                         hidden=m["blocks.0.mlp.fc.weight"][1].shape[0], mlp_norm_eps=None, time_freq_shift=0.0)
    return fields, m


def _from_diffusers(folder: Path) -> tuple[dict, Mapped]:
    if not (folder / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"  # a DiTPipeline folder
    files = [folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    if not (folder / "config.json").is_file() or not any(f.is_file() for f in files):
        raise FileNotFoundError(f"{folder}: a diffusers DiT folder holds config.json and "
                                "diffusion_pytorch_model.safetensors (or .bin)")
    cfg = {**DIFFUSERS_DEFAULTS, **read_json(folder / "config.json")}
    # DiT folders from before diffusers split DiTTransformer2DModel out name Transformer2DModel (same keys)
    if cfg.get("_class_name", "DiTTransformer2DModel") not in ("DiTTransformer2DModel", "Transformer2DModel"):
        raise ValueError(f"{folder / 'config.json'}: a {cfg['_class_name']}, not a diffusers DiT transformer")
    want = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "norm_elementwise_affine": False,
            "attention_bias": True}
    for key, value in want.items():
        if cfg[key] != value:
            raise ValueError(f"{folder / 'config.json'}: {key} is {cfg[key]!r}; latentforge's DiT reproduces "
                             f"{key}={value!r} only")
    if cfg["num_embeds_ada_norm"] is None:
        raise ValueError(f"{folder / 'config.json'}: num_embeds_ada_norm is null: not a class-conditional DiT")
    path = next(f for f in files if f.is_file())
    keys = _Keys(read_weights(path), path, "diffusers")
    put, m = keys.put, keys.mapped

    p, C = cfg["patch_size"], cfg["in_channels"]
    heads, D = cfg["num_attention_heads"], cfg["num_attention_heads"] * cfg["attention_head_dim"]
    put("in_proj.weight", "pos_embed.proj.weight", _patch_weight(keys.take("pos_embed.proj.weight"),
                                                                 "pos_embed.proj.weight", path))
    put("in_proj.bias", "pos_embed.proj.bias")
    depth = _depth(list(keys.state), "transformer_blocks.", path)
    # every block carries its own timestep and label embedders: one shared copy, checked equal
    shared = {"time_emb.mlp.0": "timestep_embedder.linear_1", "time_emb.mlp.2": "timestep_embedder.linear_2",
              "class": "class_embedder.embedding_table"}
    for ours, theirs in shared.items():
        for kind in ("weight",) if ours == "class" else ("weight", "bias"):
            first = f"transformer_blocks.0.norm1.emb.{theirs}.{kind}"
            value = keys.take(first)
            for i in range(1, depth):
                other = f"transformer_blocks.{i}.norm1.emb.{theirs}.{kind}"
                if not torch.equal(keys.take(other), value):
                    raise ValueError(f"{path}: {other} differs from {first}; latentforge's DiT shares one timestep "
                                     "and label embedder across blocks, as the original DiT does")
            if ours == "class":  # [K + 1, D]: the last row is the null class
                keys.put_label_table(first, value)
            else:
                m[f"{ours}.{kind}"] = (first, value)
    for i in range(depth):
        block = f"transformer_blocks.{i}"
        for kind in ("weight", "bias"):
            qkv = [keys.take(f"{block}.attn1.to_{n}.{kind}") for n in "qkv"]
            m[f"blocks.{i}.attn.qkv.{kind}"] = (f"{block}.attn1.to_q/k/v.{kind}", torch.cat(qkv))
            put(f"blocks.{i}.attn.proj.{kind}", f"{block}.attn1.to_out.0.{kind}")
            put(f"blocks.{i}.mlp.fc.{kind}", f"{block}.ff.net.0.proj.{kind}")
            put(f"blocks.{i}.mlp.proj.{kind}", f"{block}.ff.net.2.{kind}")
            put(f"blocks.{i}.modulation.1.{kind}", f"{block}.norm1.linear.{kind}")
    keys.put_final("proj_out_1", "proj_out_2", p, C)
    keys.done()
    fields = _dit_fields(dim=D, depth=depth, channels=C, patch=p, side=cfg["sample_size"],
                         classes=cfg["num_embeds_ada_norm"], hidden=m["blocks.0.mlp.fc.weight"][1].shape[0],
                         mlp_norm_eps=cfg["norm_eps"], time_freq_shift=1.0)
    fields["heads"] = heads
    return fields, m
