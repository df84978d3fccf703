"""Load the image autoencoders people publish into `ldm_kl` / `ldm_vq` tokenizers, from local files.

Formats (`detect_format` names them):
- "diffusers_kl": a diffusers `AutoencoderKL` folder (config.json + diffusion_pytorch_model.safetensors
  or .bin): SD 1.x/2.x, SDXL, the 16-channel SD3 / FLUX VAEs. Their `scaling_factor` and
  `shift_factor` become the tokenizer's; a pipeline folder with a `vae/` subfolder works too.
- "diffusers_vq": a diffusers `VQModel` folder.
- "ldm_kl": an original LDM / CompVis KL checkpoint: bare `encoder.` / `decoder.` / `quant_conv.`
  keys (MAR's kl16.ckpt as {"model": ...}, LDM's first-stage models as {"state_dict": ...}) or the
  `first_stage_model.` part of a whole latent-diffusion checkpoint.
- "ldm_vq": a taming-transformers VQGAN or LDM VQ checkpoint (the same layout plus
  `quantize.embedding.weight`).
- "llamagen_vq": LlamaGen's VQ-16 / VQ-8 (FoundationVision/LlamaGen
  tokenizer/tokenizer_image/vq_model.py): `conv_blocks.{i}.res.{j}` names, l2-normalised codes.

Every format is first renamed to the LDM layout (the names of latentforge/tokenizers/ldm.py), then
the architecture is read off the tensor shapes (ch, ch_mult, num_res_blocks, z_channels, embed_dim,
which levels have attention), so no YAML is needed; keyword overrides replace any inferred field
(e.g. image_size=512). What the shapes cannot say comes from the peer's config.json when there is
one (norm groups, sample size, latent scale) and LDM's values otherwise (32 groups, 256 pixels, and
scaling_factor 1 with a warning: pass the published one).
Errors name the file and the key or shape at fault. Weights are read with
`latentforge.serialization.read_weights` (pickle refused).
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentforge.serialization import CONFIG_NAME, from_pretrained, read_json, read_weights
from latentforge.tokenizers.base import Tokenizer
from latentforge.tokenizers.ldm import LDMKLConfig, LDMKLTokenizer, LDMVQConfig, LDMVQTokenizer

FORMATS = ("diffusers_kl", "diffusers_vq", "ldm_kl", "ldm_vq", "llamagen_vq")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
# Training-only parts of published checkpoints (LPIPS + discriminator, EMA copies, usage buffers).
IGNORED_PREFIXES = ("loss.", "model_ema.", "discriminator.", "quantize.codebook_used",
                    "quantize.embedding_ema", "quantize.cluster_size", "quantize.embed_avg")
KEPT_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.embedding.weight")


class PeerFormatError(ValueError):
    """A peer's file does not hold what its format promises; the message names the file and the key."""


# ----------------------------------------------------------------------------------------------
# Renaming into the LDM layout
# ----------------------------------------------------------------------------------------------

# diffusers attention modules (and their pre-0.14 names) -> LDM's AttnBlock
_ATTENTION = [(r"(\.attn(?:\.\d+|_1))\.group_norm\.", r"\1.norm."),
              (r"(\.attn(?:\.\d+|_1))\.(?:to_q|query)\.", r"\1.q."),
              (r"(\.attn(?:\.\d+|_1))\.(?:to_k|key)\.", r"\1.k."),
              (r"(\.attn(?:\.\d+|_1))\.(?:to_v|value)\.", r"\1.v."),
              (r"(\.attn(?:\.\d+|_1))\.(?:to_out\.0|proj_attn)\.", r"\1.proj_out.")]

DIFFUSERS_RULES = [
    (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
    (r"^encoder\.down_blocks\.(\d+)\.attentions\.", r"encoder.down.\1.attn."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.", r"decoder.up.R\1.block."),   # R: index counted from the end
    (r"^decoder\.up_blocks\.(\d+)\.attentions\.", r"decoder.up.R\1.attn."),
    (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", r"decoder.up.R\1.upsample."),
    (r"\.conv_norm_out\.", ".norm_out."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    *_ATTENTION,
]

LLAMAGEN_RULES = [
    (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn_1."),
    (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.block_2."),
    (r"^encoder\.conv_blocks\.(\d+)\.res\.", r"encoder.down.\1.block."),
    (r"^encoder\.conv_blocks\.(\d+)\.", r"encoder.down.\1."),                 # .attn, .downsample
    (r"^decoder\.conv_blocks\.(\d+)\.res\.", r"decoder.up.R\1.block."),
    (r"^decoder\.conv_blocks\.(\d+)\.", r"decoder.up.R\1."),                  # .attn, .upsample
]

_ATTN_WEIGHT = re.compile(r"\.(?:attn\.\d+|attn_1)\.(?:q|k|v|proj_out)\.weight$")


def _levels(state: dict[str, Tensor], pattern: str) -> int:
    found = {int(m[1]) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def to_ldm_layout(state: dict[str, Tensor], fmt: str, source: str = "state dict") -> dict[str, Tensor]:
    """A peer's state dict in format `fmt` -> the same tensors under LDM names (see module docstring).

    Keys of training-only parts are dropped; any other key outside the autoencoder raises
    PeerFormatError naming it. diffusers' attention projections (Linear [C, C]) become 1x1
    convolutions [C, C, 1, 1]; the decoder's levels, which diffusers and LlamaGen list from the
    coarsest, are renumbered from the finest as LDM does.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    rules = {"diffusers_kl": DIFFUSERS_RULES, "diffusers_vq": DIFFUSERS_RULES, "llamagen_vq": LLAMAGEN_RULES}.get(fmt, [])
    up = r"^decoder\.(?:up_blocks|conv_blocks)\.(\d+)\." if rules else r"^decoder\.up\.(\d+)\."
    levels = _levels(state, up)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        if not key.startswith(KEPT_PREFIXES):
            raise PeerFormatError(f"{source}: key {key!r} is not part of a {fmt} autoencoder (expected keys "
                                  f"under {', '.join(KEPT_PREFIXES)})")
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        new = re.sub(r"^decoder\.up\.R(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.", new)
        if _ATTN_WEIGHT.search(new) and value.dim() == 2:
            value = value[:, :, None, None]  # Linear [C, C] -> Conv2d 1x1 [C, C, 1, 1]
        out[new] = value
    return out


# ----------------------------------------------------------------------------------------------
# The architecture, read off the shapes
# ----------------------------------------------------------------------------------------------


def infer_config(state: dict[str, Tensor], kind: str, source: str = "state dict") -> dict[str, Any]:
    """Config fields of an `ldm_kl` (kind "kl") or `ldm_vq` (kind "vq") tokenizer from an LDM-layout
    state dict: every field the tensor shapes determine."""

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise PeerFormatError(f"{source}: missing key {key!r} (needed to infer the architecture)")
        return state[key].shape

    ch, in_channels = shape("encoder.conv_in.weight")[:2]
    levels = _levels(state, r"^encoder\.down\.(\d+)\.")
    decoder_levels = _levels(state, r"^decoder\.up\.(\d+)\.")
    if levels == 0 or decoder_levels != levels:
        raise PeerFormatError(f"{source}: encoder has {levels} levels (encoder.down.*), decoder {decoder_levels} "
                              "(decoder.up.*): expected the same number")
    widths = [shape(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(levels)]
    if any(w % ch for w in widths):
        raise PeerFormatError(f"{source}: level widths {widths} are not multiples of conv_in's {ch} channels")
    blocks = len({m[1] for k in state if (m := re.match(r"^encoder\.down\.0\.block\.(\d+)\.", k))})
    if shape("decoder.conv_out.weight")[0] != in_channels:
        raise PeerFormatError(f"{source}: decoder.conv_out writes {shape('decoder.conv_out.weight')[0]} channels, "
                              f"encoder.conv_in reads {in_channels}: expected the same")
    z_channels = shape("decoder.conv_in.weight")[1]
    encoder_out = shape("encoder.conv_out.weight")[0]
    mid_attention = "encoder.mid.attn_1.q.weight" in state
    fields: dict[str, Any] = dict(
        in_channels=in_channels, ch=ch, ch_mult=tuple(w // ch for w in widths), num_res_blocks=blocks,
        z_channels=z_channels, mid_attention=mid_attention,
        encoder_attn_levels=tuple(i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state),
        decoder_attn_levels=tuple(i for i in range(levels) if f"decoder.up.{i}.attn.0.q.weight" in state),
        use_quant_conv="quant_conv.weight" in state, use_post_quant_conv="post_quant_conv.weight" in state)
    if kind == "kl":
        if encoder_out != 2 * z_channels:
            raise PeerFormatError(f"{source}: encoder.conv_out writes {encoder_out} channels; a KL autoencoder's "
                                  f"writes mean and log-variance, 2 x z_channels = {2 * z_channels}")
        if fields["use_post_quant_conv"]:
            fields["embed_dim"] = shape("post_quant_conv.weight")[1]
        elif fields["use_quant_conv"]:
            fields["embed_dim"] = shape("quant_conv.weight")[0] // 2
        else:
            fields["embed_dim"] = z_channels
    else:
        if encoder_out != z_channels:
            raise PeerFormatError(f"{source}: encoder.conv_out writes {encoder_out} channels, decoder.conv_in "
                                  f"reads {z_channels}: a VQ autoencoder's are the same")
        size, dim = shape("quantize.embedding.weight")
        fields["codebook"] = (size, dim)
    return fields


# ----------------------------------------------------------------------------------------------
# Detecting the format and reading the files
# ----------------------------------------------------------------------------------------------


def format_of_keys(state: dict[str, Tensor], source: str = "state dict") -> str:
    """The format of a bare state dict, from its key names."""
    if any(k.startswith("encoder.conv_blocks.") for k in state):
        return "llamagen_vq"
    vq = "quantize.embedding.weight" in state
    if any(k.startswith("encoder.down_blocks.") for k in state):
        return "diffusers_vq" if vq else "diffusers_kl"
    if any(k.startswith("encoder.down.") for k in state):
        return "ldm_vq" if vq else "ldm_kl"
    raise PeerFormatError(f"{source}: not an autoencoder checkpoint of a known layout: no encoder.down.*, "
                          f"encoder.down_blocks.* or encoder.conv_blocks.* keys (first keys: {list(state)[:5]})")


def _diffusers_folder(path: Path) -> Path | None:
    """The folder holding a diffusers autoencoder's config.json: `path` itself or its `vae/`."""
    for folder in (path, path / "vae"):
        cfg = folder / CONFIG_NAME
        if cfg.is_file() and isinstance(meta := read_json(cfg), dict) and "_class_name" in meta:
            return folder
    return None


def detect_format(path: str | os.PathLike) -> str:
    """One of FORMATS, or "latentforge" for a folder written by `save_pretrained`."""
    path = Path(path)
    if path.is_dir():
        if (path / CONFIG_NAME).is_file() and "kind" in (read_json(path / CONFIG_NAME) or {}):
            return "latentforge"
        folder = _diffusers_folder(path)
        if folder is None:
            raise PeerFormatError(f"{path}: a folder without a diffusers config.json (with '_class_name') or a "
                                  "latentforge one; give the weights file itself for LDM / taming / LlamaGen")
        cls = read_json(folder / CONFIG_NAME)["_class_name"]
        if cls not in ("AutoencoderKL", "VQModel"):
            raise PeerFormatError(f"{folder / CONFIG_NAME}: _class_name {cls!r} is not AutoencoderKL or VQModel")
        return "diffusers_kl" if cls == "AutoencoderKL" else "diffusers_vq"
    return format_of_keys(_first_stage(read_weights(path)), str(path))


def _first_stage(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The autoencoder part of a whole latent-diffusion checkpoint (`first_stage_model.`), or all of it."""
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return state


_BLOCK_TYPES = {"DownEncoderBlock2D", "AttnDownEncoderBlock2D", "UpDecoderBlock2D", "AttnUpDecoderBlock2D"}


def _diffusers_settings(folder: Path) -> tuple[dict[str, Tensor], str, dict[str, Any]]:
    """Weights, a name for errors, and the config fields the shapes do not hold, of a diffusers folder."""
    cfg_file = folder / CONFIG_NAME
    cfg = read_json(cfg_file)
    blocks = [*cfg.get("down_block_types", ()), *cfg.get("up_block_types", ())]
    if unknown := [b for b in blocks if b not in _BLOCK_TYPES]:
        raise PeerFormatError(f"{cfg_file}: block types {unknown} are not LDM's (expected {sorted(_BLOCK_TYPES)})")
    if cfg.get("act_fn", "silu") != "silu" or cfg.get("norm_type", "group") != "group":
        raise PeerFormatError(f"{cfg_file}: act_fn {cfg.get('act_fn')!r} / norm_type {cfg.get('norm_type')!r}: "
                              "only silu and group norm (LDM's) are supported")
    weights = next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise PeerFormatError(f"{folder}: no weights file (looked for {', '.join(DIFFUSERS_WEIGHTS)})")
    size = cfg.get("sample_size", 256)
    settings: dict[str, Any] = {"norm_groups": cfg.get("norm_num_groups", 32),
                                "image_size": size if isinstance(size, int) else int(size[0])}
    if cfg["_class_name"] == "AutoencoderKL":
        settings["scaling_factor"] = cfg.get("scaling_factor", 1.0)
        settings["shift_factor"] = cfg.get("shift_factor") or 0.0
    return read_weights(weights), str(weights), settings


def load_autoencoder(path: str | os.PathLike, source_format: str | None = None, **overrides: Any) -> Tokenizer:
    """A published image autoencoder as an `ldm_kl` or `ldm_vq` tokenizer, in eval mode.

    Args:
        path: a diffusers AutoencoderKL / VQModel folder (or a pipeline folder with `vae/`), or a
            weights file (.safetensors, .ckpt, .pt, .bin) in the LDM, taming or LlamaGen layout;
            a folder written by `save_pretrained` loads as it was saved.
        source_format: one of FORMATS to skip detection (e.g. "llamagen_vq").
        **overrides: config fields to set instead of the inferred ones (image_size=512,
            scaling_factor=0.2325, norm_groups=..., kl_weight=..., recon_loss=...); for VQ the
            quantizer's fields too (l2_normalize=..., commitment=...).

    Returns:
        The tokenizer; `tok.save_pretrained`-style saving is `latentforge.serialization.save_pretrained(tok, dir)`.
    """
    path = Path(path)
    if path.is_file():  # read once: the keys say the format
        state, source = _first_stage(read_weights(path)), str(path)
        fmt = source_format or format_of_keys(state, source)
    else:
        fmt = source_format or detect_format(path)
    if fmt == "latentforge":
        if overrides:
            raise TypeError(f"{path} is a saved latentforge model: its config is fixed, overrides "
                            f"{sorted(overrides)} do not apply")
        return from_pretrained(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown source_format {fmt!r}; expected one of {', '.join(FORMATS)}")
    settings: dict[str, Any] = {}
    if path.is_dir():
        folder = _diffusers_folder(path)
        if folder is None or not fmt.startswith("diffusers"):
            raise PeerFormatError(f"{path}: a {fmt} model is a weights file, not a folder; a folder must hold a "
                                  "diffusers config.json (here or in vae/)")
        state, source, settings = _diffusers_settings(folder)
    elif fmt in ("ldm_kl", "diffusers_kl") and "scaling_factor" not in overrides:
        # a bare file does not say its latent scale: raw latents unless told
        settings["scaling_factor"] = 1.0
        warnings.warn(f"{path}: no config gives the latent scale; using scaling_factor=1.0 (raw latents). Pass "
                      "scaling_factor= (SD 1.x/2.x 0.18215, SDXL 0.13025, MAR's KL-16 0.2325) to set it.",
                      stacklevel=2)
    if fmt == "llamagen_vq":
        settings["l2_normalize"] = True  # LlamaGen's codebook_l2_norm: cosine lookup of normalised codes
    return build_from_state(to_ldm_layout(state, fmt, source), fmt.endswith("_vq"), source, settings | overrides)


def build_from_state(state: dict[str, Tensor], vq: bool, source: str, settings: dict[str, Any]) -> Tokenizer:
    """An LDM-layout state dict + settings (config fields, VQ quantizer fields) -> the loaded tokenizer."""
    fields = infer_config(state, "vq" if vq else "kl", source)
    config_cls: Callable[..., Any] = LDMVQConfig if vq else LDMKLConfig
    names = {f.name for f in dataclasses.fields(config_cls)} - {"name", "quantizer"}
    if vq:
        size, dim = fields.pop("codebook")
        q_names = {f.name for f in dataclasses.fields(LDMVQConfig().quantizer)} - {"name", "codebook_size", "dim"}
        q_settings = {k: settings.pop(k) for k in list(settings) if k in q_names and k not in names}
        # A loaded codebook is kept as published: no k-means restart, and no revival of codes that a
        # small fine-tuning batch happens not to use (dead_threshold 0).
        q_fields = dict(codebook_size=size, dim=dim, l2_normalize=False, kmeans_init=False, dead_threshold=0.0)
        fields["quantizer"] = dataclasses.replace(LDMVQConfig().quantizer, **(q_fields | q_settings))
        names |= q_names
    if unknown := sorted(set(settings) - names):
        raise TypeError(f"unknown override(s) {unknown}; valid: {', '.join(sorted(names))}")
    config = config_cls(**(fields | settings))
    tok = (LDMVQTokenizer if vq else LDMKLTokenizer)(config)
    load_weights(tok, {("quantizer.codebook" if k == "quantize.embedding.weight" else k): v for k, v in state.items()},
                 source)
    return tok.eval()


def load_weights(tok: Tokenizer, state: dict[str, Tensor], source: str) -> None:
    """Copy `state` into `tok`, refusing a missing, extra or misshapen tensor by name."""
    own = tok.state_dict()
    # the quantizer's bookkeeping buffers and the discriminator are latentforge's, not the peer's
    needed = [k for k in own if not k.startswith(("discriminator.", "train_step", "quantizer.initialized",
                                                  "quantizer.usage"))]
    if missing := [k for k in needed if k not in state]:
        raise PeerFormatError(f"{source}: missing {len(missing)} tensor(s) the architecture needs, e.g. {missing[:3]}")
    if extra := [k for k in state if k not in own]:
        raise PeerFormatError(f"{source}: {len(extra)} tensor(s) the inferred architecture has no place for, "
                              f"e.g. {extra[:3]} (override the config fields?)")
    for key in needed:
        if state[key].shape != own[key].shape:
            raise PeerFormatError(f"{source}: {key} has shape {list(state[key].shape)}, the architecture "
                                  f"needs {list(own[key].shape)}")
    tok.load_state_dict({k: state[k].float() for k in needed}, strict=False)
