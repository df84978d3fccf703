"""Published DiT weights in latentforge's DiT (peers/dit.py `load_dit`): how exactly does our
`predict` reproduce the peer's epsilon, at the published sizes?

Reference: the real diffusers `DiTTransformer2DModel` with random weights (N(0, 1/fan_in) matrices,
N(0, 0.1^2) biases, N(0, 1) embeddings: O(1) activations everywhere; one timestep/label embedder
copied into every block, as in converted checkpoints).
- format "diffusers": the module saved with `save_pretrained`, loaded from the folder; compared with
  its own forward.
- format "facebookresearch": the same module switched to the original DiT's math (timestep
  frequencies over half steps, `downscale_freq_shift` 0; LayerNorm eps 1e-6 before the MLP too),
  its weights written in models.py's layout as a .pt file (q/k/v fused into attn.qkv, the stored
  sin-cos pos_embed), loaded from the file. The key map here mirrors the loader's, so this row checks
  numerics at scale; tests/test_peers_dit.py checks the layout's meaning against a forward written
  from models.py's equations.
Inputs: 4 latents [4, C, H, W] ~ N(0, 1), DDPM times (0, 250, 999, 617), labels (3, null, 0, null).
Ablation rows load the same files with one exactness option reverted (what each option buys).
Sizes: tiny (the test's), DiT-S/2, DiT-B/2 and DiT-XL/2 at 256 px (latent 32 x 32 x 4), 1000 classes,
learn_sigma. XL (675M parameters, about 6 GB of memory at peak) runs only when asked.

    python benchmarks/peer_parity_dit.py [--sizes tiny,S/2,B/2] [--threads 1]

Writes benchmarks/results/peer_parity_dit.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentforge.atomic import write_json, write_text  # noqa: E402
from latentforge.peers import load_dit  # noqa: E402

# name -> (latent side, patch, width, depth, heads, classes): models.py's presets at 256 px
SIZES = {"tiny": (8, 2, 32, 2, 2, 10), "S/2": (32, 2, 384, 12, 6, 1000), "B/2": (32, 2, 768, 12, 12, 1000),
         "L/2": (32, 2, 1024, 24, 16, 1000), "XL/2": (32, 2, 1152, 28, 16, 1000)}
C = 4
# one exactness option reverted per format: the error it would leave
ABLATIONS = {"diffusers": {"time_freq_shift 0 (DiT's)": {"time_freq_shift": 0.0},
                           "one eps 1e-5 (our default)": {"norm_eps": 1e-5, "mlp_norm_eps": None}},
             "facebookresearch": {"time_freq_shift 1 (diffusers')": {"time_freq_shift": 1.0},
                                  "eps 1e-5 (our default)": {"norm_eps": 1e-5}}}


def random_peer(size: str, gen: torch.Generator):
    """A diffusers DiT of a published size with random O(1)-activation weights."""
    from diffusers import DiTTransformer2DModel

    side, p, D, depth, heads, classes = SIZES[size]
    peer = DiTTransformer2DModel(sample_size=side, patch_size=p, in_channels=C, out_channels=2 * C, num_layers=depth,
                                 num_attention_heads=heads, attention_head_dim=D // heads,
                                 num_embeds_ada_norm=classes, norm_type="ada_norm_zero").eval()
    with torch.no_grad():
        for name, w in peer.named_parameters():
            if w.dim() >= 2 and "embedding" not in name:
                w.copy_(torch.randn(w.shape, generator=gen) / math.sqrt(w[0].numel()))
            elif w.dim() >= 2:
                w.copy_(torch.randn(w.shape, generator=gen))
            else:
                w.copy_(0.1 * torch.randn(w.shape, generator=gen))
        shared = peer.transformer_blocks[0].norm1.emb.state_dict()
        for block in peer.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(shared)
    return peer


def as_original_dit(peer) -> None:
    """Switch a diffusers DiT to the original DiT's math (the two places the port differs)."""
    for block in peer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
        block.norm3.eps = 1e-6


def facebook_layout(peer) -> dict[str, torch.Tensor]:
    """A diffusers DiT's weights under facebookresearch/DiT models.py's keys."""
    sd = {k: v.detach().clone() for k, v in peer.state_dict().items()}
    emb = "transformer_blocks.0.norm1.emb."
    out = {"x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
           "pos_embed": peer.pos_embed.pos_embed.detach().clone(),
           "y_embedder.embedding_table.weight": sd[emb + "class_embedder.embedding_table.weight"]}
    for kind in ("weight", "bias"):
        out[f"t_embedder.mlp.0.{kind}"] = sd[f"{emb}timestep_embedder.linear_1.{kind}"]
        out[f"t_embedder.mlp.2.{kind}"] = sd[f"{emb}timestep_embedder.linear_2.{kind}"]
        out[f"final_layer.adaLN_modulation.1.{kind}"] = sd[f"proj_out_1.{kind}"]
        out[f"final_layer.linear.{kind}"] = sd[f"proj_out_2.{kind}"]
        for i in range(len(peer.transformer_blocks)):
            b = f"transformer_blocks.{i}."
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([sd[f"{b}attn1.to_{n}.{kind}"] for n in "qkv"])
            out[f"blocks.{i}.attn.proj.{kind}"] = sd[f"{b}attn1.to_out.0.{kind}"]
            out[f"blocks.{i}.mlp.fc1.{kind}"] = sd[f"{b}ff.net.0.proj.{kind}"]
            out[f"blocks.{i}.mlp.fc2.{kind}"] = sd[f"{b}ff.net.2.{kind}"]
            out[f"blocks.{i}.adaLN_modulation.1.{kind}"] = sd[f"{b}norm1.linear.{kind}"]
    return out


def inputs(size: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    side, classes = SIZES[size][0], SIZES[size][5]
    x = torch.randn(4, C, side, side, generator=gen)
    return x, torch.tensor([0, 250, 999, 617]), torch.tensor([3, classes, 0, classes])  # `classes`: the null class


def ours(g, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Our epsilon [B, C, H, W] for DiT's inputs; label K (the null class) is the null context."""
    K = g.config.conditioner.num_classes
    context = g.encode_condition({"label": y.clamp(max=K - 1)}).where(y < K, g.conditioner.null(len(y)))
    return g.predict(x.permute(0, 2, 3, 1), t, context).permute(0, 3, 1, 2)


def parity(fmt: str, size: str, seed: int = 0, ablate: bool = True) -> dict:
    """Max abs error of load_dit's epsilon against the peer's, for one format and size, plus (ablate)
    the ablation errors, and both forwards' CPU times."""
    gen = torch.Generator().manual_seed(seed)
    peer = random_peer(size, gen)
    x, t, y = inputs(size, gen)
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "diffusers":
            path = Path(tmp) / "dit"
            peer.save_pretrained(path)
        else:
            as_original_dit(peer)
            path = Path(tmp) / "DiT.pt"
            torch.save(facebook_layout(peer), path)
        with torch.no_grad():
            start = time.perf_counter()
            want = peer(x, timestep=t, class_labels=y).sample[:, :C]
            peer_s = time.perf_counter() - start
        del peer
        gc.collect()
        heads = SIZES[size][4]
        start = time.perf_counter()
        g = load_dit(path, heads=heads)
        load_s = time.perf_counter() - start
        with torch.no_grad():
            start = time.perf_counter()
            got = ours(g, x, t, y)
            ours_s = time.perf_counter() - start
        params = sum(p.numel() for p in g.parameters())
        row = {"format": fmt, "size": size, "params": params, "params_M": round(params / 1e6, 1),
               "max_abs_err": float((got - want).abs().max()), "mean_abs_out": float(want.abs().mean()),
               "max_abs_out": float(want.abs().max()), "load_s": round(load_s, 2), "peer_forward_s": round(peer_s, 3),
               "ours_forward_s": round(ours_s, 3), "ablations": {}}
        del g
        gc.collect()
        for name, overrides in ABLATIONS[fmt].items() if ablate else ():
            g = load_dit(path, heads=heads, **overrides)
            with torch.no_grad():
                row["ablations"][name] = float((ours(g, x, t, y) - want).abs().max())
            del g
            gc.collect()
    return row


def parity_check(fmt: str, size: str = "B/2") -> Callable[[argparse.Namespace, Path], dict]:
    """This format's check in benchmarks/peer_parity.py's form: fn(args, work_dir) -> row."""
    def check(args: argparse.Namespace, work: Path) -> dict:
        r = parity(fmt, size, ablate=False)
        return {"check": f"DiT-{size}", "params": r["params"], "latent": [SIZES[size][0], SIZES[size][0], C],
                "errors": {"epsilon": r["max_abs_err"]}, "ref_max": {"epsilon": r["max_abs_out"]},
                "load_s": r["load_s"], "peer_s": r["peer_forward_s"], "ours_s": r["ours_forward_s"]}
    return check


def table(rows: list[dict]) -> str:
    lines = ["| format | size | params (M) | max abs err | mean abs out | ablation: err with the option reverted | "
             "load s | forward s (peer / ours) |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        abl = "; ".join(f"{k}: {v:.2g}" for k, v in r["ablations"].items())
        lines.append(f"| {r['format']} | DiT-{r['size']} | {r['params_M']} | {r['max_abs_err']:.2g} | "
                     f"{r['mean_abs_out']:.3g} | {abl} | {r['load_s']} | {r['peer_forward_s']} / {r['ours_forward_s']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,S/2,B/2", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--formats", default="diffusers,facebookresearch")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="the max abs error a load must stay within")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/peer_parity_dit.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    rows = []
    for size in args.sizes.split(","):
        for fmt in args.formats.split(","):
            row = parity(fmt, size)
            rows.append(row)
            print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    # exact: the same float32 operations as the peer's; an ablation's error says what its option buys
    claims = {"all_within_tolerance": all(r["max_abs_err"] <= args.tolerance for r in rows),
              "all_bitwise_equal": all(r["max_abs_err"] == 0 for r in rows),
              "every_option_changes_the_output": all(v > 0 for r in rows for v in r["ablations"].values())}
    result = dict(args=vars(args), rows=rows, claims=claims, torch=torch.__version__,
                  machine=platform.processor() or platform.machine(), seconds=round(time.time() - start, 1))
    out = Path(args.out)
    write_json(out, result)
    write_text(out.with_suffix(".md"), f"{table(rows)}\n\nclaims: {claims}\n")
    print(table(rows))
    print(claims, f"{result['seconds']} s")


if __name__ == "__main__":
    main()
