"""P32 IA-RED² at toy scale: interpreters drop uninformative patch tokens of a ViT classifier.

Task: one Shapes object (64x64, `ShapesConfig(size=64, min_objects=1, max_objects=1)`) on a cluttered
canvas: Gaussian pixel noise everywhere, random-colour speckle blobs and scattered random-colour
pixels on the background (never on the object), drawn afresh for every training batch. Label = the
object's colour x size (12 classes; `--label shape` gives its shape, 3 classes, which this ViT learns
too slowly for the time budget: 74 % after 600 steps); the object covers ~13 % of the 64 patches.
Model: `TokenDropViT` (nn/token_drop.py): width 64, 4 blocks, 4 heads, CLS token; interpreters
before blocks 0 and 2 (two groups of two blocks).

Recipe: (1) train the ViT with patch dropout (half the examples lose a random fraction of patches,
so a frozen ViT can still read an image from its object's patches; see `random_keeps`); (2) freeze
it, train interpreter 1 with REINFORCE (stage 2 keeps all), then interpreter 2 (stage 1
thresholded), 4 draws per image with a leave-one-out baseline; (3) fine-tune the ViT with the
interpreters fixed.

Measured (one thread; times are ratios within this run):
- the full model's test accuracy and throughput (images/s on a batch of `eval_batch` images);
- the speed-up vs accuracy curve over the inference threshold (0.3 .. 0.7), before and after the
  fine-tune: accuracy, keep fraction (patches alive after the last stage), FLOPs per image and
  throughput of `gathered_forward`;
- interpretability at threshold 0.5, per stage: IoU between the kept patches and the object's
  patches (>= 4 of a patch's 64 pixels belong to the object), vs random keeping of the same count
  per image and vs the same count of top patches by the full model's CLS attention (last layer, and
  the mean over layers).

Claims checked: keep ~50 % with accuracy drop < 1 pt; throughput >= 1.3x; kept-set IoU >> random
(>= 2x) and > CLS-attention top-k.

    python benchmarks/token_drop.py [--threads 1] [--label colour_size] [--stages 0 2] [--summary cls]
        [--out benchmarks/results/token_drop.json]

`efficiency_rows(quick)` gives the efficiency table's rows (benchmarks/efficiency.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from latentforge.data.shapes import BACKGROUND, COLORS, SHAPES, SIZES, ShapesConfig, sample_and_render
from latentforge.eval.cost import CostRow, count_flops, inference_cost, parameter_count, peak_bytes
from latentforge.eval.speed import median_time
from latentforge.nn.token_drop import TokenDropConfig, TokenDropViT, policy_reward, reinforce_loss

PAPER = "P32 IA-RED2"
TASK = "colour x size of one object on a cluttered 64x64 canvas (12 classes)"


@dataclass
class BenchConfig:
    train_images: int = 4000  # rendered once; the clutter is drawn afresh every batch
    test_images: int = 1000
    batch: int = 64
    backbone_steps: int = 300
    backbone_lr: float = 2e-3
    stages: tuple[int, ...] = (0, 2)  # blocks the interpreters sit before
    summary: str = "cls"  # the interpreters' query: "cls" or "mean" (of the alive patch tokens)
    policy_steps: int = 150  # per interpreter stage
    policy_lr: float = 5e-3
    wrong_penalty: float = 2.0  # the reward of a wrong prediction is minus this
    policy_samples: int = 4  # keep-decision draws per image (the baseline is the other draws' mean reward)
    finetune_steps: int = 100
    finetune_lr: float = 3e-4
    eval_batch: int = 250
    noise_std: float = 12.0  # Gaussian pixel noise (0..255 scale), everywhere
    blobs: int = 8  # random-colour speckle rectangles per image
    blob_side: tuple[int, int] = (5, 14)  # their side range in pixels
    speckle: float = 0.04  # fraction of background pixels set to a random colour
    patch_dropout: float = 0.9  # the ViT trains with up to this fraction of patches dropped (0: never)
    object_pixels: int = 4  # a patch is an object patch when this many of its pixels are the object's
    label: str = "colour_size"  # "shape" (3 classes) or "colour_size" (12)
    seed: int = 0


def model_config(cfg: BenchConfig) -> TokenDropConfig:
    """ViT w64, 4 blocks, 4 heads; interpreters before `cfg.stages` (default 0 and 2: two groups of two blocks)."""
    classes = len(SHAPES) if cfg.label == "shape" else len(COLORS) * len(SIZES)
    return TokenDropConfig(classes=classes, dim=64, depth=4, heads=4, stages=cfg.stages, summary=cfg.summary,
                           wrong_penalty=cfg.wrong_penalty)


# --- data ---------------------------------------------------------------------------


@dataclass
class Split:
    clean: Tensor  # uint8 [n, 64, 64, 3]
    object_mask: Tensor  # bool [n, 64, 64]: pixels the object covers (anti-aliased edges included)
    labels: Tensor  # int64 [n]: see `label_of`


def label_of(obj, label: str) -> int:  # noqa: ANN001 (a ShapeObject)
    """The class of an object: its shape (3 classes), or its colour x size (12 classes)."""
    if label == "shape":
        return SHAPES.index(obj.shape)
    return tuple(COLORS).index(obj.color) * len(SIZES) + SIZES.index(obj.size)


def render_split(split: str, n: int, label: str) -> Split:
    scenes, images = sample_and_render(ShapesConfig(size=64, min_objects=1, max_objects=1), split, range(n),
                                       workers=1)
    clean = torch.from_numpy(images)
    mask = (clean != torch.tensor(BACKGROUND, dtype=torch.uint8)).any(dim=-1)
    labels = torch.tensor([label_of(s.objects[0], label) for s in scenes])
    return Split(clean, mask, labels)


def add_clutter(clean: Tensor, object_mask: Tensor, cfg: BenchConfig, gen: torch.Generator) -> Tensor:
    """Clean renders uint8 [n, H, W, 3] -> cluttered images in [-1, 1], [n, 3, H, W]."""
    n, H, W, _ = clean.shape
    x = clean.float()
    # speckle blobs: rectangles of per-pixel random colours, textured, so they are never a shape
    lo, hi = cfg.blob_side
    side = torch.randint(lo, hi + 1, (n, cfg.blobs, 2), generator=gen)                    # [n, K, 2]
    corner = (torch.rand(n, cfg.blobs, 2, generator=gen) * (torch.tensor([H, W]) - side + 1)).long()
    ys = torch.arange(H).view(1, 1, H, 1)
    xs = torch.arange(W).view(1, 1, 1, W)
    inside = ((ys >= corner[..., 0, None, None]) & (ys < (corner + side)[..., 0, None, None])
              & (xs >= corner[..., 1, None, None]) & (xs < (corner + side)[..., 1, None, None]))  # [n, K, H, W]
    clutter = inside.any(dim=1) | (torch.rand(n, H, W, generator=gen) < cfg.speckle)           # [n, H, W]
    clutter &= ~object_mask
    colours = torch.rand(n, H, W, 3, generator=gen) * 255
    x = torch.where(clutter[..., None], colours, x)
    x = x + cfg.noise_std * torch.randn(x.shape, generator=gen)
    return (x.clamp(0, 255) / 127.5 - 1).permute(0, 3, 1, 2).contiguous()


def object_patches(object_mask: Tensor, patch: int, min_pixels: int) -> Tensor:
    """bool [n, H, W] -> bool [n, N]: patches (raster order) holding >= min_pixels object pixels."""
    counts = F.avg_pool2d(object_mask[:, None].float(), patch) * patch * patch               # [n, 1, h, w]
    return counts.flatten(1) >= min_pixels


# --- training -------------------------------------------------------------------------


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def random_keeps(batch: int, model_cfg: TokenDropConfig, max_drop: float, gen: torch.Generator) -> list[Tensor]:
    """Patch dropout for the ViT's training: half the examples keep all patches, the others drop a random
    fraction (uniform in [0, max_drop]) of them at the first stage. A ViT trained on all tokens only
    misreads a scene from its object's patches alone (a frozen one then gives REINFORCE no reason to
    keep them); DeiT on ImageNet is robust to missing patches already, ours learns it here."""
    drop = torch.rand(batch, 1, generator=gen) * max_drop * (torch.rand(batch, 1, generator=gen) < 0.5)
    first = torch.rand(batch, model_cfg.patches, generator=gen) >= drop                  # [B, N]
    return [first] + [torch.ones_like(first)] * (len(model_cfg.stages) - 1)


def train_backbone(model: TokenDropViT, data: Split, cfg: BenchConfig, steps: int, lr: float,
                   gen: torch.Generator, fixed_policy: bool = False) -> list[float]:
    """Cross-entropy training of the ViT (all tokens), or, with fixed_policy, of the ViT under the
    interpreters' thresholded decisions (the fine-tune). Returns seconds per step."""
    params = model.backbone_parameters()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    model.train()
    times = []
    for step in range(steps):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup=min(100, steps // 10 + 1))
        idx = torch.randint(len(data.labels), (cfg.batch,), generator=gen)
        images = add_clutter(data.clean[idx], data.object_mask[idx], cfg, gen)
        if fixed_policy:
            logits = model.masked_forward(images).logits
        elif cfg.patch_dropout:
            logits = model.masked_forward(images, keeps=random_keeps(len(idx), model.cfg, cfg.patch_dropout, gen)
                                          ).logits
        else:
            logits = model(images)
        loss = F.cross_entropy(logits, data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def train_interpreters(model: TokenDropViT, data: Split, cfg: BenchConfig, gen: torch.Generator
                       ) -> tuple[list[float], list[dict]]:
    """REINFORCE, one stage at a time, the ViT frozen: stage s samples, earlier stages threshold,
    later ones keep all. Returns seconds per step and a short log."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()  # no dropout anyway; the ViT is fixed
    n_stages = len(model.cfg.stages)
    times, log = [], []
    for s in range(n_stages):
        params = list(model.interpreters[s].parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=cfg.policy_lr)
        decisions = ["threshold"] * s + ["sample"] + ["all"] * (n_stages - s - 1)
        rewards, keeps = [], []
        for step in range(cfg.policy_steps):
            start = time.perf_counter()
            # each image `policy_samples` times in a row, the same clutter, its own keep decisions
            idx = torch.randint(len(data.labels), (cfg.batch // cfg.policy_samples,), generator=gen)
            images = add_clutter(data.clean[idx], data.object_mask[idx], cfg, gen)
            images = images.repeat_interleave(cfg.policy_samples, dim=0)
            labels = data.labels[idx].repeat_interleave(cfg.policy_samples)
            out = model.masked_forward(images, decisions, generator=gen)
            reward = policy_reward(out.logits, labels, out.keep_fraction, model.cfg)
            loss = reinforce_loss(out.log_probs[s], reward, cfg.policy_samples)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - start)
            rewards.append(float(reward.mean()))
            keeps.append(float(out.keep_fraction.mean()))
            if (step + 1) % 50 == 0:
                row = {"stage": s, "step": step + 1, "reward": statistics.mean(rewards[-50:]),
                       "keep": statistics.mean(keeps[-50:])}
                log.append(row)
                print(json.dumps(row), flush=True)
        for p in params:
            p.requires_grad_(False)
    return times, log


# --- evaluation -------------------------------------------------------------------------


@dataclass
class TestSet:
    images: Tensor  # [n, 3, 64, 64] in [-1, 1], clutter fixed
    labels: Tensor
    objects: Tensor  # bool [n, N]: object patches


def make_test_set(cfg: BenchConfig, model_cfg: TokenDropConfig, n: int) -> TestSet:
    data = render_split("test", n, cfg.label)
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    images = add_clutter(data.clean, data.object_mask, cfg, gen)
    return TestSet(images, data.labels, object_patches(data.object_mask, model_cfg.patch, cfg.object_pixels))


@torch.no_grad()
def evaluate(model: TokenDropViT, test: TestSet, eval_batch: int, threshold: float | None) -> dict:
    """Accuracy and keep fraction of the full model (threshold None) or of `gathered_forward`."""
    model.eval()
    right, keeps, kept_sets = 0, [], []  # kept_sets: per batch, per stage, bool [b, N]
    for start in range(0, len(test.labels), eval_batch):
        images = test.images[start:start + eval_batch]
        if threshold is None:
            logits = model(images)
            keeps.append(torch.ones(len(images)))
        else:
            out = model.gathered_forward(images, threshold)
            logits = out.logits
            keeps.append(out.keep_fraction)
            kept_sets.append(out.keeps)
        right += int((logits.argmax(-1) == test.labels[start:start + eval_batch]).sum())
    result = {"accuracy": right / len(test.labels), "keep_fraction": float(torch.cat(keeps).mean())}
    if kept_sets:
        result["kept"] = [torch.cat(stage) for stage in zip(*kept_sets)]  # per stage, bool [n, N]
    return result


def speed(model: TokenDropViT, images: Tensor, threshold: float | None, repeats: int = 5) -> dict:
    """Images per second, FLOPs per image and peak bytes of one inference call on `images`."""
    model.eval()

    def call() -> None:
        with torch.no_grad():
            model(images) if threshold is None else model.gathered_forward(images, threshold)

    seconds = median_time(call, warmup=1, repeats=repeats)["median_s"]
    return {"images_per_s": len(images) / seconds, "seconds": seconds,
            "flops_per_image": count_flops(call) / len(images), "peak_bytes": peak_bytes(call)}


@torch.no_grad()
def paired_speedup(model: TokenDropViT, images: Tensor, threshold: float, rounds: int = 7) -> float:
    """Median over rounds of plain seconds / token-drop seconds, the two timed back to back, so that a
    shared machine's changing load hits both alike."""
    model.eval()
    model(images), model.gathered_forward(images, threshold)  # warm-up
    ratios = []
    for _ in range(rounds):
        start = time.perf_counter()
        model(images)
        middle = time.perf_counter()
        model.gathered_forward(images, threshold)
        ratios.append((middle - start) / (time.perf_counter() - middle))
    return statistics.median(ratios)


@torch.no_grad()
def cls_attention(model: TokenDropViT, images: Tensor) -> Tensor:
    """The full model's attention of the CLS query over the patch tokens, per layer, mean over heads:
    [L, B, N]."""
    x = model.tokens(images)
    maps = []
    for block in model.transformer.blocks:
        attn = block.attn
        q, k, _ = attn.qkv(block.norm1(x)).chunk(3, dim=-1)
        B, T, _ = x.shape
        q = q[:, :1].view(B, 1, attn.heads, attn.head_dim).transpose(1, 2)        # [B, H, 1, Dh]
        k = k.view(B, T, attn.heads, attn.head_dim).transpose(1, 2)                 # [B, H, T, Dh]
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim), dim=-1)  # [B, H, 1, T]
        maps.append(weights[:, :, 0, 1:].mean(dim=1))                               # [B, N]
        x = block(x)
    return torch.stack(maps)


def iou(a: Tensor, b: Tensor) -> Tensor:
    """Per-row IoU of bool sets [n, N] -> [n] (1 where both are empty)."""
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def top_k_sets(scores: Tensor, k: Tensor) -> Tensor:
    """bool [n, N]: each row's k[i] highest-scoring entries."""
    ranks = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return ranks < k[:, None]


def interpretability(model: TokenDropViT, test: TestSet, kept: Tensor, eval_batch: int, seed: int) -> dict:
    """Mean IoU with the object's patches of a kept set bool [n, N], of random sets of the same size per
    image, and of the same number of top patches by the full model's CLS attention."""
    k = kept.sum(1)
    gen = torch.Generator().manual_seed(seed)
    random_iou = torch.stack([iou(top_k_sets(torch.rand(kept.shape, generator=gen), k), test.objects)
                              for _ in range(20)]).mean(0)
    attn = torch.cat([cls_attention(model, test.images[s:s + eval_batch])
                      for s in range(0, len(test.labels), eval_batch)], dim=1)      # [L, n, N]
    return {"kept_iou": float(iou(kept, test.objects).mean()),
            "random_iou": float(random_iou.mean()),
            "cls_attention_last_layer_iou": float(iou(top_k_sets(attn[-1], k), test.objects).mean()),
            "cls_attention_mean_layers_iou": float(iou(top_k_sets(attn.mean(0), k), test.objects).mean()),
            "object_patch_fraction": float(test.objects.float().mean()),
            "kept_fraction": float(kept.float().mean()),
            "object_recall": float(((kept & test.objects).sum(1) / test.objects.sum(1).clamp(min=1)).mean())}


# --- the whole run ------------------------------------------------------------------------


@dataclass
class Trained:
    model: TokenDropViT  # ViT + trained interpreters, ViT not fine-tuned
    finetuned: TokenDropViT  # the same after the fine-tune
    test: TestSet
    backbone_step_s: float
    policy_step_s: float
    finetune_step_s: float | None
    policy_log: list[dict]


def train_all(cfg: BenchConfig, model_cfg: TokenDropConfig) -> Trained:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = render_split("train", cfg.train_images, cfg.label)
    test = make_test_set(cfg, model_cfg, cfg.test_images)
    model = TokenDropViT(model_cfg)
    start = time.perf_counter()
    backbone_times = train_backbone(model, data, cfg, cfg.backbone_steps, cfg.backbone_lr, gen)
    print(f"backbone: {cfg.backbone_steps} steps in {time.perf_counter() - start:.0f} s; "
          f"accuracy {evaluate(model, test, cfg.eval_batch, None)['accuracy']:.3f}", flush=True)
    policy_times, log = train_interpreters(model, data, cfg, gen)
    finetuned = TokenDropViT(model_cfg)
    finetuned.load_state_dict(model.state_dict())
    ft_times = train_backbone(finetuned, data, cfg, cfg.finetune_steps, cfg.finetune_lr, gen, fixed_policy=True)
    for m in (model, finetuned):
        m.eval().requires_grad_(False)
    return Trained(model, finetuned, test, statistics.median(backbone_times), statistics.median(policy_times),
                   statistics.median(ft_times) if ft_times else None, log)


def efficiency_rows(quick: bool = False) -> list[CostRow]:
    """The plain ViT and token dropping (threshold 0.5; frozen ViT, and after the fine-tune)."""
    torch.set_num_threads(1)
    cfg = BenchConfig()
    # shorter than the benchmark's defaults, to fit the table's 4 minutes
    cfg = dataclasses.replace(cfg, train_images=3000, test_images=500, backbone_steps=220, policy_steps=150,
                              finetune_steps=80)
    if quick:
        cfg = dataclasses.replace(cfg, train_images=500, test_images=200, backbone_steps=20, policy_steps=10,
                                  finetune_steps=5, eval_batch=100)
    model_cfg = model_config(cfg)
    run = train_all(cfg, model_cfg)
    images = run.test.images[:cfg.eval_batch]
    infer_what = f"classify a batch of {len(images)} images"
    plain_acc = evaluate(run.model, run.test, cfg.eval_batch, None)["accuracy"]

    def row(technique: str, model: TokenDropViT, threshold: float | None, train_step_s: float | None,
            note: str) -> CostRow:
        def call() -> None:
            with torch.no_grad():
                model(images) if threshold is None else model.gathered_forward(images, threshold)
        ev = evaluate(model, run.test, cfg.eval_batch, threshold)
        cost = inference_cost(call, repeats=5)
        # the plain model has no interpreters
        params = parameter_count(model) - (parameter_count(model.interpreters) if threshold is None else 0)
        keep = f"; keeps {100 * ev['keep_fraction']:.0f}% of patches" if threshold is not None else ""
        return CostRow(TASK, technique, PAPER, params, cost["flops"], cost["peak_bytes"], train_step_s,
                       cost["infer_s"], infer_what, "accuracy", ev["accuracy"], plain_acc, True, note + keep)

    return [row("plain", run.model, None, run.backbone_step_s,
                "ViT w64 d4, 64 patches + CLS, all tokens (trained with patch dropout)"),
            row("token drop (frozen ViT)", run.model, 0.5, run.policy_step_s,
                "2 interpreters (REINFORCE), p > 0.5, ViT frozen"),
            row("token drop + fine-tune", run.finetuned, 0.5, run.finetune_step_s,
                "same interpreters, ViT fine-tuned on the kept tokens")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbone-steps", type=int, default=BenchConfig.backbone_steps)
    parser.add_argument("--policy-steps", type=int, default=BenchConfig.policy_steps)
    parser.add_argument("--finetune-steps", type=int, default=BenchConfig.finetune_steps)
    parser.add_argument("--stages", type=int, nargs="+", default=list(BenchConfig.stages))
    parser.add_argument("--summary", choices=("cls", "mean"), default=BenchConfig.summary)
    parser.add_argument("--label", choices=("colour_size", "shape"), default=BenchConfig.label)
    parser.add_argument("--out", default="benchmarks/results/token_drop.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BenchConfig(backbone_steps=args.backbone_steps, policy_steps=args.policy_steps,
                      finetune_steps=args.finetune_steps, label=args.label, stages=tuple(args.stages),
                      summary=args.summary)
    model_cfg = model_config(cfg)
    t0 = time.perf_counter()
    run = train_all(cfg, model_cfg)
    images = run.test.images[:cfg.eval_batch]

    full = evaluate(run.model, run.test, cfg.eval_batch, None)
    full.update(speed(run.model, images, None))
    print("full", json.dumps(full), flush=True)
    curve = []
    for name, model in (("frozen", run.model), ("finetuned", run.finetuned)):
        for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
            ev = evaluate(model, run.test, cfg.eval_batch, threshold)
            kept = ev.pop("kept")
            ev.update(speed(model, images, threshold))
            ev.update({"backbone": name, "threshold": threshold,
                       "speedup": paired_speedup(model, images, threshold),
                       "flops_ratio": ev["flops_per_image"] / full["flops_per_image"],
                       "accuracy_drop_pts": 100 * (full["accuracy"] - ev["accuracy"])})
            if threshold == 0.5:
                # the first interpreter's keep set is the heatmap; later stages may rightly drop the object
                # too, once the CLS token has read it
                ev["interpretability"] = {f"stage_{s + 1}": interpretability(model, run.test, k, cfg.eval_batch,
                                                                             cfg.seed)
                                          for s, k in enumerate(kept)}
            curve.append(ev)
            print(json.dumps(ev), flush=True)

    at_half = {r["backbone"]: r for r in curve if r["threshold"] == 0.5}
    best = at_half["finetuned"]
    interp = best["interpretability"]["stage_1"]
    claims = {
        "keep_about_half_with_drop_below_1pt": {
            "held": best["accuracy_drop_pts"] < 1.0 and best["keep_fraction"] <= 0.6,
            "keep_fraction": best["keep_fraction"], "accuracy_drop_pts": best["accuracy_drop_pts"]},
        "throughput_at_least_1.3x": {"held": best["speedup"] >= 1.3, "speedup": best["speedup"]},
        "kept_iou_much_above_random": {"held": interp["kept_iou"] >= 2 * interp["random_iou"],
                                       "kept": interp["kept_iou"], "random": interp["random_iou"]},
        "kept_iou_above_cls_attention_topk": {
            "held": interp["kept_iou"] > max(interp["cls_attention_last_layer_iou"],
                                             interp["cls_attention_mean_layers_iou"]),
            "kept": interp["kept_iou"], "cls_last": interp["cls_attention_last_layer_iou"],
            "cls_mean": interp["cls_attention_mean_layers_iou"]},
    }
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "torch": torch.__version__},
        "bench_config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(model_cfg),
        "train": {"backbone_step_s": run.backbone_step_s, "policy_step_s": run.policy_step_s,
                  "finetune_step_s": run.finetune_step_s, "policy_log": run.policy_log},
        "full": full, "curve": curve, "claims": claims, "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(claims, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
