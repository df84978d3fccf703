"""P1's layout stage on its own: how well the scene-graph conditioner learns to place objects.

Trains only the scene-graph encoder and its layout predictor (the layout NLL) on Shapes train
graphs, then samples layouts for val graphs and scores the sampled centres directly, with no image
model: "relations" = graph relations that hold between the sampled centres, "overlap" = scenes
where two object boxes come closer than `--gap` (image fractions), "ok" = all relations hold
and nothing overlaps.

    python benchmarks/layout.py [--steps 600] [--batch 64] [--temperatures 1.0,0.6,0.4]
"""

from __future__ import annotations

import argparse
import time

import torch

from latentforge.conditioning.scene_graph import SceneGraphConditioner, SceneGraphConfig
from latentforge.data.shapes import ShapeObject, ShapesConfig, encode_graphs, object_box, sample_scene
from latentforge.train.trainer import TrainConfig, build_optimizer, lr_at


def boxes_too_close(a: ShapeObject, b: ShapeObject, gap: float) -> bool:
    (l1, t1, r1, b1), (l2, t2, r2, b2) = object_box(a), object_box(b)
    return l1 < r2 + gap and l2 < r1 + gap and t1 < b2 + gap and t2 < b1 + gap


@torch.no_grad()
def score_layouts(model: SceneGraphConditioner, scenes, temperature: float, gap: float, seed: int) -> dict:
    from latentforge.data.shapes import SceneGraph

    cond = {k: v for k, v in encode_graphs(scenes, model.config.max_objects).items() if k not in ("obj_x", "obj_y")}
    model.eval()
    model.config.layout_temperature = temperature
    centres = model.sample_centres(cond, generator=torch.Generator().manual_seed(seed))  # [N, M, 2]
    model.train()
    held = total = overlap = ok = 0
    for s, scene in enumerate(scenes):
        placed = [ShapeObject(o.shape, o.color, o.size, float(centres[s, k, 0]), float(centres[s, k, 1]))
                  for k, o in enumerate(scene.objects)]
        got = set(SceneGraph.from_objects(placed).relations)
        want = set(map(tuple, scene.relations))
        close = any(boxes_too_close(placed[i], placed[j], gap)
                    for i in range(len(placed)) for j in range(i + 1, len(placed)))
        held += len(want & got)
        total += len(want)
        overlap += close
        ok += want <= got and not close
    n = len(scenes)
    return {"relations": held / max(total, 1), "overlap": overlap / n, "ok": ok / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train", type=int, default=20000, help="train graphs")
    ap.add_argument("--val", type=int, default=500, help="val graphs scored")
    ap.add_argument("--temperatures", default="1.0,0.6,0.4")
    ap.add_argument("--gap", type=float, default=1 / 32, help="closest allowed box distance (1 px at 32 px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = ShapesConfig()
    train = encode_graphs([sample_scene(data, "train", i) for i in range(args.train)], data.max_objects)
    val = [sample_scene(data, "val", i) for i in range(args.val)]
    model = SceneGraphConditioner(SceneGraphConfig(dim=128, depth=2, heads=4, max_objects=data.max_objects)).train()
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup=50, weight_decay=0.01)
    opt = build_optimizer(model, tcfg)
    t0 = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tcfg)
        idx = torch.randint(args.train, (args.batch,))
        loss = model({k: v[idx] for k, v in train.items()}).losses["layout_nll"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    print(f"{args.steps} steps x {args.batch} in {seconds:.0f} s ({seconds / args.steps:.3f} s/step), "
          f"final layout NLL {loss.item():.3f} nats")
    print("| temperature | relations | overlap | ok |\n|---:|---:|---:|---:|")
    for t in map(float, args.temperatures.split(",")):
        r = score_layouts(model, val, t, args.gap, args.seed)
        print(f"| {t} | {r['relations']:.3f} | {r['overlap']:.3f} | {r['ok']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
