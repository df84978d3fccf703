"""MERT benchmark (P5): does masked prediction of a codec's RVQ codes plus the CQT, with in-batch
noise mixing, give frozen features that hold musical labels?

    python benchmarks/mert.py [--steps 800] [--codec-steps 3000] [--threads 1] [--data notes|music]
        [--out benchmarks/results/mert.json]

1. A teacher codec (benchmarks/audio_codec.py's model, 4 RVQ levels x 256 codes, dropout 0.5) is
   trained on the training clips; its codes of the clean clips are MERT's acoustic targets.
2. Students of one architecture (tiny MERT: conv front end to 50 Hz, 4 layers x 128) train the same
   steps on the same batches:
       mert            RVQ codes + CQT, in-batch mixing (the paper's recipe)
       mert, no mix    the same without mixing
       mel k-means     HuBERT's first iteration: one level of k-means ids (K = 256) of log-mel
                       frames, no CQT, with mixing
   and "random init" is the untrained student.
3. Frozen features (the time-mean of the last layer) of the training clips fit linear probes
   (eval/linear_probe.py); their accuracy on held-out clips is reported for each label (notes:
   pitch class of the root, timbre, kind; music: key, top part's instrument), on clean clips and
   on noisy ones (each val clip mixed with another val clip at -6 dB and white noise at 10 dB SNR).
4. The masked-code accuracy of `mert` on val clips, beside chance 1/K.

P5's claims: (1) mert's probes beat random init and mel k-means; (2) masked-code accuracy far above
1/K; (3) mixing helps on the noisy clips.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from audio_codec import build as build_codec
from audio_codec import train as train_codec

from latentforge.atomic import write_json
from latentforge.eval.linear_probe import linear_probe_accuracy
from latentforge.pretraining.mert import Mert, MertConfig, mel_kmeans_codes, train_mert

STUDENTS = {"mert": dict(mix_prob=0.5), "mert, no mix": dict(mix_prob=0.0),
            "mel k-means": dict(mix_prob=0.5, code_levels=1, cqt_bins=0)}


def load(name: str, seconds: float, train_size: int, val_size: int):
    if name == "notes":
        from latentforge.data.notes import KINDS, TIMBRES, NotesConfig, NotesData

        data = NotesData(NotesConfig(seconds=seconds, train_size=train_size, val_size=val_size))
        labels = lambda s: {"pitch class": (s["label"], 12), "timbre": (s["timbre"], len(TIMBRES)),  # noqa: E731
                            "kind": (s["kind"], len(KINDS))}
    else:
        from latentforge.data.music import INSTRUMENTS, KEYS, MusicConfig, MusicData

        data = MusicData(MusicConfig(seconds=seconds, train_size=train_size, val_size=val_size))
        labels = lambda s: {"key": (s["label"], len(KEYS)), "instrument": (s["instrument"], len(INSTRUMENTS))}  # noqa: E731
    train, val = data.split("train"), data.split("val")
    return train, val, labels(train), labels(val), data.config.sample_rate


@torch.no_grad()
def codec_codes(codec, clips: torch.Tensor) -> torch.Tensor:
    codec.eval()
    return torch.cat([codec.encode(clips[i: i + 64, :, None]) for i in range(0, len(clips), 64)])


def noisy(clips: torch.Tensor, seed: int) -> torch.Tensor:
    """Each clip + another clip at -6 dB + white noise at 10 dB SNR (per clip power)."""
    g = torch.Generator().manual_seed(seed)
    other = clips[torch.roll(torch.arange(len(clips)), 1)]
    power = clips.pow(2).mean(-1, keepdim=True)
    white = torch.randn(clips.shape, generator=g) * (power / 10).sqrt()
    return clips + 0.5 * other + white


def probes(model: Mert, train_x: torch.Tensor, val_x: torch.Tensor, noisy_x: torch.Tensor, train_labels: dict,
           val_labels: dict) -> dict:
    f_train, f_val, f_noisy = model.features(train_x).numpy(), model.features(val_x).numpy(), model.features(noisy_x).numpy()
    out = {}
    for name, (y, classes) in train_labels.items():
        out[name] = linear_probe_accuracy(f_train, y, f_val, val_labels[name][0], classes)
        out[f"{name} (noisy)"] = linear_probe_accuracy(f_train, y, f_noisy, val_labels[name][0], classes)
    return out


@torch.no_grad()
def masked_code_accuracy(model: Mert, clips: torch.Tensor, codes: torch.Tensor, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    accs = [float(model.loss({"audio": clips[i: i + 64], "codes": codes[i: i + 64]}, generator=g)["code_acc"])
            for i in range(0, len(clips), 64)]
    return float(np.mean(accs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--codec-steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--data", choices=("notes", "music"), default="notes")
    ap.add_argument("--seconds", type=float, default=0.64)
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--val-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/mert.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train, val, train_labels, val_labels, rate = load(args.data, args.seconds, args.train_size, args.val_size)
    train_x = torch.from_numpy(np.asarray(train["audio"], np.float32))
    val_x = torch.from_numpy(np.asarray(val["audio"], np.float32))
    noisy_x = noisy(val_x, args.seed)

    torch.manual_seed(args.seed)
    codec = build_codec(4, 0.5, train_x.shape[1], rate)
    codec_info = train_codec(codec, train_x[..., None], args.codec_steps, 16, 1e-3, args.seed)
    codes = {"train": codec_codes(codec, train_x), "val": codec_codes(codec, val_x)}
    print(f"teacher codec: {codec_info['train_seconds']:.0f} s, codes {list(codes['train'].shape)}", flush=True)
    kmeans = dict(zip(("train", "val"), mel_kmeans_codes(train_x, [train_x, val_x], rate, codec.config.hop)))

    results = {}
    base = MertConfig(sample_rate=rate, code_levels=4, code_vocab=256)
    results["random init"] = {"probes": probes(Mert(base), train_x, val_x, noisy_x, train_labels, val_labels)}
    print(f"random init: {results['random init']['probes']}", flush=True)
    for name, changes in STUDENTS.items():
        cfg = MertConfig(**{**base.__dict__, **changes})
        targets = kmeans if name == "mel k-means" else codes
        model, info = train_mert(cfg, train_x, targets["train"], args.steps, args.batch, args.lr, args.seed)
        row = {**info, "probes": probes(model, train_x, val_x, noisy_x, train_labels, val_labels),
               "masked_code_acc": masked_code_accuracy(model, val_x, targets["val"], args.seed), "chance": 1 / 256}
        results[name] = row
        print(f"{name}: {row['probes']} masked-code acc {row['masked_code_acc']:.3f}", flush=True)
    meta = {"args": vars(args), "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
            "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - t0, "teacher": codec_info}
    write_json(args.out, {"meta": meta, "results": results})
    print(f"wrote {args.out} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
