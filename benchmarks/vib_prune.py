"""P14 VTrans at toy scale: VIB-mask structured pruning of the scene task's AR generator to a parameter
budget, with distillation from the unpruned teacher, against magnitude and random structured pruning.

Task and model: benchmarks/scene_task.py (Shapes 8 x 8 codes given the scene graph; ARGenerator width
128, depth 4, 4 heads, MLP 512). Only the generator's transformer is pruned (not its conditioner,
embeddings or head); "params" below are that transformer's, the budget a fraction of them.

1. Teacher: the plain generator, `--teacher-steps` steps.
2. VTrans (latentforge/nn/vib_prune.py): a copy of the teacher with VIB gates on heads (self and
   cross), FFN units, layers and, in the "+emb" variants, embedding (residual) dims. It trains for
   `--prune-steps` steps on CE + KL(teacher || student) + penalty * VIB penalty (weights at --lr,
   gates at --gate-lr). After each of `--rounds` rounds the lowest-log-alpha units are pruned (and
   any below log alpha 0), down to a budget that falls linearly to the final one. Then the masked
   model is physically pruned (gates folded into the sliced weights).
   Faster-VTrans ("mask-only"): the same run with every weight frozen, only the gates trained.
3. Baselines at the same budget, physically pruned at once: structured magnitude pruning of heads and
   FFN units by RMS weight, the same fraction of every layer's heads and units ("magnitude") or
   ranked over the whole stack ("magnitude_global"), and random head/unit pruning.
4. Then CE + distillation fine-tuning, so that every method trains the same number of steps after the
   teacher: `--finetune-steps` after VTrans's `--prune-steps`, and prune + finetune steps for the
   one-shot baselines. "unpruned" is the teacher itself trained those steps the same way: the
   teacher is short-trained, and this reference separates the effect of extra steps from pruning.

Reported per method: validation bits/token given the graph, transformer and generator parameters,
FLOPs per sample and median seconds for drawing 16 samples (KV cache), and the pruning's training
time (prune phase + fine-tune). Claims checked: at the budget, VIB beats magnitude and random;
embedding-dim pruning compresses further (to `--tight-budget`) at a small cost (VTrans + emb at the
tight budget loses under 5 % of the teacher's gap to a uniform guess against VTrans without emb at the
budget); mask-only lands within 3 % of full VTrans's bits in less time. One seed: the gate noise alone
moves VTrans's bits by about 0.01 between runs.

    python benchmarks/vib_prune.py [--teacher-steps 200] [--prune-steps 42] [--finetune-steps 28] \
        [--budget 0.5] [--tight-budget 0.35] [--threads 1] [--out benchmarks/results/vib_prune.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from latentforge.eval.cost import CostRow, inference_cost, parameter_count
from latentforge.generators.autoregressive import ARGenerator
from latentforge.generators.heads import code_nll
from latentforge.nn.vib_prune import (
    VIBConfig,
    VIBMasks,
    magnitude_scores,
    random_scores,
    slim_transformer,
    within_group_ranks,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: the shared task
from benchmarks.scene_task import (  # noqa: E402
    SceneTask,
    build_generator,
    load_task,
    sampler,
    teacher_logits,
    train_generator,
    val_bits,
)

SAMPLES = 16  # samples per timed sampling call


@dataclass
class PruneSettings:
    budget: float = 0.5           # fraction of the transformer's parameters to keep
    prune_steps: int = 42         # VTrans steps with gates (all rounds)
    rounds: int = 3               # prune after each round
    finetune_steps: int = 28      # after VTrans; one-shot baselines fine-tune prune + finetune steps
    lr: float = 1e-3              # weights, in the VTrans phase and the fine-tune
    gate_lr: float = 5e-2         # VIB gates (mu, log sigma^2)
    penalty: float = 1.0          # weight of the (unit-averaged) VIB penalty
    distill: float = 1.0          # weight of KL(teacher || student)
    threshold: float = 0.0        # log alpha below which a unit is pruned whatever the schedule
    batch: int = 32
    val_limit: int | None = 250   # validation scenes (None: all 500)
    timing_repeats: int = 3       # timed sampling calls per model (median)


def distill_loss(teacher: ARGenerator, weight: float):
    """loss_fn for train_generator: the student's code NLL + weight * KL(teacher || student), per token."""

    def loss_fn(model: ARGenerator, codes: Tensor, cond: dict[str, Tensor]) -> Tensor:
        flat = model.flat_codes(codes)
        logits = model.logits(flat, model.encode_condition(cond))                  # [B, N, V]
        target = F.log_softmax(teacher_logits(teacher, codes, cond).float(), -1)  # [B, N, V]
        kl = F.kl_div(F.log_softmax(logits.float(), -1), target, log_target=True, reduction="none").sum(-1)
        return code_nll(logits, flat) + weight * kl.mean()

    return loss_fn


def vtrans(teacher: ARGenerator, task: SceneTask, s: PruneSettings, config: VIBConfig, *, budget: float,
           mask_only: bool = False, seed: int = 2) -> tuple[ARGenerator, dict]:
    """VTrans's pruning phase on a copy of the teacher; returns the physically pruned student and a log."""
    student = copy.deepcopy(teacher)
    masks = VIBMasks(student.transformer, config).attach(student.transformer)
    total = masks.param_count()
    target = int(budget * total)
    for p in student.parameters():
        p.requires_grad_(not mask_only)
    groups = [{"params": list(masks.parameters()), "lr": s.gate_lr}]
    if not mask_only:
        groups.append({"params": list(student.parameters()), "lr": s.lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    distill = distill_loss(teacher, s.distill)
    g = torch.Generator().manual_seed(seed)
    student.train()
    masks.train()
    log, start = [], time.perf_counter()
    per_round = max(1, s.prune_steps // s.rounds)
    for r in range(1, s.rounds + 1):
        for _ in range(per_round):
            codes, cond = task.batch("train", torch.randint(len(task.codes["train"]), (s.batch,), generator=g))
            loss = distill(student, codes, cond) + s.penalty * masks.penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        round_target = total - (total - target) * r // s.rounds
        pruned = masks.prune_to_budget(masks.log_alphas(), round_target, threshold=s.threshold, floor=target)
        log.append({"round": r, "loss": loss.item(), "pruned": pruned, "params": masks.param_count()})
    seconds = time.perf_counter() - start
    student.eval()
    masks.eval()
    masked_bits = val_bits(student, task, s.val_limit)  # the masked model before slicing
    slim = slim_transformer(student.transformer, masks)
    kept = {name: int(gate.alive.sum()) for name, gate in masks.gates.items()}
    masks.detach()
    student.transformer = slim
    sliced_bits = val_bits(student, task, s.val_limit)  # the same model, physically pruned: equal up to rounding
    return student, {"prune_seconds": seconds, "prune_steps": per_round * s.rounds, "rounds": log,
                     "masked_bits": masked_bits, "sliced_bits": sliced_bits, "kept_units": kept}


def structured(teacher: ARGenerator, scores_of, *, budget: float) -> tuple[ARGenerator, dict]:
    """Heads and FFN units pruned by a score at once (magnitude or random), then sliced."""
    student = copy.deepcopy(teacher)
    masks = VIBMasks(student.transformer, VIBConfig(embedding=False, layers=False))
    masks.prune_to_budget(scores_of(student, masks), int(budget * masks.param_count()))
    kept = {name: int(gate.alive.sum()) for name, gate in masks.gates.items()}
    student.transformer = slim_transformer(student.transformer, masks.eval())
    return student, {"prune_seconds": 0.0, "prune_steps": 0, "kept_units": kept}


def measure(model: ARGenerator, task: SceneTask, s: PruneSettings) -> dict:
    """Quality and cost of one model: bits/token, parameters, FLOPs and time of drawing SAMPLES samples."""
    model.eval()
    draw = sampler(model, task, SAMPLES)
    cost = inference_cost(draw, repeats=s.timing_repeats)
    return {"bits": val_bits(model, task, s.val_limit), "transformer_params": parameter_count(model.transformer),
            "params": parameter_count(model), "flops_per_sample": cost["flops"] / SAMPLES,
            "flops_call": cost["flops"], "peak_bytes": cost["peak_bytes"], "sample_s": cost["infer_s"]}


def run_method(name: str, teacher: ARGenerator, task: SceneTask, s: PruneSettings, prune) -> dict:
    """Prune (a callable returning the slim student and its log), fine-tune with distillation, measure."""
    student, log = prune()
    for p in student.parameters():  # copied from the frozen teacher
        p.requires_grad_(True)
    steps = s.prune_steps + s.finetune_steps  # every method's steps after the teacher
    ft_steps = steps - log["prune_steps"]
    ft_step = train_generator(student, task, ft_steps, batch=s.batch, lr=s.lr, seed=3,
                              loss_fn=distill_loss(teacher, s.distill))
    row = {"method": name, **log, "finetune_steps": ft_steps, "finetune_step_s": ft_step,
           "train_seconds": log["prune_seconds"] + ft_step * ft_steps, **measure(student, task, s)}
    row["train_step_s"] = row["train_seconds"] / max(steps, 1)
    print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
    return row


def methods(teacher: ARGenerator, task: SceneTask, s: PruneSettings, names: list[str],
            tight_budget: float) -> dict[str, dict]:
    heads_ffn_layers = VIBConfig(embedding=False)
    runs = {
        "unpruned": lambda: (copy.deepcopy(teacher), {"prune_seconds": 0.0, "prune_steps": 0}),
        "vib": lambda: vtrans(teacher, task, s, heads_ffn_layers, budget=s.budget),
        "vib+emb": lambda: vtrans(teacher, task, s, VIBConfig(), budget=s.budget),
        "vib+emb_tight": lambda: vtrans(teacher, task, s, VIBConfig(), budget=tight_budget),
        "mask_only+emb": lambda: vtrans(teacher, task, s, VIBConfig(), budget=s.budget, mask_only=True),
        "magnitude": lambda: structured(teacher, lambda m, _: within_group_ranks(magnitude_scores(m.transformer)),
                                        budget=s.budget),
        "magnitude_global": lambda: structured(teacher, lambda m, _: magnitude_scores(m.transformer),
                                               budget=s.budget),
        "random": lambda: structured(teacher, lambda _, masks: random_scores(masks, torch.Generator().manual_seed(0)),
                                     budget=s.budget),
    }
    return {name: run_method(name, teacher, task, s, runs[name]) for name in names}


def train_teacher(task: SceneTask, steps: int) -> tuple[ARGenerator, float]:
    teacher = build_generator()
    step_s = train_generator(teacher, task, steps)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval(), step_s


def efficiency_rows(quick: bool = False) -> list[CostRow]:
    """Plain teacher, VTrans (heads, FFN units, layers, embedding dims) at 50 % of the transformer's
    parameters, and magnitude structured pruning at 50 %; same task, same run."""
    torch.set_num_threads(1)
    if quick:
        task, teacher_steps = load_task(train=100, val=40), 6
        s = PruneSettings(prune_steps=4, rounds=2, finetune_steps=2, batch=8, val_limit=40, timing_repeats=1)
    else:
        task, teacher_steps = load_task(), 200
        s = PruneSettings()
    teacher, teacher_step = train_teacher(task, teacher_steps)
    plain = measure(teacher, task, s)
    runs = methods(teacher, task, s, ["vib+emb", "magnitude"], tight_budget=s.budget)
    infer_what = f"draw {SAMPLES} samples of 64 tokens (KV cache)"

    def row(technique: str, m: dict, step_s: float, note: str) -> CostRow:
        return CostRow(task="shapes scene graph (AR): pruning", technique=technique, paper="P14 VTrans", params=m["params"],
                       flops=int(m["flops_call"]), peak_bytes=m["peak_bytes"], train_step_s=step_s,
                       infer_s=m["sample_s"], infer_what=infer_what, metric="val bits/token",
                       quality=m["bits"], plain_quality=plain["bits"], higher_is_better=False, note=note)

    share = {k: v["transformer_params"] / plain["transformer_params"] for k, v in runs.items()}
    return [
        row("plain", plain, teacher_step, f"teacher, {teacher_steps} steps"),
        row("VTrans VIB masks 50%", runs["vib+emb"], runs["vib+emb"]["train_step_s"],
            f"transformer x{share['vib+emb']:.2f}; {s.prune_steps} VIB + {s.finetune_steps} distill steps"),
        row("magnitude pruning 50%", runs["magnitude"], runs["magnitude"]["train_step_s"],
            f"transformer x{share['magnitude']:.2f}; heads/FFN by RMS weight per layer + "
            f"{s.prune_steps + s.finetune_steps} distill steps"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--prune-steps", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--finetune-steps", type=int, default=28)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--tight-budget", type=float, default=0.35)
    parser.add_argument("--penalty", type=float, default=1.0)
    parser.add_argument("--gate-lr", type=float, default=5e-2)
    parser.add_argument("--val-limit", type=int, default=250, help="validation scenes (500 in all)")
    parser.add_argument("--methods", default="unpruned,vib,vib+emb,vib+emb_tight,mask_only+emb,magnitude,"
                                              "magnitude_global,random")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/vib_prune.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    s = PruneSettings(budget=args.budget, prune_steps=args.prune_steps, rounds=args.rounds,
                      finetune_steps=args.finetune_steps, penalty=args.penalty, gate_lr=args.gate_lr,
                      val_limit=args.val_limit)
    task = load_task()
    teacher, teacher_step = train_teacher(task, args.teacher_steps)
    plain = measure(teacher, task, s)
    print(json.dumps({"teacher": plain, "step_s": teacher_step}), flush=True)
    runs = methods(teacher, task, s, args.methods.split(","), args.tight_budget)

    claims = {}
    if {"vib", "vib+emb", "magnitude", "magnitude_global", "random"} <= runs.keys():
        best_vib = min(runs[k]["bits"] for k in ("vib", "vib+emb"))
        claims["vib_beats_magnitude_at_budget"] = best_vib < runs["magnitude"]["bits"]
        claims["vib_beats_global_magnitude_at_budget"] = best_vib < runs["magnitude_global"]["bits"]
        claims["vib_beats_random_at_budget"] = best_vib < runs["random"]["bits"]
    if {"vib", "vib+emb_tight"} <= runs.keys():
        # "small cost": the tighter model loses under 5 % of the bits the teacher saves over a uniform guess
        gap = 6.0 - plain["bits"]
        claims["emb_dims_compress_further_at_small_cost"] = (
            runs["vib+emb_tight"]["transformer_params"] < runs["vib"]["transformer_params"]
            and runs["vib+emb_tight"]["bits"] - runs["vib"]["bits"] < 0.05 * gap)
    if {"vib+emb", "mask_only+emb"} <= runs.keys():
        full, fast = runs["vib+emb"], runs["mask_only+emb"]
        claims["mask_only_within_3pct_of_vtrans"] = fast["bits"] <= 1.03 * full["bits"]
        claims["mask_only_faster"] = fast["train_seconds"] < full["train_seconds"]
    result = dict(args=vars(args), settings=asdict(s), machine=platform.processor() or platform.machine(),
                  torch=torch.__version__, teacher={**plain, "train_step_s": teacher_step}, methods=runs,
                  claims=claims, seconds=time.perf_counter() - start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(dict(claims=claims, seconds=result["seconds"]), indent=2))


if __name__ == "__main__":
    main()
