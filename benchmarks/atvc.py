"""P2 ATVC on Shapes-Edit 32 px: one AR stream [instruction | input codes | re-created codes | answer].

    .venv/bin/python benchmarks/atvc.py                 # default run, ~10 min on one shared CPU thread
    .venv/bin/python benchmarks/atvc.py --scale 0.05    # smoke

Writes benchmarks/results/atvc.{json,md,png}. Stages:

1. A Gumbel dVAE (the registry's ConvTokenizer with quantizer "gumbel": 32 px -> 8 x 8 codes of K)
   fitted to the training inputs and targets.
2. ATVC (generators/atvc.py) trained on Shapes-Edit (data/shapes_edit.py) twice from the same seed:
   the paper's recipe (no loss through the re-created image M on refused instructions) and the
   ablation (M's loss on refusals too). A refusal's M slot is teacher-forced with a filler
   (`--refusal-filler`): "counterfactual" (default), the image the instruction would have made had
   its rule been ignored (data/shapes_edit.counterfactual_target: the magenta object drawn anyway,
   the object at its placement despite no room, the input unchanged when the reference is absent),
   or "input", the unchanged input image, which lets the answer read "M unchanged -> no" off M.
   With the mask off the filler is also M's target.
3. Evaluation on held-out instructions, greedy decoding of M then the answer:
   - "val": scenes of the Shapes val split (disjoint from training), the training mix of outcomes
     (1/6 each: add, remove, recolour | absent, forbidden colour, no room);
   - "heldout_pairs": scenes of the test split whose edit would create a (shape, colour) pair no
     training edit creates (data/shapes_edit.HELDOUT_PAIRS): add / recolour / no-room only.
   Yes/no accuracy against the majority class of the training answers; the whole answer's exact
   match per outcome (the explanation template per refusal type); for accepted instructions the
   re-created image (decoded from the generated codes) judged by the scene parser against the
   target scene, its pixel MSE and code accuracy, against copy-the-input and against the dVAE's own
   reconstruction of the target (the ceiling any generated code sequence can reach).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from latentforge.conditioning.caption import PAD, build_vocab, encode_captions, split_words
from latentforge.data.shapes import ShapesConfig, render
from latentforge.data.shapes_edit import (
    ACCEPTED,
    HELDOUT_PAIRS,
    EditConfig,
    EditExample,
    counterfactual_target,
    edit_words,
    sample_edits,
)
from latentforge.eval.shapes import compare_scenes, parse_scene
from latentforge.generators.atvc import ATVC, ATVCConfig
from latentforge.generators.cam_seg import train_steps
from latentforge.quantize.gumbel import GumbelConfig
from latentforge.report.grids import save_captioned_grid
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer


@dataclass
class ATVCBenchConfig:
    train: int = 6000            # training instructions (one per train-split scene)
    val: int = 600               # held-out instructions on val-split scenes
    heldout: int = 200           # held-out (shape, colour) pair instructions on test-split scenes
    codebook_size: int = 64
    dvae_steps: int = 800
    dvae_widths: tuple[int, ...] = (32, 64)   # patch 2 + one downsampling: 8 x 8 codes
    dvae_lr: float = 2e-3
    ar_steps: int = 900
    batch: int = 16             # AR batch (the dVAE's is 32)
    lr: float = 2e-3
    dim: int = 96
    depth: int = 4
    heads: int = 4
    image_loss_weight: float = 1.0
    ablation: bool = True        # also train with M's loss on refusals
    refusal_filler: str = "counterfactual"   # what fills a refusal's M slot: "counterfactual" | "input"
    seed: int = 0


def to_model(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N, 3, H, W]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]


@torch.no_grad()
def encode(tok: ConvTokenizer, x: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    return torch.cat([tok.encode(x[i:i + chunk]) for i in range(0, len(x), chunk)]).flatten(1)  # [N, h*w]


@torch.no_grad()
def decode(tok: ConvTokenizer, codes: torch.Tensor) -> np.ndarray:
    h, w = tok.spec.grid
    return to_uint8(tok.decode(codes.view(-1, h, w)))


def render_all(examples: list[EditExample]) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets, uint8 [N, 32, 32, 3] each; a refusal's target is its input (nothing changes)."""
    inputs = np.stack([render(e.scene) for e in examples])
    targets = np.stack([render(e.target) if e.accepted else x for e, x in zip(examples, inputs)])
    return inputs, targets


def render_fillers(examples: list[EditExample], targets: np.ndarray, filler: str) -> np.ndarray:
    """What fills M in teacher forcing, uint8 [N, 32, 32, 3]: the target when accepted; on refusals
    the input ("input") or the image the instruction would have made anyway ("counterfactual")."""
    if filler == "input":
        return targets
    if filler != "counterfactual":
        raise ValueError(f"refusal_filler must be 'input' or 'counterfactual', got {filler!r}")
    return np.stack([t if e.accepted else render(counterfactual_target(e)) for e, t in zip(examples, targets)])


def tensors(examples: list[EditExample], inputs: torch.Tensor, targets: torch.Tensor, vocab: tuple[str, ...],
            lengths: tuple[int, int]) -> dict[str, torch.Tensor]:
    instruction = encode_captions([e.instruction.text() for e in examples], vocab, lengths[0])["caption_ids"]
    answer = encode_captions([e.answer for e in examples], vocab, lengths[1])["caption_ids"]
    return {"instruction": instruction, "input_codes": inputs, "target_codes": targets, "answer": answer,
            "accepted": torch.tensor([e.accepted for e in examples])}


def words_of(ids: torch.Tensor, vocab: tuple[str, ...]) -> list[list[str]]:
    """Answer ids [B, La] -> the words before the first padding."""
    out = []
    for row in ids.tolist():
        words = []
        for i in row:
            if i == PAD:
                break
            words.append(vocab[i - 2] if i >= 2 else "<unk>")
        out.append(words)
    return out


@torch.no_grad()
def evaluate(model: ATVC, tok: ConvTokenizer, data: dict[str, torch.Tensor], examples: list[EditExample],
             inputs: np.ndarray, targets: np.ndarray, vocab: tuple[str, ...], majority: str,
             chunk: int = 200) -> tuple[dict, dict]:
    model.eval()
    gen_codes, gen_words = [], []
    for i in range(0, len(examples), chunk):
        c, w = model.generate(data["instruction"][i:i + chunk], data["input_codes"][i:i + chunk])
        gen_codes.append(c)
        gen_words.append(w)
    codes, answers = torch.cat(gen_codes), words_of(torch.cat(gen_words), vocab)
    truth = [split_words(e.answer) for e in examples]
    verdict_ok = np.array([a[:1] == t[:1] for a, t in zip(answers, truth)])
    exact = np.array([a == t for a, t in zip(answers, truth)])
    kinds = np.array([e.kind for e in examples])
    # diagnosis: the verdict read after M forced to the input's codes (how refusals are laid out in
    # training) instead of after the model's own M, which has no loss on refusals
    forced = torch.cat([model.logits(data["instruction"][i:i + chunk], data["input_codes"][i:i + chunk],
                                     data["input_codes"][i:i + chunk], data["answer"][i:i + chunk])[1][:, 0].argmax(-1)
                        for i in range(0, len(examples), chunk)])
    forced_ok = (forced == data["answer"][:, 0]).numpy()
    # and after M forced to the training filler (the target when accepted): the verdict as trained
    filled = torch.cat([model.logits(data["instruction"][i:i + chunk], data["input_codes"][i:i + chunk],
                                     data["target_codes"][i:i + chunk], data["answer"][i:i + chunk])[1][:, 0].argmax(-1)
                        for i in range(0, len(examples), chunk)])
    filled_ok = (filled == data["answer"][:, 0]).numpy()
    out: dict = {"n": len(examples), "yes_no_acc": float(verdict_ok.mean()),
                 "majority_baseline_acc": float(np.mean([t[0] == majority for t in truth])),
                 "answer_exact": float(exact.mean()), "yes_no_acc_m_forced_to_input": float(forced_ok.mean()),
                 "yes_no_acc_m_forced_to_filler": float(filled_ok.mean()), "per_kind": {}}
    for kind in sorted(set(kinds)):
        k = kinds == kind
        out["per_kind"][kind] = {"n": int(k.sum()), "yes_no_acc": float(verdict_ok[k].mean()),
                                 "answer_exact": float(exact[k].mean()),
                                 "yes_no_acc_m_forced_to_input": float(forced_ok[k].mean()),
                                 "yes_no_acc_m_forced_to_filler": float(filled_ok[k].mean())}
    # re-creations of accepted instructions, judged against the rendered target
    acc = np.flatnonzero([e.accepted for e in examples])
    recreated = decode(tok, codes[acc])
    ceiling = decode(tok, data["target_codes"][acc])
    tgt = targets[acc]

    def judged(images: np.ndarray) -> dict:
        scores = [compare_scenes(parse_scene(im), examples[i].target) for im, i in zip(images, acc)]
        per_op = {op: float(np.mean([s["exact"] for s, i in zip(scores, acc) if kinds[i] == op]))
                  for op in ACCEPTED if (kinds[acc] == op).any()}
        return {"scene_exact": float(np.mean([s["exact"] for s in scores])), "scene_exact_per_op": per_op,
                "pixel_mse": float(((images / 255.0 - tgt / 255.0) ** 2).mean())}

    out["recreation"] = {
        "n": len(acc),
        "model": {**judged(recreated),
                  "code_acc": float((codes[acc] == data["target_codes"][acc]).float().mean())},
        "copy_input": {**judged(inputs[acc]),
                       "code_acc": float((data["input_codes"][acc] == data["target_codes"][acc]).float().mean())},
        "dvae_ceiling": {**judged(ceiling), "code_acc": 1.0},
    }
    said_yes = np.array([a[:1] == ["yes"] for a in answers])
    out["recreation"]["model_when_it_said_yes_scene_exact"] = float(np.mean(
        [compare_scenes(parse_scene(im), examples[i].target)["exact"]
         for im, i in zip(recreated, acc) if said_yes[i]])) if said_yes[acc].any() else float("nan")
    samples = {"codes": codes, "answers": [" ".join(a) for a in answers]}
    return out, samples


def train_atvc(cfg: ATVCBenchConfig, data: dict[str, torch.Tensor], vocab_size: int, lengths: tuple[int, int],
               codebook: int, masked: bool) -> tuple[ATVC, list[float], float]:
    """Adam, linear warm-up then cosine decay to 0 (a short run gains most from the decay)."""
    torch.manual_seed(cfg.seed)
    model = ATVC(ATVCConfig(text_vocab=vocab_size, codebook_size=codebook, image_grid=(8, 8),
                            instruction_len=lengths[0], answer_len=lengths[1], dim=cfg.dim, depth=cfg.depth,
                            heads=cfg.heads, image_loss_weight=cfg.image_loss_weight,
                            mask_rejected_image_loss=masked))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    warmup = max(cfg.ar_steps // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(s / max(cfg.ar_steps, 1), 1.0)))))
    g = torch.Generator().manual_seed(cfg.seed)
    losses, start = [], time.perf_counter()
    for step in range(cfg.ar_steps):
        idx = torch.randint(len(data["answer"]), (cfg.batch,), generator=g)
        loss = model.loss({k: v[idx] for k, v in data.items()})["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 200 == 0:
            print(f"  step {step} loss {loss.item():.3f}", flush=True)
    return model, losses, (time.perf_counter() - start) / max(cfg.ar_steps, 1)


def run(cfg: ATVCBenchConfig, png: Path | None = None) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    shapes = ShapesConfig(size=32, seed=cfg.seed)
    train_ex = sample_edits(EditConfig(shapes=shapes), "train", range(cfg.train))
    val_ex = sample_edits(EditConfig(shapes=shapes), "val", range(cfg.val))
    held_cfg = EditConfig(shapes=shapes, kinds={"add": 1.0, "recolour": 1.0, "no_room": 1.0},
                          allowed_new=HELDOUT_PAIRS)
    held_ex = sample_edits(held_cfg, "test", range(cfg.heldout))
    images = {name: render_all(ex) for name, ex in (("train", train_ex), ("val", val_ex), ("heldout", held_ex))}
    print(f"data: {len(train_ex)} train, {len(val_ex)} val, {len(held_ex)} held-out-pair instructions "
          f"{time.perf_counter() - t0:.0f}s", flush=True)

    # 1. the Gumbel dVAE --------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    tok = ConvTokenizer(ConvConfig(image_size=32, patch=2, channels=cfg.dvae_widths,
                                   quantizer=GumbelConfig(dim=32, codebook_size=cfg.codebook_size,
                                                          anneal_steps=cfg.dvae_steps)))
    x = to_model(np.concatenate(images["train"]))
    dvae_losses = train_steps(list(tok.parameters()), lambda i: tok.loss({"image": x[i]})["loss"], len(x),
                              cfg.dvae_steps, 32, cfg.dvae_lr, torch.Generator().manual_seed(cfg.seed))
    tok.eval()
    # M's teacher-forced codes: targets, and the filler on refusals (the dVAE is fitted without the
    # counterfactual images, so both fillers share one tokenizer)
    codes = {name: (encode(tok, to_model(a)), encode(tok, to_model(render_fillers(ex, b, cfg.refusal_filler))))
             for (name, (a, b)), ex in zip(images.items(), (train_ex, val_ex, held_ex))}
    val_in = images["val"][0]
    recon = decode(tok, codes["val"][0])
    dvae = {"final_loss": float(np.mean(dvae_losses[-20:])), "codes_used_val": int(codes["val"][0].unique().numel()),
            "recon_pixel_mse_val": float(((recon / 255.0 - val_in / 255.0) ** 2).mean()),
            "recon_scene_exact_val": float(np.mean([compare_scenes(parse_scene(r), e.scene)["exact"]
                                                    for r, e in zip(recon, val_ex)]))}
    print("dvae", json.dumps(dvae), f"{time.perf_counter() - t0:.0f}s", flush=True)

    # 2. text and the stream ------------------------------------------------------------------------
    vocab = build_vocab(edit_words())
    lengths = (max(len(split_words(e.instruction.text())) for e in train_ex + val_ex + held_ex),
               max(len(split_words(t)) for t in edit_words() if t.startswith(("yes", "no"))) + 1)  # + 1: the end
    data = {name: tensors(ex, *codes[name], vocab, lengths)
            for name, ex in (("train", train_ex), ("val", val_ex), ("heldout", held_ex))}
    first_words = [split_words(e.answer)[0] for e in train_ex]
    majority = max(set(first_words), key=first_words.count)
    result: dict = {"config": asdict(cfg), "dvae": dvae, "vocab_size": len(vocab) + 2,
                    "stream": {"instruction_len": lengths[0], "image_tokens": 64, "answer_len": lengths[1]},
                    "train_kinds": {k: sum(e.kind == k for e in train_ex) for k in sorted({e.kind for e in train_ex})},
                    "majority_answer": majority, "heldout_pairs": [list(p) for p in HELDOUT_PAIRS], "models": {}}

    # 3. train and evaluate: the paper's masking, then the ablation --------------------------------------
    variants = [("masked_m_loss", True)] + ([("m_loss_on_refusals", False)] if cfg.ablation else [])
    shown = None
    for name, masked in variants:
        model, losses, step_s = train_atvc(cfg, data["train"], len(vocab) + 2, lengths, cfg.codebook_size, masked)
        entry: dict = {"final_loss": float(np.mean(losses[-20:])), "train_step_s": step_s,
                       "params": sum(p.numel() for p in model.parameters())}
        for split, ex in (("val", val_ex), ("heldout_pairs", held_ex)):
            key = "val" if split == "val" else "heldout"
            entry[split], samples = evaluate(model, tok, data[key], ex, *images[key], vocab, majority)
            if shown is None and split == "val":
                shown = samples
        result["models"][name] = entry
        print(name, json.dumps({k: entry[k] for k in ("final_loss", "train_step_s")}),
              json.dumps(entry["val"]), f"{time.perf_counter() - t0:.0f}s", flush=True)
    if png is not None and shown is not None:
        plot_examples(tok, val_ex, images["val"], shown, png)
    result["seconds"] = time.perf_counter() - t0
    return result


def plot_examples(tok: ConvTokenizer, examples: list[EditExample], images: tuple[np.ndarray, np.ndarray],
                  samples: dict, path: Path, per_kind: int = 2) -> None:
    """input | re-creation | target (grey gaps), captioned with the instruction and both answers."""
    picks = []
    for kind in ("add", "remove", "recolour", "absent", "forbidden", "no_room"):
        picks += [i for i, e in enumerate(examples) if e.kind == kind][:per_kind]
    recreated = decode(tok, samples["codes"][picks])
    gap = np.full((32, 2, 3), 128, np.uint8)
    tiles = np.stack([np.concatenate([images[0][i], gap, r, gap, images[1][i]], axis=1)
                      for i, r in zip(picks, recreated)])
    tiles = np.pad(tiles, ((0, 0), (17, 17), (0, 0), (0, 0)), constant_values=255)  # square-ish tiles
    captions = [f"{examples[i].instruction.text()}\n-> {samples['answers'][i]}\n(truth: {examples[i].answer})"
                for i in picks]
    save_captioned_grid(tiles, captions, path, ncols=4,
                        title="ATVC: input | re-created (decoded M) | target (input when refused)")


def markdown(result: dict) -> str:
    kinds = ("add", "remove", "recolour", "absent", "forbidden", "no_room")
    lines = [f"# ATVC on Shapes-Edit ({result['seconds']:.0f} s)", "",
             f"dVAE (Gumbel, K={result['config']['codebook_size']}, 8x8): " + json.dumps(result["dvae"]), "",
             "Answers (greedy). yes/no accuracy; majority = the training majority answer; M forced = the verdict "
             "read after M set to the input's codes, M filler = after M set to the training filler "
             f"(refusal filler: {result['config'].get('refusal_filler', 'input')}); then the whole answer's exact "
             "match per outcome.", "",
             "| model | split | yes/no acc | majority | yes/no, M forced | yes/no, M filler | answer exact | "
             + " | ".join(kinds) + " |", "|---|---|" + "---:|" * (5 + len(kinds))]
    for name, entry in result["models"].items():
        for split in ("val", "heldout_pairs"):
            e, pk = entry[split], entry[split]["per_kind"]
            cells = [f"{pk[k]['answer_exact']:.3f}" if k in pk else "-" for k in kinds]
            lines.append(f"| {name} | {split} | {e['yes_no_acc']:.3f} | {e['majority_baseline_acc']:.3f} | "
                         f"{e['yes_no_acc_m_forced_to_input']:.3f} | {e['yes_no_acc_m_forced_to_filler']:.3f} | "
                         f"{e['answer_exact']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Re-creations of accepted instructions vs the rendered target: scene-parser exact match "
              "(add / remove / recolour) and pixel MSE ([0, 1] range).", "",
              "| model | split | n | model exact | model add/remove/recolour | copy input exact | dVAE ceiling exact | "
              "MSE model | MSE copy input | MSE ceiling | code acc model | code acc copy |",
              "|---|---|" + "---:|" * 10]
    for name, entry in result["models"].items():
        for split in ("val", "heldout_pairs"):
            r = entry[split]["recreation"]
            ops = "/".join(f"{r['model']['scene_exact_per_op'].get(op, float('nan')):.2f}" for op in ACCEPTED)
            lines.append(f"| {name} | {split} | {r['n']} | {r['model']['scene_exact']:.3f} | {ops} | "
                         f"{r['copy_input']['scene_exact']:.3f} | {r['dvae_ceiling']['scene_exact']:.3f} | "
                         f"{r['model']['pixel_mse']:.4f} | {r['copy_input']['pixel_mse']:.4f} | "
                         f"{r['dvae_ceiling']['pixel_mse']:.4f} | {r['model']['code_acc']:.3f} | "
                         f"{r['copy_input']['code_acc']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ar-steps", type=int, default=ATVCBenchConfig.ar_steps)
    parser.add_argument("--dvae-steps", type=int, default=ATVCBenchConfig.dvae_steps)
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--refusal-filler", choices=("counterfactual", "input"), default=ATVCBenchConfig.refusal_filler)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step and example count (smoke)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "atvc.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ATVCBenchConfig(ar_steps=args.ar_steps, dvae_steps=args.dvae_steps, ablation=not args.no_ablation,
                          refusal_filler=args.refusal_filler, seed=args.seed)
    if args.scale != 1.0:
        for f in ("train", "val", "heldout", "dvae_steps", "ar_steps"):
            setattr(cfg, f, max(8, int(getattr(cfg, f) * args.scale)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run(cfg, out.with_suffix(".png"))
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print("wrote", out, out.with_suffix(".md"), out.with_suffix(".png"))


if __name__ == "__main__":
    main()
