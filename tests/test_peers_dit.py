"""Published DiT weights in latentforge's DiT (peers/dit.py): parity with the peers' forward passes.

Two references, at a tiny size (latent 8 x 8 x 4, patch 2, width 32, 2 blocks, 10 classes, learn_sigma):
  * diffusers: the real `DiTTransformer2DModel`, random weights, saved with `save_pretrained`;
  * facebookresearch/DiT (its package is not installable): a state dict with models.py's keys and
    random tensors, and `dit_reference` below, DiT.forward written from models.py's published
    equations with torch.nn.functional (explicit softmax attention, not SDPA).
Both must give our `predict` the same epsilon within 1e-5 (fp32) for DDPM times in [0, 1000) and
class labels including the null class K that classifier-free guidance uses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from latentforge.nn.embeddings import sincos_2d
from latentforge.peers import load_dit
from latentforge.serialization import from_pretrained, save_pretrained

K, C, P, SIDE, D, HEADS, DEPTH = 10, 4, 2, 8, 32, 2, 2


def _randomise(params: dict[str, torch.Tensor], gen: torch.Generator) -> None:
    """Weights of unit-scale outputs (1 / sqrt(fan in)), small random biases, unit embeddings: the
    activations stay O(1), so an error in any path shows."""
    with torch.no_grad():
        for name, p in params.items():
            if p.dim() >= 2 and "embedding" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _inputs(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.randn(4, C, SIDE, SIDE, generator=gen)  # DiT's input: scaled VAE latents, channels first
    t = torch.tensor([0, 250, 999, 617])
    y = torch.tensor([3, K, 0, K])  # K: the null class
    return x, t, y


def _ours(g, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Our epsilon [B, C, H, W] for DiT's inputs: label K is the conditioner's null context."""
    context = g.encode_condition({"label": y.clamp(max=K - 1)}).where(y < K, g.conditioner.null(len(y)))
    with torch.no_grad():
        return g.predict(x.permute(0, 2, 3, 1), t, context).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- facebookresearch/DiT


def published_sincos(dim: int, side: int) -> np.ndarray:
    """models.py's get_2d_sincos_pos_embed: meshgrid(w, h), halves [1D(grid[0]), 1D(grid[1])]."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)))
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def facebook_state(gen: torch.Generator, learn_sigma: bool = True) -> dict[str, torch.Tensor]:
    """A DiT state dict with models.py's keys and shapes (DiT(input_size=8, patch_size=2, ...))."""
    out = C * (2 if learn_sigma else 1)
    shapes = {"x_embedder.proj.weight": (D, C, P, P), "x_embedder.proj.bias": (D,),
              "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
              "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
              "y_embedder.embedding_table.weight": (K + 1, D),
              "final_layer.linear.weight": (P * P * out, D), "final_layer.linear.bias": (P * P * out,),
              "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,)}
    for i in range(DEPTH):
        for name, (rows, cols) in {"attn.qkv": (3 * D, D), "attn.proj": (D, D), "mlp.fc1": (4 * D, D),
                                   "mlp.fc2": (D, 4 * D), "adaLN_modulation.1": (6 * D, D)}.items():
            shapes[f"blocks.{i}.{name}.weight"], shapes[f"blocks.{i}.{name}.bias"] = (rows, cols), (rows,)
    state = {k: torch.empty(s) for k, s in shapes.items()}
    _randomise(state, gen)
    state["pos_embed"] = torch.from_numpy(published_sincos(D, SIDE // P)).float()[None]
    return state


def dit_reference(sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                  heads: int) -> torch.Tensor:
    """facebookresearch DiT.forward(x [B, C, H, W], t [B], y [B]) -> [B, Cout, H, W], from models.py."""
    def linear(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(h, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    B, dim = x.shape[0], sd["pos_embed"].shape[-1]
    p = sd["x_embedder.proj.weight"].shape[-1]
    # x_embedder (timm PatchEmbed: conv, flatten, transpose) + the stored sin-cos table
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]                                  # [B, N, D]
    N = h.shape[1]
    # TimestepEmbedder.timestep_embedding: 256 frequencies, cos first
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_emb = linear(F.silu(linear(torch.cat([torch.cos(args), torch.sin(args)], -1), "t_embedder.mlp.0")),
                   "t_embedder.mlp.2")
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]                               # [B, D]
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        b = f"blocks.{i}"
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            linear(F.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=1)
        a = modulate(F.layer_norm(h, (dim,), eps=1e-6), shift_msa, scale_msa)
        q, k, v = linear(a, f"{b}.attn.qkv").reshape(B, N, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
        a = (attn @ v).transpose(1, 2).reshape(B, N, dim)
        h = h + gate_msa.unsqueeze(1) * linear(a, f"{b}.attn.proj")
        m = modulate(F.layer_norm(h, (dim,), eps=1e-6), shift_mlp, scale_mlp)
        h = h + gate_mlp.unsqueeze(1) * linear(F.gelu(linear(m, f"{b}.mlp.fc1"), approximate="tanh"), f"{b}.mlp.fc2")
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    h = linear(modulate(F.layer_norm(h, (dim,), eps=1e-6), shift, scale), "final_layer.linear")
    # unpatchify: (p q c) per token -> [B, Cout, H, W]
    g, out = int(N ** 0.5), h.shape[-1] // (p * p)
    h = torch.einsum("nhwpqc->nchpwq", h.reshape(B, g, g, p, p, out))
    return h.reshape(B, out, g * p, g * p)


def test_sincos_table_matches_the_published_one():
    ours = sincos_2d((SIDE // P, SIDE // P), D)
    assert (ours - torch.from_numpy(published_sincos(D, SIDE // P)).float()).abs().max() <= 1e-7


@pytest.mark.parametrize("suffix,learn_sigma", [(".pt", True), (".safetensors", False)])
def test_facebookresearch_checkpoint_parity(tmp_path, suffix, learn_sigma):
    gen = torch.Generator().manual_seed(0)
    state = facebook_state(gen, learn_sigma)
    path = tmp_path / f"DiT-tiny{suffix}"
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))
    g = load_dit(path, heads=HEADS)
    assert (g.config.grid, g.config.patch, g.config.depth, g.config.conditioner.num_classes) == ((8, 8), 2, 2, K)
    x, t, y = _inputs(gen)
    with torch.no_grad():
        want = dit_reference(state, x, t, y, HEADS)[:, :C]  # the epsilon half
    assert want.abs().mean() > 0.3  # O(1) outputs: a wrong path would show
    assert (_ours(g, x, t, y) - want).abs().max() <= 1e-5


def test_diffusers_folder_parity(tmp_path):
    from diffusers import DiTTransformer2DModel

    gen = torch.Generator().manual_seed(1)
    peer = DiTTransformer2DModel(sample_size=SIDE, patch_size=P, in_channels=C, out_channels=2 * C,
                                 num_layers=DEPTH, num_attention_heads=HEADS, attention_head_dim=D // HEADS,
                                 num_embeds_ada_norm=K, norm_type="ada_norm_zero").eval()
    _randomise(dict(peer.named_parameters()), gen)
    # converted checkpoints hold one timestep/label embedder copied into every block
    for block in peer.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(peer.transformer_blocks[0].norm1.emb.state_dict())
    peer.save_pretrained(tmp_path / "dit")
    g = load_dit(tmp_path / "dit")
    assert g.config.heads == HEADS and g.config.time_freq_shift == 1.0 and g.config.mlp_norm_eps == 1e-5
    x, t, y = _inputs(gen)
    with torch.no_grad():
        want = peer(x, timestep=t, class_labels=y).sample[:, :C]
    assert want.abs().mean() > 0.3
    assert (_ours(g, x, t, y) - want).abs().max() <= 1e-5

    # blocks whose embedders differ cannot share ours: refused, naming the key
    with torch.no_grad():
        peer.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1.0)
    peer.save_pretrained(tmp_path / "odd")
    with pytest.raises(ValueError, match=r"transformer_blocks\.1\.norm1\.emb\.timestep_embedder\.linear_1\.bias"):
        load_dit(tmp_path / "odd")


def test_loaded_dit_samples_with_guidance(tmp_path):
    gen = torch.Generator().manual_seed(2)
    path = tmp_path / "dit.safetensors"
    save_file(facebook_state(gen), str(path))
    context_labels = {"label": torch.tensor([1, 7])}
    draws = []
    for scale in (1.0, 0.18215):  # latents scaled by the tokenizer (default), or raw SD-VAE ones
        g = load_dit(path, heads=HEADS, latent_scale=scale)
        z = g.sample(2, g.encode_condition(context_labels), generator=torch.Generator().manual_seed(0),
                     cfg_scale=4.0, steps=3)
        assert z.shape == (2, SIDE, SIDE, C) and torch.isfinite(z).all()
        draws.append(z)
    assert torch.allclose(draws[1] * 0.18215, draws[0], atol=1e-5)  # same draw, in the other units

    # convert once: the loaded DiT saves and reloads as a native latentforge generator
    save_pretrained(g, tmp_path / "native")
    again = from_pretrained(tmp_path / "native")
    x, t, y = _inputs(gen)
    assert again.config == g.config and torch.equal(_ours(again, x, t, y), _ours(g, x, t, y))


def test_errors_name_the_file_and_the_key(tmp_path):
    gen = torch.Generator().manual_seed(3)
    state = facebook_state(gen)
    path = tmp_path / "broken.safetensors"

    save_file({k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}, str(path))
    with pytest.raises(ValueError, match=r"broken\.safetensors: missing key 'blocks\.1\.mlp\.fc2\.bias'"):
        load_dit(path, heads=HEADS)

    save_file({**state, "blocks.0.attn.proj.weight": torch.zeros(D, D + 1)}, str(path))
    with pytest.raises(ValueError, match=r"broken\.safetensors: blocks\.0\.attn\.proj\.weight has shape \[32, 33\]"):
        load_dit(path, heads=HEADS)

    save_file({**state, "blocks.0.attn.q_norm.weight": torch.ones(16)}, str(path))
    with pytest.raises(ValueError, match=r"outside the facebookresearch DiT layout, e\.g\. blocks\.0\.attn\.q_norm"):
        load_dit(path, heads=HEADS)

    save_file(state, str(path))
    with pytest.raises(ValueError, match="pass heads="):  # width 32 is no published DiT's
        load_dit(path)
