"""Every number of a run's `metrics.json`, computed from a run's artifacts (`EvalInputs`).

    {"tokenizer":    {psnr, ssim, ms_ssim, psnr_low, psnr_high_1, rfid, codebook_usage, ...},
     "generator":    {val_loss, bits_per_token, <the data set's judge>, diversity,
                      samples_per_s, ms_per_step, ...},                (absent for tokenizer-only runs)
     "distribution": {"features": {name, source, hash, ...}, "n", "seed",
                      "model": {fid, kid, kid_std, precision, recall, density, coverage,
                                nearest_train_ratio},
                      "baselines": {"real (test split)": {...}, <the modality's baselines>}},
     "eval": {"metrics": [...], "n": ..., "seed": ...}}
The tokenizer's reconstruction numbers are the modality's (`Modality.recon_metrics`: PSNR and
SSIM for images, MPJPE for motion); adherence is the data set's judge (`eval/judges.py`).
Fractions are in [0, 1], PSNR in dB. Which groups are computed is `eval.metrics`
(recon, val, adherence, diversity, speed, fid, kid, pr); a group that does not apply to the
run (adherence of unconditional samples, FID without a feature network) is left out and
`eval.skipped` says why. The same n and seed give the same numbers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from latentforge.eval import baselines
from latentforge.eval.distribution import density_coverage, fid, kid, precision_recall
from latentforge.eval.diversity import diversity
from latentforge.eval.inception import InceptionOutputs
from latentforge.eval.inception_score import inception_score
from latentforge.eval.judges import judge_for
from latentforge.eval.reference_batch import GaussianStats, evaluate_against_reference, read_reference_batch
from latentforge.pipeline import condition_tensors
from latentforge.quantize.base import code_histogram, codebook_stats

if TYPE_CHECKING:
    from latentforge.eval.features import FeatureExtractor
    from latentforge.pipeline import Pipeline

DISTRIBUTION = ("fid", "kid", "pr")


@dataclass
class EvalInputs:
    """A run's artifacts, as evaluation reads them."""
    folder: Path                              # the run folder: previews are written here
    dataset: Any                              # the data set: modality, judge, splits past the stored ones
    train: dict[str, np.ndarray]              # the stored splits
    val: dict[str, np.ndarray]
    tokenizer: torch.nn.Module
    pipeline: Pipeline | None                 # None for a tokenizer-only run
    val_latents: torch.Tensor | None          # the encoded val split
    samples: dict[str, np.ndarray] | None     # samples.npz of the sample stage
    sampling: dict[str, Any]                  # the generator's sampling options
    batch_size: int = 256
    device: torch.device = torch.device("cpu")

    @property
    def modality(self) -> Any:
        return self.dataset.modality

    def draw(self, rows: dict[str, np.ndarray], n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.pipeline.sample(rows, n, seed, self.dataset, self.sampling, self.batch_size)


def _say(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


@torch.no_grad()
def tokenizer_metrics(tokenizer, modality: Any, examples: np.ndarray, device: torch.device,
                      batch: int | None = None) -> tuple[dict, np.ndarray]:
    """The modality's reconstruction metrics over `examples`; for discrete latents, codebook usage
    over their codes (per level for residual codes, the headline numbers averaged over levels).
    `batch`: examples per tokenizer call (default: the modality's `inference_batch`)."""
    spec = tokenizer.spec
    batch = batch or modality.inference_batch
    recons, counts = [], None
    for i in range(0, len(examples), batch):
        q = tokenizer.quantize(modality.to_model(examples[i:i + batch]).to(device))
        recons.append(modality.from_model(tokenizer.decode_latents(q.z_q)))
        if spec.kind == "discrete":
            levels = q.codes.cpu().reshape(-1, spec.depth)  # [N, depth]
            h = torch.stack([code_histogram(levels[:, d], spec.vocab_size) for d in range(spec.depth)])
            counts = h if counts is None else counts + h
    recon = np.concatenate(recons)
    out = modality.recon_metrics(examples, recon)
    if spec.kind == "discrete" and spec.depth > 1 and tokenizer.quantizer.prefix_decodable:
        out.update(prefix_metrics(tokenizer, modality, examples, device, batch))
    if counts is not None:
        per_level = [codebook_stats(c) for c in counts]
        out.update({
            "codebook_usage": float(np.mean([s["codebook_usage"] for s in per_level])),
            "perplexity": float(np.mean([s["perplexity"] for s in per_level])),
            "dead_codes": int(sum(s["dead_codes"] for s in per_level)),
            "codebook_size": spec.vocab_size,
        })
        if spec.depth > 1:
            out["per_level"] = per_level
    out["n_examples"] = len(examples)
    return out, recon
@torch.no_grad()
def prefix_metrics(tokenizer, modality: Any, examples: np.ndarray, device: torch.device,
                   batch: int | None = None) -> dict[str, list[float]]:
    """Residual codes: the modality's headline reconstruction number (PSNR, MPJPE) when only the
    first k levels are decoded, k = 1..depth: what each level adds (P3's check)."""
    batch = batch or modality.inference_batch
    depth = tokenizer.spec.depth
    recons: list[list[np.ndarray]] = [[] for _ in range(depth)]
    for i in range(0, len(examples), batch):
        codes = tokenizer.encode(modality.to_model(examples[i:i + batch]).to(device))   # [B, *grid, depth]
        for k in range(depth):
            recons[k].append(modality.from_model(tokenizer.decode(codes[..., : k + 1])))
    per_level = [modality.recon_metrics(examples, np.concatenate(r)) for r in recons]
    headline = next(iter(per_level[0]))
    return {f"{headline}_by_levels": [m[headline] for m in per_level]}


@torch.no_grad()
def validation_terms(generator, latents: torch.Tensor, cond: dict[str, torch.Tensor], device: torch.device,
                     batch: int = 500, seed: int = 0) -> dict[str, float]:
    """The generator's training terms on held-out latents, averaged per example: `val_loss`, and
    `bits_per_token` for generators of discrete codes. Seeded, since diffusion losses draw noise."""
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    for i in range(0, len(latents), batch):
        part = {k: v[i:i + batch].to(device) for k, v in cond.items()}
        z = latents[i:i + batch].to(device)
        out = generator.loss(z, generator.encode_condition(part) if generator.conditioner is not None else None)
        for key, value in out.items():
            if value.dim() == 0:
                sums[key] = sums.get(key, 0.0) + float(value) * len(z)
    means = {k: v / len(latents) for k, v in sums.items()}
    out = {"val_loss": means.pop("loss")}
    if "bits_per_token" in means:
        out["bits_per_token"] = means["bits_per_token"]
    return out


def set_metrics(features: FeatureExtractor, a: torch.Tensor, fake: np.ndarray, groups: set[str],
                seed: int, real_spatial: GaussianStats | None = None,
                outputs: InceptionOutputs | None = None) -> dict[str, float]:
    """The distribution metrics in `groups` (fid, kid, pr) of `fake` examples against real features `a`.

    With Inception features `real_spatial` holds the real set's sFID statistics, and the fid group
    also reports sFID and the Inception Score of `fake`, all from the same network pass (`outputs`,
    when the caller has made it already)."""
    out: dict[str, float] = {}
    if real_spatial is not None:
        outputs = outputs if outputs is not None else features.fn.outputs(fake)
        b = outputs.pool
        if "fid" in groups:
            out["sfid"] = real_spatial.frechet_to_samples(outputs.spatial)
            out.update(inception_score(outputs.logits_unbiased, splits=min(10, len(fake))))
    else:
        b = features(fake)
    if "fid" in groups:
        out["fid"] = fid(a, b)
    if "kid" in groups:
        # subsets of half the set, so their spread (kid_std) says something; at most 1,000 (the paper's)
        out.update(kid(a, b, subset_size=max(2, min(1000, min(len(a), len(b)) // 2)), seed=seed))
    if "pr" in groups:
        out.update(precision_recall(a, b))
        out.update(density_coverage(a, b))
    return out


def real_split(inputs: EvalInputs, split: str, n: int) -> dict[str, np.ndarray]:
    """The first n rows of a split: the stored val split when it holds enough, else drawn from the
    data set with a larger split (row i of a split does not depend on the split's size)."""
    dataset = inputs.dataset
    sized = hasattr(dataset.config, "val_size")
    if split == "val" and (len(dataset.examples(inputs.val)) >= n or not sized):
        return {k: v[:n] for k, v in inputs.val.items()}
    if sized and dataset.config.val_size < n:
        dataset = dataset.resized(val_size=n)
    return {k: v[:n] for k, v in dataset.split(split).items()}


def distribution_metrics(inputs: EvalInputs, features: FeatureExtractor, groups: set[str], n: int, seed: int,
                         with_baselines: bool, reference_batch: str = "") -> dict[str, Any]:
    """FID/KID/PR of n fresh samples (one per val condition, seeded) against the first n val
    examples, with the floor and the modality's baselines beside them."""
    dataset, modality = inputs.dataset, inputs.modality
    val = real_split(inputs, "val", n)
    real = dataset.examples(val)
    n = len(real)
    train = dataset.examples(inputs.train)
    _say(f"distribution metrics on {n} {modality.noun} a set ({features.name} features)")
    real_spatial = None
    if features.name == "inception":  # one pass gives FID's pool features and sFID's spatial ones
        real_outputs = features.fn.outputs(real)
        a, real_spatial = real_outputs.pool, GaussianStats.of(real_outputs.spatial)
    else:
        a = features(real)
    out: dict[str, Any] = {"features": features.describe(), "n": n, "seed": seed, "reference": "val split",
                           "noun": modality.noun}
    if inputs.pipeline is not None:
        samples, _ = inputs.draw(dataset.conditions(val), n, seed)
        # one Inception pass over the samples serves the val-split metrics and the reference batch
        outputs = features.fn.outputs(samples) if real_spatial is not None else None
        model = set_metrics(features, a, samples, groups, seed, real_spatial, outputs)
        if reference_batch:  # the papers' protocol: the samples against ADM's reference statistics
            if outputs is None:
                raise ValueError(f"eval.reference_batch {reference_batch}: ADM batches hold Inception statistics of "
                                 f"images; this run's distribution features are {features.name!r}")
            _say(f"scoring the samples against the reference batch {reference_batch}")
            model["reference_batch"] = {"file": reference_batch, **evaluate_against_reference(
                features.fn, read_reference_batch(reference_batch), outputs, splits=min(10, len(samples)))}
        model.update(modality.sample_set_metrics(samples, real))
        model.update(baselines.nearest_train_ratio(modality.flat(samples), modality.flat(real), modality.flat(train)))
        out["model"] = model
    if with_baselines:
        out["baselines"] = {}
        try:
            test = dataset.examples(real_split(inputs, "test", n))
            out["baselines"]["real (test split)"] = {**set_metrics(features, a, test, groups, seed, real_spatial),
                                                     **modality.sample_set_metrics(test, real)}
        except ValueError as err:  # a data set without a test split (a user's folder)
            out["no_floor"] = str(err)
        for name, fake in modality.baselines(train, n, seed).items():
            out["baselines"][name] = {**set_metrics(features, a, fake, groups, seed, real_spatial),
                                      **modality.sample_set_metrics(fake, real)}
    return out


def recon_adherence(dataset: Any, examples: np.ndarray, recon: np.ndarray, val: dict[str, np.ndarray]) -> dict[str, float]:
    """The data set's judge on tokenizer reconstructions of the first len(examples) val rows, against
    those rows' own conditions: the ceiling a generator over these latents can reach, keyed judge_*.
    Empty when the data set has no judge or no conditions."""
    score = judge_for(dataset)
    rows = {k: v[: len(examples)] for k, v in dataset.conditions(val).items()} if score is not None else {}
    if not rows:
        return {}
    return {f"judge_{k}": v for k, v in score(dataset, recon, rows, examples).items() if not k.startswith("real")}


def evaluate(inputs: EvalInputs, config: Any, progress: bool = True) -> dict[str, Any]:
    """Compute the groups of `config.metrics` (an `EvalConfig`) from a run's artifacts."""
    from latentforge.eval.features import pick_features

    ecfg, device, dataset, modality = config, inputs.device, inputs.dataset, inputs.modality
    wanted = set(ecfg.metrics)
    skipped: dict[str, str] = {}
    previews: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    val_examples = dataset.examples(inputs.val)
    need_features = bool(wanted & set(DISTRIBUTION))
    features = (pick_features(dataset, ecfg.inception_weights or None, device, progress,
                              ecfg.inception_resize) if need_features else None)
    if need_features and features is None:
        for g in sorted(wanted & set(DISTRIBUTION)):
            skipped[g] = (f"data {dataset.config.name!r} has no probe network"
                          + ("; give Inception weights (--inception-weights PATH)" if modality.name == "image" else ""))

    if "recon" in wanted:
        examples = val_examples[: ecfg.recon_images]
        tok_metrics, recon = tokenizer_metrics(inputs.tokenizer, modality, examples, device)
        if features is not None:
            tok_metrics["rfid"] = fid(features(examples), features(recon))
        tok_metrics.update(recon_adherence(dataset, examples, recon, inputs.val) if "adherence" in wanted else {})
        out["tokenizer"] = tok_metrics
        k = min(ecfg.show, len(examples))
        headline = next(iter(tok_metrics.items()))
        previews["reconstructions"] = modality.preview_pairs(
            examples[:k], recon[:k], inputs.folder / "reconstructions",
            title=f"tokenizer reconstructions (val {headline[0]} {headline[1]:.4g})")

    pipe = inputs.pipeline
    if pipe is not None:
        gen_metrics: dict[str, Any] = {}
        if "val" in wanted:
            cond = ({} if pipe.generator.conditioner is None else
                    condition_tensors(dataset, inputs.val, pipe.generator))
            gen_metrics.update(validation_terms(pipe.generator, inputs.val_latents, cond, device))
        saved = dict(inputs.samples)
        samples, groups = saved.pop("samples"), saved.pop("groups")
        if "adherence" in wanted:
            score = judge_for(dataset)
            if not saved:
                skipped["adherence"] = "unconditional samples"
            elif score is None:
                skipped["adherence"] = f"data {dataset.config.name!r} has no judge"
            else:  # conditional: how well the samples follow their conditions
                gen_metrics.update(score(dataset, samples, saved, val_examples[groups]))
        if "diversity" in wanted:
            if len(groups) > len(np.unique(groups)):
                gen_metrics.update(diversity(modality.flat(samples), groups))
            else:
                skipped["diversity"] = "one sample per condition (sample.per_graph: 1)"
        if "speed" in wanted:
            gen_metrics.update(_speed(inputs, ecfg.speed_batch))
        gen_metrics["n_samples"] = len(samples)
        gen_metrics["n_conditions"] = len(np.unique(groups))
        out["generator"] = gen_metrics
    else:
        for g in sorted(wanted & {"val", "adherence", "diversity", "speed"}):
            skipped[g] = "a tokenizer-only run"

    if features is not None:
        out["distribution"] = distribution_metrics(inputs, features, wanted & set(DISTRIBUTION), ecfg.n, ecfg.seed,
                                                   ecfg.baselines, ecfg.reference_batch)
    out["eval"] = {"metrics": [m for m in ecfg.metrics], "n": ecfg.n, "seed": ecfg.seed,
                   "skipped": skipped, "previews": previews}
    return out


def _speed(inputs: EvalInputs, batch: int) -> dict[str, float]:
    """Sampling speed at `eval.speed_batch` examples a call, median of 3 after a warm-up call; for
    clips also the real-time factor (seconds of compute per second of output, decoding included:
    below 1 is faster than real time)."""
    from latentforge.eval.speed import sampling_speed

    n = min(batch, len(inputs.dataset.examples(inputs.val)))
    rows = {k: v[:n] for k, v in inputs.dataset.conditions(inputs.val).items()}
    out = sampling_speed(lambda: inputs.draw(rows, n, 0), inputs.pipeline.generator, n)
    seconds = inputs.modality.seconds
    if seconds:
        out["real_time_factor"] = 1.0 / (out["samples_per_s"] * seconds)
    return out
