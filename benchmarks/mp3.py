"""P18 MP3 at toy scale: position-prediction pretraining, then low-label fine-tuning against scratch.

Data: Shapes scenes (32 px, 1-3 objects) on chirped-stripe backgrounds (`position_backgrounds`: a
patch's texture says where it is), 64 patches of 4 px. Unlabelled pretraining on `--pretrain-size`
training scenes; fine-tuning on the first `--labels` of them; validation on their own split.
Label (needs what and where): the shape (circle / square / triangle) of the object whose centre is
nearest the top-left corner; the majority class is reported as the floor.
Models: ViT width 96, depth 4, 4 heads (latentforge/pretraining/mp3.py), no position embeddings in
pretraining; keys/values restricted to a random 25 % of the tokens (eta = 0.75) in every layer.

Reported: held-out position top-1 (all tokens as context, and eta's context), pretraining seconds
per step at eta = 0.75 and at eta = 0 (same model, same batches, one thread, median of timed steps),
and fine-tuned validation accuracy at equal steps for: MP3 + a learned (zero-init) position table,
MP3 without one, scratch with one, scratch without one.
Claims (notes: details-P18-P34.md section 1): position top-1 > 50 % (chance 1/64); MP3 + PE beats
scratch + PE by >= 3 points; MP3 without PE >= scratch with PE; step time at eta 0.75 below eta 0.

    python benchmarks/mp3.py [--pretrain-steps 1500] [--finetune-steps 600] [--labels 1000] [--threads 1]
        [--save-encoder mp3_encoder.safetensors]

Writes benchmarks/results/mp3.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from latentforge.atomic import write_json
from latentforge.data.shapes import BACKGROUND, SHAPES, ShapesConfig, sample_and_render
from latentforge.pretraining.mp3 import MP3Classifier, MP3Config, MP3Encoder, position_backgrounds
from latentforge.serialization import save_state_dict


def scenes_and_images(n: int, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 3, 32, 32] in [0, 1] on chirped backgrounds, and labels [n]: the shape of the
    object nearest the top-left corner."""
    scenes, images = sample_and_render(ShapesConfig(), split, range(n), workers=1)
    images = position_backgrounds(images, BACKGROUND, seed)
    labels = [SHAPES.index(min(s.objects, key=lambda o: o.x**2 + o.y**2).shape) for s in scenes]
    return torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255, torch.tensor(labels)


def pretrain(encoder: MP3Encoder, images: torch.Tensor, steps: int, batch: int, lr: float) -> list[float]:
    """AdamW with a short warm-up; returns seconds per step."""
    opt = torch.optim.AdamW(encoder.parameters(), lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(1)
    seconds = []
    encoder.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 100)
        x = images[torch.randint(len(images), (batch,), generator=g)]
        start = time.perf_counter()
        loss = encoder.pretrain_loss(x, g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - start)
    encoder.eval()
    return seconds


def finetune(model: MP3Classifier, images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int,
             lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: MP3Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float(torch.cat([model(images[i:i + 250]).argmax(-1) for i in range(0, len(images), 250)]).eq(labels)
                 .float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--finetune-steps", type=int, default=600)
    ap.add_argument("--pretrain-size", type=int, default=4000)
    ap.add_argument("--labels", type=int, default=1000)
    ap.add_argument("--val-size", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-encoder", default=None, help="write the pretrained encoder here (safetensors), "
                    "e.g. for benchmarks/rae.py --encoder")
    ap.add_argument("--out", default="benchmarks/results/mp3.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # other jobs share the machine
    start = time.perf_counter()
    train_x, train_y = scenes_and_images(args.pretrain_size, "train", 0)
    val_x, val_y = scenes_and_images(args.val_size, "val", 1)
    config = MP3Config(dim=args.dim, depth=args.depth, heads=4, mask_ratio=args.mask_ratio)

    # step time: the same model and batches at eta and at 0, interleaved so load changes hit both
    timing = {}
    for eta in (args.mask_ratio, 0.0):
        torch.manual_seed(0)
        probe = MP3Encoder(dataclasses.replace(config, mask_ratio=eta))
        timing[eta] = statistics.median(pretrain(probe, train_x, args.timing_steps, args.batch, 1e-3)[5:])
    print("seconds per pretraining step:", timing, flush=True)

    torch.manual_seed(0)
    encoder = MP3Encoder(config)
    pretrain(encoder, train_x, args.pretrain_steps, args.batch, 1e-3)
    position = {"full_context": encoder.position_accuracy(val_x[:500]),
                "eta_context": encoder.position_accuracy(val_x[:500], full_context=False)}
    print("position top-1:", position, flush=True)
    if args.save_encoder:
        save_state_dict(encoder.state_dict(), args.save_encoder)

    labelled_x, labelled_y = train_x[:args.labels], train_y[:args.labels]
    results = {}
    for name, pretrained, pe in (("mp3+pe", True, True), ("mp3", True, False), ("scratch+pe", False, True),
                                 ("scratch", False, False)):
        torch.manual_seed(0)
        body = copy.deepcopy(encoder) if pretrained else MP3Encoder(config)
        model = MP3Classifier(body, len(SHAPES), position_embedding=pe)
        finetune(model, labelled_x, labelled_y, args.finetune_steps, args.batch, 5e-4)
        results[name] = accuracy(model, val_x, val_y)
        print(name, round(results[name], 4), flush=True)
    majority = float(np.bincount(val_y.numpy()).max() / len(val_y))
    claims = {"position_top1_above_50pct": position["full_context"] > 0.5,
              "mp3_pe_beats_scratch_pe_by_3pts": results["mp3+pe"] >= results["scratch+pe"] + 0.03,
              "mp3_without_pe_at_least_scratch_pe": results["mp3"] >= results["scratch+pe"],
              "eta_step_faster_than_eta0": timing[args.mask_ratio] < timing[0.0]}
    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
           "args": vars(args), "position_top1": position, "chance": 1 / config.tokens,
           "step_seconds": {str(k): v for k, v in timing.items()}, "finetune_accuracy": results,
           "majority_class": majority, "claims": claims, "seconds": time.perf_counter() - start}
    write_json(args.out, out)
    print(claims, f"({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
