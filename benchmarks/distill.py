"""P28 distillation at toy scale: a generator into a smaller one, and a many-step flow sampler into a
few-step one (train/distill.py).

1. Logit distillation of the AR generator (benchmarks/scene_task.py: Shapes 8 x 8 codes given the
   scene graph). Teacher: width 128, depth 4 (1.07 M parameters), trained `--teacher-steps`. Students:
   width 64, depth 2, trained `--ar-steps` on the same batches, from the data alone
   ("scratch") or with the teacher's softened distribution (alpha 0.5, tau 1). Reported: validation
   bits per token, parameters, FLOPs and seconds to draw 16 samples, seconds per training step.
   Claim: the distilled student is better than the same student trained alone at equal steps.
2. Progressive distillation of a flow DiT (Shapes colours pooled to 8 x 8 x 3, continuous, given the
   scene graph; DiT width 128, depth 4). The teacher is trained `--dit-steps`, then distilled
   32 -> 16 -> 8 -> 4 Euler steps (`--round-steps` optimizer steps a round). Quality of the samples for
   the 500 validation graphs, from the same noise for every sampler: the Frechet distance of the
   192-d pooled images to the validation images (floor: training images vs validation images), and
   the mean squared distance to the teacher's 32-step samples (how far a shortcut lands from the
   sampler it replaces). Claim: at 4 (and 8, 16) steps the distilled student is closer to the
   32-step teacher, and its Frechet distance lower, than the teacher run at the same few steps.

    python benchmarks/distill.py [--ar-steps 400] [--teacher-steps 1500] [--dit-steps 600] [--round-steps 200] [--threads 1]

Writes benchmarks/results/distill.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scene_task import (  # noqa: E402
    MAX_OBJECTS,
    SceneTask,
    build_generator,
    load_task,
    sampler,
    shapes_pooled_and_graphs,
    train_generator,
    val_bits,
)

from latentforge.atomic import write_json  # noqa: E402
from latentforge.conditioning.scene_graph import SceneGraphConfig  # noqa: E402
from latentforge.eval.cost import CostRow, inference_cost, parameter_count  # noqa: E402
from latentforge.eval.distribution import fid  # noqa: E402
from latentforge.generators.diffusion import DiTConfig, DiTGenerator  # noqa: E402
from latentforge.train.distill import ProgressiveConfig, logit_distillation_loss, progressive_distill  # noqa: E402

STUDENT = dict(dim=64, depth=2, heads=4)


# ------------------------------------------------------------------------- 1. AR into a smaller AR


def kd_loss(teacher, alpha: float = 0.5, temperature: float = 1.0):
    def loss(student, codes, cond):
        flat = student.flat_codes(codes)
        with torch.no_grad():
            soft = teacher.logits(flat, teacher.encode_condition(cond))
        return logit_distillation_loss(student.logits(flat, student.encode_condition(cond)), soft, flat,
                                       alpha, temperature)
    return loss


def ar_part(task: SceneTask, steps: int, teacher_steps: int) -> dict:
    models, step_s = {}, {}
    models["teacher"] = build_generator()
    step_s["teacher"] = train_generator(models["teacher"], task, teacher_steps)
    models["student (scratch)"] = build_generator(**STUDENT)
    step_s["student (scratch)"] = train_generator(models["student (scratch)"], task, steps)
    models["student (distilled)"] = build_generator(**STUDENT)
    step_s["student (distilled)"] = train_generator(models["student (distilled)"], task, steps,
                                                    loss_fn=kd_loss(models["teacher"]))
    rows = {}
    for name, model in models.items():
        cost = inference_cost(sampler(model, task, 16))
        rows[name] = {"bits_per_token": val_bits(model, task), "params": parameter_count(model),
                      "train_step_s": step_s[name], **cost}
        print(name, json.dumps(rows[name]), flush=True)
    return rows


# ------------------------------------------------------------------------- 2. flow DiT, progressive


def build_dit(seed: int = 0) -> DiTGenerator:
    torch.manual_seed(seed)
    cond = SceneGraphConfig(dim=64, depth=1, heads=4, max_objects=MAX_OBJECTS, layout=False)
    return DiTGenerator(DiTConfig(grid=(8, 8), channels=3, dim=128, depth=4, heads=4, conditioner=cond))


def batch_stream(images: torch.Tensor, graphs: dict, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in itertools.count():
        idx = torch.randint(len(images), (batch,), generator=g)
        yield images[idx], {k: v[idx] for k, v in graphs.items()}


def train_dit(model: DiTGenerator, stream, steps: int, lr: float = 1e-3) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        z, cond = next(stream)
        loss = model.loss(z, model.encode_condition(cond))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return (time.perf_counter() - start) / steps


def dit_sampler(model: DiTGenerator, graphs: dict, steps: int, n: int | None = None):
    n = n or len(next(iter(graphs.values())))
    cond = {k: v[:n] for k, v in graphs.items()}

    @torch.no_grad()
    def draw() -> torch.Tensor:
        return model.sample(n, model.encode_condition(cond), generator=torch.Generator().manual_seed(0), steps=steps)

    return draw


def dit_part(dit_steps: int, round_steps: int, train_n: int, val_n: int,
             teacher_steps: tuple[int, ...] = (32, 16, 8, 4, 2)) -> dict:
    images, graphs = shapes_pooled_and_graphs(train_n, "train")
    val_images, val_graphs = shapes_pooled_and_graphs(val_n, "val")
    teacher = build_dit()
    teacher.latent_norm.fit(images)
    step_s = train_dit(teacher, batch_stream(images, graphs, 32, 1), dit_steps)
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731  [n, 192]
    floor = fid(flat(images[:val_n]), flat(val_images))
    reference = dit_sampler(teacher, val_graphs, 32)()
    students: dict[int, DiTGenerator] = {}
    start = time.perf_counter()
    progressive_distill(teacher, batch_stream(images, graphs, 32, 2),
                        ProgressiveConfig(start_steps=32, rounds=3, steps_per_round=round_steps, lr=1e-4),
                        on_round=lambda s, m: students.__setitem__(s, m))
    distill_s = time.perf_counter() - start

    def judge(model: DiTGenerator, steps: int) -> dict:
        samples = dit_sampler(model, val_graphs, steps)()
        cost = inference_cost(dit_sampler(model, val_graphs, steps, n=16))
        return {"steps": steps, "fd": fid(flat(val_images), flat(samples)),
                "mse_to_teacher32": (samples - reference).pow(2).mean().item(), **cost}

    rows = {"floor_fd_train_vs_val": floor, "teacher_train_step_s": step_s, "distill_seconds": distill_s,
            "params": parameter_count(teacher), "teacher": [], "distilled": []}
    for steps in teacher_steps:
        rows["teacher"].append(judge(teacher, steps))
        print("teacher", json.dumps(rows["teacher"][-1]), flush=True)
    for steps, student in sorted(students.items(), reverse=True):
        if steps not in teacher_steps and steps != min(students):
            continue
        rows["distilled"].append(judge(student, steps))
        print("distilled", json.dumps(rows["distilled"][-1]), flush=True)
    return rows


# ------------------------------------------------------------------------- the efficiency table


def efficiency_rows(quick: bool = False) -> list[CostRow]:
    """Plain AR teacher vs its distilled student (scene task); flow teacher at 32 and 4 steps vs the
    4-step distilled student."""
    task = load_task(400 if quick else 2000, 100 if quick else 500)
    ar = ar_part(task, 20 if quick else 300, 40 if quick else 900)
    plain = ar["teacher"]["bits_per_token"]
    out = []
    for name in ("teacher", "student (distilled)", "student (scratch)"):
        r = ar[name]
        out.append(CostRow("shapes scene graph (AR): distillation", "plain" if name == "teacher" else f"P28 KD {name}", "P28",
                           r["params"], r["flops"], r["peak_bytes"], r["train_step_s"], r["infer_s"], "16 samples",
                           "bits/token", r["bits_per_token"], plain, False,
                           "width 64, depth 2" if name != "teacher" else "width 128, depth 4"))
    dit = dit_part(20 if quick else 400, 10 if quick else 120, 400 if quick else 2000, 64 if quick else 200,
                   teacher_steps=(32, 4))
    t32 = next(r for r in dit["teacher"] if r["steps"] == 32)
    for label, r in (("plain flow DiT, 32 steps", t32),
                     ("flow DiT, 4 steps", next(r for r in dit["teacher"] if r["steps"] == 4)),
                     ("P28 progressive distillation, 4 steps", next(r for r in dit["distilled"] if r["steps"] == 4))):
        out.append(CostRow("shapes colours (flow DiT)", "plain" if "plain" in label else label, "P28", dit["params"],
                           r["flops"], r["peak_bytes"], dit["teacher_train_step_s"], r["infer_s"], "16 samples",
                           "Frechet distance", r["fd"], t32["fd"], False, f"floor {dit['floor_fd_train_vs_val']:.3f}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ar-steps", type=int, default=400)
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--dit-steps", type=int, default=600)
    ap.add_argument("--round-steps", type=int, default=200)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--val-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-ar", action="store_true")
    ap.add_argument("--skip-flow", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/distill.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # other jobs share the machine
    start = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "args": vars(args)}
    if not args.skip_ar:
        result["ar"] = ar_part(load_task(args.train_size, args.val_size), args.ar_steps, args.teacher_steps)
    if not args.skip_flow:
        result["flow"] = dit_part(args.dit_steps, args.round_steps, args.train_size, args.val_size)
    result["seconds"] = time.perf_counter() - start
    write_json(args.out, result)
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
