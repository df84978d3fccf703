"""Audio codec benchmark: quality against bitrate for one quantizer-dropout codec and for fixed-depth
codecs (SoundStream's claim: only the dropout model degrades gracefully), and the real-time factor.

    python benchmarks/audio_codec.py [--steps 1500] [--threads 1] [--data notes|music]
        [--only NAMES] [--out benchmarks/results/audio_codec.json]

Every model is the recipe's codec (tokenizers/codec.py: hop 320 = 50 frames a second at 16 kHz, an
STFT encoder and the magnitude decoder with Griffin-Lim phases, n_fft 1024 every 160 samples, mel
loss) with a residual VQ, trained on the same clips in the same batch order for the same steps, then
decoded from every prefix of its levels on the same held-out clips:

    dropout 0.5 / 8   K 256 (8 bits x 50 Hz = 0.4 kbit/s a level), 8 levels, quantizer dropout on
                      half the examples (DAC's rate), EMA codebooks with dead-code reset
    dropout 1.0 / 8   the same, every example a random depth (SoundStream)
    fixed 8           8 levels, no dropout
    fixed 4, fixed 2  4 or 2 levels, no dropout: a model per bitrate
    encodec-style / 4 EnCodec's quantizer settings: K 1024 (0.5 kbit/s a level), EMA codebooks, commitment
                      1.0, a random bandwidth per batch (dropout 1.0); 4 levels = 2.0 kbit/s
    dac-style / 4     DAC's: K 1024, learned codebooks (codebook + commitment 0.25 losses), dropout 0.5;
                      4 levels = 2.0 kbit/s (DAC's factorised 8-d codes are not reproduced)
    dac-arch / 4      DAC's architecture (`encoder: conv, decoder: conv`: strided Snake convs on the
                      waveform, mirrored), our quantizer settings (K 256, dropout 0.5), 4 levels = 1.6
                      kbit/s: the reference architecture trained here on the same data (~0.8 s a step)

Per model and prefix: bitrate, multi-scale mel distance, SI-SDR, and on notes the pitch tracker's
exact reading (eval/pitch.py) of the decoded clips. The real-time factor is the seconds one thread
takes to encode and decode 10 s of audio, over 10 (fp32, batch 1; < 1 is faster than real time).

Time: about 0.15 s a step on one core (0.8 for dac-arch): the 7 magnitude-decoder models x 1,500
steps ~ 30 min (two processes with --only halve it), dac-arch 20 min more.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from latentforge.atomic import write_json
from latentforge.modalities.audio_metrics import mel_distance, si_sdr
from latentforge.quantize.rvq import RVQConfig
from latentforge.tokenizers.codec import CodecConfig, CodecTokenizer

CODEC = dict(strides=(2, 4, 5, 8), channels=(16, 32, 64, 128, 128), dilations=(1, 3, 9), encoder="stft",
             decoder="magnitude", istft_hop=160, n_fft=1024)
OURS = dict(codebook_size=256, codebook_update="ema")
MODELS = {  # name -> (levels, quantizer dropout rate (0 = off), RVQ settings)
    "dropout 0.5 / 8": (8, 0.5, OURS),
    "dropout 1.0 / 8": (8, 1.0, OURS),
    "fixed 8": (8, 0.0, OURS),
    "fixed 4": (4, 0.0, OURS),
    "fixed 2": (2, 0.0, OURS),
    "encodec-style / 4": (4, 1.0, dict(codebook_size=1024, codebook_update="ema", commitment=1.0)),
    "dac-style / 4": (4, 0.5, dict(codebook_size=1024, codebook_update="learned", commitment=0.25)),
    "dac-arch / 4": (4, 0.5, OURS),
}
ARCHITECTURE = {"dac-arch / 4": dict(encoder="conv", decoder="conv")}  # models that differ from CODEC


def load_data(name: str, train_size: int, val_size: int) -> tuple[dict, dict, int]:
    if name == "notes":
        from latentforge.data.notes import NotesConfig, NotesData

        data = NotesData(NotesConfig(seconds=0.5, train_size=train_size, val_size=val_size))
    else:
        from latentforge.data.music import MusicConfig, MusicData

        data = MusicData(MusicConfig(seconds=0.5, train_size=train_size, val_size=val_size))
    return data.split("train"), data.split("val"), data.config.sample_rate


def build(levels: int, rate: float, length: int, sample_rate: int, rvq: dict = OURS,
          architecture: dict | None = None) -> CodecTokenizer:
    quantizer = RVQConfig(dim=32, depth=levels, quantizer_dropout=rate > 0, dropout_rate=rate if rate > 0 else 1.0,
                          **rvq)
    return CodecTokenizer(CodecConfig(seq_len=length, sample_rate=sample_rate, quantizer=quantizer,
                                      **{**CODEC, **(architecture or {})}))


def train(model: CodecTokenizer, clips: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    order = torch.Generator().manual_seed(seed)   # the same batches for every model
    model.train()
    start, loss = time.perf_counter(), float("nan")
    for _ in range(steps):
        out = model.loss({"audio": clips[torch.randint(0, len(clips), (batch,), generator=order)]})
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        loss = float(out["loss"].detach())
    return {"train_seconds": time.perf_counter() - start, "final_loss": loss}


@torch.no_grad()
def score(model: CodecTokenizer, val: dict, sample_rate: int, judge: bool) -> list[dict]:
    from latentforge.data.notes import KINDS
    from latentforge.eval.pitch import notes_adherence

    model.eval()
    x = torch.from_numpy(np.asarray(val["audio"], np.float32))[..., None]
    codes = torch.cat([model.encode(x[i: i + 32]) for i in range(0, len(x), 32)])
    rows = []
    for q in range(1, codes.shape[-1] + 1):
        y = torch.cat([model.decode(codes[i: i + 32, :, :q]) for i in range(0, len(x), 32)])[..., 0]
        row = {"levels": q, "kbps": model.config.bitrate(q) / 1000, **usage(codes[..., q - 1], model),
               "mel_distance": float(mel_distance(y, x[..., 0], sample_rate).mean()),
               "si_sdr": float(si_sdr(y, x[..., 0]).mean())}
        if judge:
            row["notes_exact"] = notes_adherence(y.numpy(), sample_rate, [KINDS[k] for k in val["kind"]],
                                                 val["root"])["notes_exact"]
        rows.append(row)
    return rows


def usage(codes: torch.Tensor, model: CodecTokenizer) -> dict:
    """Level's share of codes used at least once on the val clips, and its perplexity."""
    counts = torch.bincount(codes.flatten(), minlength=model.config.quantizer.codebook_size).double()
    p = counts / counts.sum()
    return {"usage": float((counts > 0).double().mean()),
            "perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))}


@torch.no_grad()
def real_time_factor(model: CodecTokenizer, sample_rate: int, seconds: float = 10.0) -> float:
    """Seconds to encode + decode `seconds` of audio in one call (batch 1), over `seconds`."""
    model.eval()
    n = int(seconds * sample_rate) // model.config.hop * model.config.hop
    tok = CodecTokenizer(CodecConfig(**{**model.config.__dict__, "seq_len": n}))
    tok.load_state_dict(model.state_dict())
    x = torch.randn(1, n, 1).clamp(-1, 1) * 0.3
    tok.decode(tok.encode(x))                                       # warm-up
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        tok.decode(tok.encode(x))
        best = min(best, time.perf_counter() - start)
    return best / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data", choices=("notes", "music"), default="notes")
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--val-size", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/audio_codec.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_split, val, rate = load_data(args.data, args.train_size, args.val_size)
    clips = torch.from_numpy(np.asarray(train_split["audio"], np.float32))[..., None]
    names = [n for n in MODELS if not args.only or n in args.only.split(",")]
    results = {}
    for name in names:
        levels, dropout, rvq = MODELS[name]
        torch.manual_seed(args.seed)
        model = build(levels, dropout, clips.shape[1], rate, rvq, ARCHITECTURE.get(name))
        info = train(model, clips, args.steps, args.batch, args.lr, args.seed)
        rows = score(model, val, rate, judge=args.data == "notes")
        results[name] = {**info, "params": sum(p.numel() for p in model.parameters()),
                         "sec_per_step": info["train_seconds"] / args.steps, "prefixes": rows}
        print(f"{name}: " + ", ".join(f"{r['kbps']:.1f} kbps mel {r['mel_distance']:.3f}" for r in rows), flush=True)
    rtf = real_time_factor(build(8, 0.5, clips.shape[1], rate), rate)
    meta = {"args": vars(args), "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
            "date": time.strftime("%Y-%m-%d %H:%M"), "real_time_factor_1_thread": rtf}
    write_json(args.out, {"meta": meta, "codec": {k: list(v) if isinstance(v, tuple) else v for k, v in CODEC.items()},
                          "results": results})
    print(f"real-time factor (1 thread, encode + decode): {rtf:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
