"""Does a generator learn every attribute of its scene graph? Sensitivity during training.

Trains one generator family on the latents of a finished Shapes run (`runs/bench14/tok_rvq` for
residual codes, `tok_kl` for continuous ones, `tok_vq` for codes; made by `benchmarks/generators.py`)
with the default recipe's scene-graph conditioner, and every `--every` steps prints the increase of
held-out loss when every object's colour, shape or size is shifted by one (`eval/sensitivity.py`).
`--attribute-init 0.02` and `--unit-base-scale` restore the two things issue 14 changed (the
conditioner's attribute embeddings at GPT-2 scale; the hierarchical base reading its code sums at unit
scale), to measure the before.

    python benchmarks/condition_use.py runs/bench14/gen_hierarchical --family hierarchical [--steps 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentforge.conditioning.scene_graph import SceneGraphConfig  # noqa: E402
from latentforge.eval.sensitivity import condition_sensitivity  # noqa: E402
from latentforge.recipes import Run, load_recipe  # noqa: E402
from latentforge.registry import lookup  # noqa: E402


def build(family: str, width: int, latents: torch.Tensor, args) -> torch.nn.Module:
    graph = SceneGraphConfig(dim=width, depth=2, heads=4, max_objects=3, layout_temperature=0.4)
    fields = {"grid": tuple(latents.shape[1:3]), "conditioner": graph, "dim": width, "depth": 4, "heads": 4}
    if family == "mar":
        fields.update(channels=latents.shape[-1], head_width=width, head_depth=3)
    elif family == "dit":
        fields.update(channels=latents.shape[-1], patch=1)
    elif family == "hierarchical":
        fields.update(vocab_size=int(latents.max()) + 1, levels=latents.shape[-1], depth_dim=width, depth_layers=2,
                      depth_heads=4)
    else:
        fields.update(vocab_size=int(latents.max()) + 1)
    config_cls, model_cls = lookup("generator", family)
    model = model_cls(dataclasses.replace(config_cls(), **fields))
    if args.attribute_init != 1.0:
        for table in (model.conditioner.shape, model.conditioner.color, model.conditioner.size):
            torch.nn.init.normal_(table.weight, std=args.attribute_init)
    if args.unit_base_scale:
        model.base_code_scale.data.fill_(1.0)
        model.base_code_scale.requires_grad_(False)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished run whose latents.npz holds the tokenizer's latents")
    ap.add_argument("--family", default="hierarchical")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attribute-init", type=float, default=1.0)
    ap.add_argument("--unit-base-scale", action="store_true")
    ap.add_argument("--level0", action="store_true", help="residual codes: model level 0 only")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Run(load_recipe(Path(args.run) / "config.yaml"), progress=False)
    train, val = run.load_latents("train"), run.load_latents("val")[:256]
    if args.level0 or (args.family != "hierarchical" and not train.is_floating_point() and train.dim() == 4):
        train, val = train[..., 0], val[..., 0]
    torch.manual_seed(args.seed)
    model = build(args.family, args.width, train, args)
    cond_train = run.condition("train", model)
    cond_val = {k: v[:256] for k, v in run.condition("val", model).items()}
    if model.latent_norm is not None:
        model.latent_norm.fit(train)
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(train), (32,), generator=g)
        loss = model.loss(train[idx], model.encode_condition({k: v[idx] for k, v in cond_train.items()}))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            shift = condition_sensitivity(model, val, cond_val)
            print(f"step {step} ({time.perf_counter() - start:.0f} s): held-out loss {shift['val_loss']:.4f}; "
                  "shifted " + ", ".join(f"{a} {shift[a]:+.4f}" for a in ("colour", "shape", "size")) + " nats",
                  flush=True)


if __name__ == "__main__":
    main()
