"""Parity of latentforge's peer loaders at the published architectures: does each converted model
compute what the peer's own module computes?

For each format, a model of the published architecture with random weights (fixed seed) is built
the way the peer ships it, written to disk in the peer's format, loaded with latentforge's loader
and run beside the peer's module on the same images. Reported: the largest absolute error of the
encoder's output and of the decoder's output (and the largest |value| they are measured against),
whether VQ codes are identical, parameter count, load time and seconds for one encode + decode of
each implementation.

A check is `check_<name>(args, work_dir) -> row` (`--only <name>`), the row a dict with "check", "params", "latent" (a shape),
"errors" and "ref_max" ({what: value}), "peer_s", "ours_s", and optionally "codes_identical" /
"codes_used" and its own "tolerance".

Peers (`CHECKS`; a list of (format, function) entries, so other loaders' checks append to it):
- diffusers_kl / sd: diffusers AutoencoderKL with SD 1.x/2.x's config (SDXL's is the same shape);
- diffusers_kl / flux: the 16-channel SD3 / FLUX VAE config (no quant convs, shift_factor);
- diffusers_vq / ldm-vq-f4: diffusers VQModel with LDM's VQ-f4 config (8192 x 3 codes);
- ldm_kl / mar-kl16: MAR's KL-16 checkpoint layout ({"model": ...} .ckpt), against the diffusers
  AutoencoderKL filled from it by diffusers' own LDM converter;
- ldm_vq / taming-f16: taming's ImageNet VQGAN f16 16384 layout (.safetensors), same reference;
- llamagen_vq / vq-16: LlamaGen's VQ-16 (.pt, {"model": ...}), reference a diffusers VQModel of the
  same architecture with LlamaGen's l2-normalised lookup done by hand.
- dit_diffusers / dit_facebookresearch: load_dit's epsilon for DiT-B/2 at 256 px (4 latents, DDPM times,
  labels with the null class) against diffusers' DiTTransformer2DModel (switched to the original DiT's
  math for the facebookresearch .pt layout); see benchmarks/peer_parity_dit.py.
The LDM / taming / LlamaGen state dicts are the test's (tests/test_peers_autoencoders.py), written
from the published module code; their packages are not installable here.

    python benchmarks/peer_parity.py [--size 128] [--batch 2] [--only sd,flux] [--threads 1]

Writes benchmarks/results/peer_parity.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from diffusers import AutoencoderKL, VQModel  # noqa: E402
from peer_parity_dit import parity_check  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from test_peers_autoencoders import (  # noqa: E402
    ATTN_DOWN,
    ATTN_UP,
    DOWN,
    UP,
    diffusers_from_ldm,
    ldm_keys,
    llamagen_keys,
    llamagen_to_diffusers,
)

from latentforge.atomic import write_json, write_text  # noqa: E402
from latentforge.peers import load_autoencoder  # noqa: E402

TOLERANCE = 1e-5  # max abs error in fp32 the loaders promise


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def images(args: argparse.Namespace) -> torch.Tensor:
    """The same --batch random images in [-1, 1] for every check (seed 1)."""
    return torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def compare_kl(name: str, vae: AutoencoderKL, path: Path, x: torch.Tensor, scale: float, shift: float,
               **overrides) -> dict:
    """Encode (posterior mean, scaled) with both; decode the same random latents with both."""
    tok, load_s = timed(lambda: load_autoencoder(path, **overrides))
    with torch.no_grad():
        mean, peer_enc_s = timed(lambda: vae.encode(x).latent_dist.mean)
        z, ours_enc_s = timed(lambda: tok.encode(x))
        # a generator's latents in the tokenizer's units, decoded as diffusers' pipelines do
        z_gen = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
        ref, peer_dec_s = timed(lambda: vae.decode((z_gen.permute(0, 3, 1, 2) / scale + shift).contiguous()).sample)
        recon, ours_dec_s = timed(lambda: tok.decode(z_gen))
    want = nhwc((mean - shift) * scale)
    return {"check": name, "params": sum(p.numel() for p in tok.parameters()), "latent": list(z.shape[1:]),
            "errors": {"encode": err(z, want), "decode": err(recon, ref)},
            "ref_max": {"encode": float(want.abs().max()), "decode": float(ref.abs().max())},
            "load_s": load_s, "peer_s": peer_enc_s + peer_dec_s, "ours_s": ours_enc_s + ours_dec_s}


def compare_vq(name: str, vq: VQModel, path: Path, x: torch.Tensor, l2: bool = False, **overrides) -> dict:
    """Codes of both (diffusers' nearest code, or LlamaGen's cosine lookup by hand), then decode(codes)."""
    tok, load_s = timed(lambda: load_autoencoder(path, **overrides))
    book = vq.quantize.embedding.weight.detach()
    with torch.no_grad():
        def peer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            h = vq.encode(x).latents                                              # [B, D, h, w]
            if l2:
                codes = F.normalize(book, dim=-1)
                idx = torch.cdist(F.normalize(nhwc(h), dim=-1).reshape(-1, h.shape[1]), codes).argmin(1)
            else:
                codes, idx = book, vq.quantize(h)[2][2]
            idx = idx.view(h.shape[0], *h.shape[2:])                              # [B, h, w]
            # decode(codes): the code vectors themselves (diffusers' decode(h) would add the
            # straight-through z + (e - z), e up to rounding)
            quant = codes[idx].permute(0, 3, 1, 2).contiguous()
            return h, idx, vq.decode(quant, force_not_quantize=True).sample

        (h, idx, ref), peer_s = timed(peer)
        codes, enc_s = timed(lambda: tok.encode(x))
        recon, dec_s = timed(lambda: tok.decode(codes))
        # the encoder's own output (before the lookup), compared in the peer's space
        ours_h = tok.quant_conv(tok.encoder(x))
        # the exact nearest code (fp64) of the peer's vectors: how often each side finds it
        vectors = nhwc(h).reshape(-1, h.shape[1]).double()
        if l2:
            vectors, book = F.normalize(vectors, dim=-1), F.normalize(book.double(), dim=-1)
        exact = torch.cdist(vectors, book.double()).argmin(1)
    return {"check": name, "params": sum(p.numel() for p in tok.parameters()), "latent": list(codes.shape[1:]),
            "errors": {"encode": err(ours_h, h), "decode": err(recon, ref)},
            "ref_max": {"encode": float(h.abs().max()), "decode": float(ref.abs().max())},
            "codes_identical": bool(torch.equal(codes, idx)), "codes_used": int(codes.unique().numel()),
            "exact_nearest": {"peer": float((idx.reshape(-1) == exact).double().mean()),
                              "ours": float((codes.reshape(-1) == exact).double().mean())},
            "load_s": load_s, "peer_s": peer_s, "ours_s": enc_s + dec_s}


# ----------------------------------------------------------------------------------------------
# The checks: one per published format / architecture
# ----------------------------------------------------------------------------------------------

SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, down_block_types=(DOWN,) * 4,
          up_block_types=(UP,) * 4)


def check_sd(args: argparse.Namespace, work: Path) -> dict:
    x = images(args)
    torch.manual_seed(0)
    vae = AutoencoderKL(latent_channels=4, sample_size=args.size, scaling_factor=0.18215, **SD).eval()
    vae.save_pretrained(work / "sd")
    return compare_kl("sd", vae, work / "sd", x, 0.18215, 0.0)


def check_flux(args: argparse.Namespace, work: Path) -> dict:
    x = images(args)
    torch.manual_seed(0)
    vae = AutoencoderKL(latent_channels=16, sample_size=args.size, scaling_factor=0.3611, shift_factor=0.1159,
                        use_quant_conv=False, use_post_quant_conv=False, **SD).eval()
    vae.save_pretrained(work / "flux")
    return compare_kl("flux", vae, work / "flux", x, 0.3611, 0.1159)


def check_vq_f4(args: argparse.Namespace, work: Path) -> dict:
    x = images(args)
    torch.manual_seed(0)
    vq = VQModel(block_out_channels=(128, 256, 512), layers_per_block=2, down_block_types=(DOWN,) * 3,
                 up_block_types=(UP,) * 3, latent_channels=3, num_vq_embeddings=8192, vq_embed_dim=3,
                 sample_size=args.size).eval()
    # diffusers initialises the codebook uniform in +-1/K: every code within 1e-4 of the origin, so the
    # nearest code is an fp32 tie almost everywhere. A trained codebook spreads out like the latents.
    with torch.no_grad():
        vq.quantize.embedding.weight.normal_(generator=torch.Generator().manual_seed(0))
    vq.save_pretrained(work / "vq_f4")
    return compare_vq("ldm-vq-f4", vq, work / "vq_f4", x)


def check_mar_kl16(args: argparse.Namespace, work: Path) -> dict:
    x = images(args)
    # MAR's KL-16: ch 128, ch_mult (1, 1, 2, 2, 4), 2 blocks, z = embed = 16, encoder attention at the
    # 16 x 16 level of 256 px images (level 4), none in the decoder's levels
    state = ldm_keys(128, (1, 1, 2, 2, 4), 2, 16, 16, (4,), (), kl=True).filled(seed=0)
    vae = AutoencoderKL(block_out_channels=(128, 128, 256, 256, 512), layers_per_block=2, latent_channels=16,
                        down_block_types=(DOWN,) * 4 + (ATTN_DOWN,), up_block_types=(UP,) * 5, sample_size=args.size)
    vae = diffusers_from_ldm(vae, state, (4,), (), blocks=2, levels=5)
    torch.save({"model": state}, work / "kl16.ckpt")
    return compare_kl("mar-kl16", vae, work / "kl16.ckpt", x, 0.2325, 0.0, image_size=args.size,
                      scaling_factor=0.2325)


def check_taming_f16(args: argparse.Namespace, work: Path) -> dict:
    x = images(args)
    # taming's ImageNet VQGAN f16-16384: ch 128, ch_mult (1, 1, 2, 2, 4), 2 blocks, z = embed = 256,
    # attention at the 16 x 16 level in both halves
    state = ldm_keys(128, (1, 1, 2, 2, 4), 2, 256, 256, (4,), (4,), kl=False, codebook=16384).filled(seed=0)
    vq = VQModel(block_out_channels=(128, 128, 256, 256, 512), layers_per_block=2, latent_channels=256,
                 down_block_types=(DOWN,) * 4 + (ATTN_DOWN,), up_block_types=(ATTN_UP,) + (UP,) * 4,
                 num_vq_embeddings=16384, vq_embed_dim=256, sample_size=args.size)
    vq = diffusers_from_ldm(vq, state, (4,), (4,), blocks=2, levels=5)
    save_file(state, str(work / "vqgan_f16.safetensors"))
    return compare_vq("taming-f16", vq, work / "vqgan_f16.safetensors", x, image_size=args.size)


def check_llamagen(args: argparse.Namespace, work: Path) -> dict:
    x = images(args)
    # LlamaGen VQ-16: ch 128, ch_mult (1, 1, 2, 2, 4), 2 blocks, z 256, 16384 l2-normalised codes of 8
    state = llamagen_keys(128, (1, 1, 2, 2, 4), 2, 256, 8, codebook=16384).filled(seed=0)
    vq = VQModel(block_out_channels=(128, 128, 256, 256, 512), layers_per_block=2, latent_channels=256,
                 down_block_types=(DOWN,) * 4 + (ATTN_DOWN,), up_block_types=(ATTN_UP,) + (UP,) * 4,
                 num_vq_embeddings=16384, vq_embed_dim=8, sample_size=args.size)
    vq.load_state_dict(llamagen_to_diffusers(state), strict=True)
    torch.save({"model": state}, work / "vq_ds16_c2i.pt")
    return compare_vq("llamagen-vq16", vq.eval(), work / "vq_ds16_c2i.pt", x, l2=True, image_size=args.size)


CHECKS: list[tuple[str, Callable[[argparse.Namespace, Path], dict]]] = [
    ("diffusers_kl", check_sd), ("diffusers_kl", check_flux), ("diffusers_vq", check_vq_f4),
    ("ldm_kl", check_mar_kl16), ("ldm_vq", check_taming_f16), ("llamagen_vq", check_llamagen),
]
NAMES = {check.__name__.removeprefix("check_"): check for _, check in CHECKS}  # --only picks by these
# DiT generators (peers/dit.py; benchmarks/peer_parity_dit.py has the other sizes and the ablations)
CHECKS += [("dit_diffusers", parity_check("diffusers")), ("dit_facebookresearch", parity_check("facebookresearch"))]
NAMES.update(dit_diffusers=CHECKS[-2][1], dit_facebookresearch=CHECKS[-1][1])


def passed(row: dict) -> bool:
    tol = row.get("tolerance", TOLERANCE)
    return all(e <= tol for e in row["errors"].values()) and row.get("codes_identical") is not False


def table(result: dict) -> str:
    lines = ["| format | check | params | latent | max abs error (largest reference value) | codes identical | "
             "peer s | ours s | within tolerance |",
             "|---|---|---:|---|---|---|---:|---:|---|"]
    for r in result["rows"]:
        errors = ", ".join(f"{k} {v:.1e} ({r['ref_max'][k]:.2g})" for k, v in r["errors"].items())
        codes = "" if r.get("codes_identical") is None else f"{r['codes_identical']} ({r['codes_used']} used)"
        if "exact_nearest" in r:  # how often each side picked the exact (fp64) nearest code
            codes += f"; fp64 nearest: peer {r['exact_nearest']['peer']:.3f}, ours {r['exact_nearest']['ours']:.3f}"
        lines.append(f"| {r['format']} | {r['check']} | {r['params'] / 1e6:.1f} M | {'x'.join(map(str, r['latent']))} | "
                     f"{errors} | {codes} | {r['peer_s']:.2f} | {r['ours_s']:.2f} | "
                     f"{'yes' if passed(r) else 'NO'} ({r.get('tolerance', TOLERANCE):.0e}) |")
    m = result["meta"]
    return "\n".join(lines) + (f"\n\nfp32, random weights (seed 0); the autoencoders read {m['batch']} random images "
                               f"of {m['size']} px; {m['machine']}, {m['threads']} thread(s), torch {m['torch']}.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--only", default=",".join(NAMES), help=f"comma-separated, of {', '.join(NAMES)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/peer_parity.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wanted = {NAMES[n] for n in args.only.split(",") if n in NAMES}
    if unknown := [n for n in args.only.split(",") if n not in NAMES]:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    result = {"meta": {"size": args.size, "batch": args.batch, "threads": args.threads, "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
                       "tolerance": TOLERANCE}, "rows": []}
    out = Path(args.out)
    for fmt, check in CHECKS:
        if check not in wanted:
            continue
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            row = {"format": fmt, **check(args, Path(tmp))}
        result["rows"].append(row)
        errors = "  ".join(f"{k} err {v:.2e}" for k, v in row["errors"].items())
        print(f"{fmt:13s} {row['check']:14s} {errors}  codes identical {row.get('codes_identical')}  "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
        write_json(out, result)  # keep what is done if a later check fails
    write_text(out.with_suffix(".md"), table(result))
    print(table(result))


if __name__ == "__main__":
    main()
