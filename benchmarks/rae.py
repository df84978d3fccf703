"""P6 RAE's decoder check at toy scale: does noise-augmented decoder training make the decoder read
noisy latents better?

A frozen MP3 ViT encoder (tokenizers/rae.py; random weights, or `--encoder FILE`, a safetensors
state dict of a pretrained `MP3Encoder` of the same shape) turns Shapes scenes (32 px) into 8 x 8 x 96
latents, normalised per element; two ViT decoders (width 128, depth 4) are trained the same steps on
the same batches, with training noise sigma ~ U(0, tau), tau = 0 and tau = 0.8. Held-out scenes are
decoded from their latents with added noise sigma = 0, 0.3 and 0.8; the L1 error in [-1, 1] units is
reported beside the mean image's.
Claim (details-P1-P17.md section 6, check 3): at sigma = 0.3 the tau = 0.8 decoder has the lower error.

    python benchmarks/rae.py [--steps 600] [--encoder FILE] [--threads 1]

Writes benchmarks/results/rae.json.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from latentforge.atomic import write_json
from latentforge.data.shapes import ShapesConfig, sample_and_render
from latentforge.tokenizers.rae import RAEConfig, RAETokenizer

SIGMAS = (0.0, 0.3, 0.8)


def images(n: int, split: str) -> torch.Tensor:
    _, x = sample_and_render(ShapesConfig(), split, range(n), workers=1)
    return torch.as_tensor(x).permute(0, 3, 1, 2).float() / 127.5 - 1  # [n, 3, 32, 32] in [-1, 1]


def train(tau: float, data: torch.Tensor, steps: int, batch: int, encoder: str | None) -> tuple[RAETokenizer, float]:
    torch.manual_seed(0)
    rae = RAETokenizer(RAEConfig(noise_tau=tau))
    if encoder:
        rae.load_encoder(encoder)
    rae.train()
    opt = torch.optim.AdamW([p for p in rae.parameters() if p.requires_grad], 1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in range(steps):
        loss = rae.loss({"image": data[torch.randint(len(data), (batch,), generator=g)]})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return rae.eval(), (time.perf_counter() - start) / steps


@torch.no_grad()
def errors(rae: RAETokenizer, held_out: torch.Tensor) -> dict[str, float]:
    z = rae.encode(held_out)
    out = {}
    for sigma in SIGMAS:
        noisy = z + sigma * torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
        out[f"sigma_{sigma}"] = F.l1_loss(rae.decode(noisy), held_out).item()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument("--encoder", default=None, help="safetensors state dict of a pretrained MP3Encoder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/rae.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data, held_out = images(args.train_size, "train"), images(args.val_size, "val")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "args": vars(args), "mean_image_l1": F.l1_loss(data.mean(0, keepdim=True).expand_as(held_out),
                                                               held_out).item()}
    for tau in (0.0, 0.8):
        rae, step_s = train(tau, data, args.steps, args.batch, args.encoder)
        result[f"tau_{tau}"] = {**errors(rae, held_out), "step_s": step_s}
        print(f"tau {tau}:", result[f"tau_{tau}"], flush=True)
    result["claim_sigma_0.3_lower_with_noise_training"] = (result["tau_0.8"]["sigma_0.3"]
                                                          < result["tau_0.0"]["sigma_0.3"])
    result["seconds"] = time.perf_counter() - start
    write_json(args.out, result)
    print(result["claim_sigma_0.3_lower_with_noise_training"], f"({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
