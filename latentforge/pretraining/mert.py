"""MERT (P5): a music encoder pretrained by masked prediction of an acoustic teacher's residual VQ
codes and of a constant-Q spectrum, with in-batch noise mixing.

Legend: B clips, L samples, T frames (L / hop: one per teacher code frame), D width, Q code levels,
K codes a level, P = proj_dim, C = cqt_bins.

    wave [B, L] -> per-clip standardised -> conv front end (strides whose product is `hop`)
      -> frames [B, T, D]; masked spans (mask_prob 0.8 of span starts / span 5, as fairseq's
         compute_mask_indices) replaced by a learned mask vector
      -> convolutional position embedding (wav2vec 2.0's grouped conv) -> transformer [B, T, D]
    heads, on masked frames only:
      codes: one Linear(D, Q·P) split into Q projections; logits_q = cos(proj_q(h), emb_q) / 0.1
             against the K code embeddings of level q; cross-entropy with the teacher's codes
      cqt:   Linear(D, C), MSE against the pseudo-CQT (nn/spectral.py) of the clean clip

In-batch noise mixing: with probability `mix_prob` a clip gets 1..3 segments (a `mix_fraction`
range of its length) cut from other clips of the batch added to it, at a random gain. The targets
come from the clean clip, so the student learns to hear the music under the noise.

The teacher is any tokenizer whose codes sit on the student's frames: the library's audio codec
(hop 320 = 50 Hz at 16 kHz) or, for the baseline, k-means ids of log-mel frames (one level).
`features` (the probe contract) is the time-mean of the final hidden states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ModelConfig
from latentforge.nn.spectral import cqt, log_mel
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register


@dataclass
class MertConfig(ModelConfig):
    kind = "probe"
    name: str = "mert"
    sample_rate: int = 16000
    strides: tuple[int, ...] = (5, 4, 4, 4)       # front end; the product is the frame hop
    front_channels: int = 128
    dim: int = 128                                 # D
    depth: int = 4
    heads: int = 4
    code_levels: int = 4                           # Q (0: no code target)
    code_vocab: int = 256                          # K
    proj_dim: int = 64                             # P
    temperature: float = 0.1
    cqt_bins: int = 84                             # C (0: no CQT target); 7 octaves from fmin
    cqt_fmin: float = 32.7
    cqt_weight: float = 1.0
    mask_prob: float = 0.8
    mask_span: int = 5
    mix_prob: float = 0.5
    mix_fraction: tuple[float, float] = (0.1, 0.3)

    def __post_init__(self) -> None:
        self.strides, self.mix_fraction = tuple(self.strides), tuple(self.mix_fraction)
        if not self.strides or any(s < 1 for s in self.strides):
            raise ValueError(f"strides must be positive, got {list(self.strides)}")
        if self.code_levels < 0 or self.cqt_bins < 0 or (self.code_levels == 0 and self.cqt_bins == 0):
            raise ValueError("MERT needs a target: code_levels > 0 (teacher codes) or cqt_bins > 0 (CQT)")
        if not 0 < self.mask_prob <= 1 or self.mask_span < 1:
            raise ValueError(f"mask_prob must be in (0, 1] and mask_span >= 1, got {self.mask_prob}, {self.mask_span}")
        if not 0 <= self.mix_prob <= 1 or not 0 < self.mix_fraction[0] <= self.mix_fraction[1] < 1:
            raise ValueError(f"mix_prob in [0, 1] and 0 < mix_fraction low <= high < 1, got {self.mix_prob}, "
                             f"{list(self.mix_fraction)}")

    @property
    def hop(self) -> int:
        return math.prod(self.strides)

    @property
    def feature_dim(self) -> int:
        return self.dim

    @classmethod
    def tiny(cls) -> MertConfig:
        return cls(strides=(4, 4), front_channels=8, dim=16, depth=1, heads=2, code_levels=2, code_vocab=8,
                   proj_dim=4, cqt_bins=12, cqt_fmin=130.8)


def span_mask(batch: int, frames: int, prob: float, span: int, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> Tensor:
    """bool [B, T]: spans of `span` frames start at each frame with probability prob / span (about
    1 - exp(-prob) of the frames end up masked, fairseq's expected coverage); at least one frame a clip."""
    starts = torch.rand(batch, frames, generator=generator).to(device) < prob / span
    # frame t is masked when a span started in t - span + 1 .. t: a running max over the left-padded starts
    mask = F.max_pool1d(F.pad(starts.float()[:, None], (span - 1, 0)), span, stride=1)[:, 0] > 0
    none = ~mask.any(1)
    if none.any():
        mask[none, torch.randint(0, frames, (int(none.sum()),), generator=generator).to(device)] = True
    return mask


def mix_in_batch(wave: Tensor, prob: float, fraction: tuple[float, float], generator: torch.Generator | None = None) -> Tensor:
    """[B, L] -> [B, L]: with probability `prob` a clip gets 1..3 segments of other clips in the batch
    (each `fraction` of L long, at a gain in [0.3, 1]) added at random places."""
    B, L = wave.shape
    out = wave.clone()
    if B < 2:
        return out
    for b in range(B):
        if float(torch.rand((), generator=generator)) >= prob:
            continue
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            n = int(L * (fraction[0] + (fraction[1] - fraction[0]) * float(torch.rand((), generator=generator))))
            other = (b + int(torch.randint(1, B, (), generator=generator))) % B      # never the clip itself
            src = int(torch.randint(0, L - n + 1, (), generator=generator))
            dst = int(torch.randint(0, L - n + 1, (), generator=generator))
            gain = 0.3 + 0.7 * float(torch.rand((), generator=generator))
            out[b, dst: dst + n] += gain * wave[other, src: src + n]
    return out


class FrontEnd(nn.Module):
    """[B, L] -> [B, L / hop, D]: strided convs (kernel 2s, GELU; GroupNorm after the first, as
    wav2vec 2.0), then LayerNorm and a projection to the transformer's width."""

    def __init__(self, cfg: MertConfig) -> None:
        super().__init__()
        c = cfg.front_channels
        layers: list[nn.Module] = []
        for i, s in enumerate(cfg.strides):
            layers.append(nn.Conv1d(1 if i == 0 else c, c, 2 * s, stride=s, padding=math.ceil(s / 2), bias=False))
            if i == 0:
                layers.append(nn.GroupNorm(c, c))
            layers.append(nn.GELU())
        self.convs = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(c)
        self.proj = nn.Linear(c, cfg.dim)
        self.hop = cfg.hop

    def forward(self, wave: Tensor) -> Tensor:
        frames = wave.shape[-1] // self.hop
        x = self.convs(wave[:, None])[..., :frames].transpose(1, 2)  # [B, T, c]
        return self.proj(self.norm(x))


@register("probe", "mert", MertConfig)
class Mert(nn.Module):
    def __init__(self, config: MertConfig) -> None:
        super().__init__()
        self.config = config
        D = config.dim
        self.front = FrontEnd(config)
        self.mask_embedding = nn.Parameter(torch.randn(D) * 0.02)
        self.position = nn.Sequential(nn.Conv1d(D, D, 9, padding=4, groups=math.gcd(D, 16)), nn.GELU())
        self.encoder = Transformer(D, config.depth, config.heads)
        init_transformer_weights(self.encoder, config.depth)
        if config.code_levels:
            self.code_proj = nn.Linear(D, config.code_levels * config.proj_dim)
            self.code_embeddings = nn.Parameter(torch.randn(config.code_levels, config.code_vocab, config.proj_dim) * 0.1)
        if config.cqt_bins:
            self.cqt_head = nn.Linear(D, config.cqt_bins)

    def hidden(self, wave: Tensor, mask: Tensor | None = None) -> Tensor:
        """[B, L] -> final hidden states [B, T, D] (masked frames replaced by the mask vector)."""
        x = (wave - wave.mean(-1, keepdim=True)) / wave.std(-1, keepdim=True).clamp_min(1e-5)
        h = self.front(x)
        if mask is not None:
            h = torch.where(mask[..., None], self.mask_embedding.to(h.dtype), h)
        h = h + self.position(h.transpose(1, 2)).transpose(1, 2)
        return self.encoder(h)

    def targets(self, wave: Tensor) -> Tensor:
        """The CQT target of clean clips [B, L] on the student's frames: [B, T, C]."""
        cfg = self.config
        frames = wave.shape[-1] // cfg.hop
        return cqt(wave.float(), cfg.sample_rate, cfg.hop, fmin=cfg.cqt_fmin, n_bins=cfg.cqt_bins)[:, :frames]

    def code_logits(self, h: Tensor) -> Tensor:
        """[N, D] -> [N, Q, K]: cosine similarity of each level's projection to its code embeddings / temperature."""
        cfg = self.config
        proj = F.normalize(self.code_proj(h).view(-1, cfg.code_levels, cfg.proj_dim), dim=-1)
        return torch.einsum("nqp,qkp->nqk", proj, F.normalize(self.code_embeddings, dim=-1)) / cfg.temperature

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """batch: "audio" clean clips [B, L] (or [B, L, 1]); "codes" the teacher's int64 [B, T, Q] (or
        [B, T] for one level) when code_levels > 0. Returns 'loss', its terms and the masked-code accuracy."""
        cfg = self.config
        wave = batch["audio"]
        wave = wave[..., 0] if wave.dim() == 3 else wave
        B, frames = wave.shape[0], wave.shape[-1] // cfg.hop
        mask = span_mask(B, frames, cfg.mask_prob, cfg.mask_span, generator, wave.device)
        noisy = mix_in_batch(wave, cfg.mix_prob, cfg.mix_fraction, generator) if self.training else wave
        h = self.hidden(noisy, mask)[mask]                                          # [N, D], masked frames
        out: dict[str, Tensor] = {}
        if cfg.code_levels:
            codes = batch["codes"]
            codes = codes[..., None] if codes.dim() == 2 else codes
            if codes.shape[1] != frames or codes.shape[2] < cfg.code_levels:
                raise ValueError(f"codes {list(codes.shape)} do not fit {frames} frames x {cfg.code_levels} levels")
            target = codes[:, :, : cfg.code_levels][mask]                               # [N, Q]
            logits = self.code_logits(h)
            out["codes"] = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
            out["code_acc"] = (logits.argmax(-1) == target).float().mean().detach()
        if cfg.cqt_bins:
            out["cqt"] = cfg.cqt_weight * F.mse_loss(self.cqt_head(h).float(), self.targets(wave)[mask])
        out["masked_frac"] = mask.float().mean()
        return {"loss": sum(v for k, v in out.items() if k in ("codes", "cqt")), **out}

    @torch.no_grad()
    def features(self, clips: Tensor | np.ndarray, batch: int = 64) -> Tensor:
        """Clips [N, L] -> float64 [N, D]: the time-mean of the final hidden states (eval mode, fp32)."""
        self.eval()
        x = torch.as_tensor(np.asarray(clips, np.float32) if isinstance(clips, np.ndarray) else clips).float()
        x = x[..., 0] if x.dim() == 3 else x
        device = next(self.parameters()).device
        return torch.cat([self.hidden(x[i: i + batch].to(device)).mean(1).double().cpu() for i in range(0, len(x), batch)])


@torch.no_grad()
def mel_kmeans_codes(train: Tensor, clips: list[Tensor], sample_rate: int, hop: int,
                     codebook_size: int = 256) -> list[Tensor]:
    """HuBERT's first-iteration targets: one level of k-means ids (k-means++ and 20 Lloyd iterations,
    quantize/vq.py's) of 40-band log-mel frames on the student's frames (every `hop` samples),
    fitted on the `train` clips [N, L]; the ids of each tensor of `clips`: [N_i, L / hop] int64."""
    from latentforge.quantize.vq import VectorQuantizer, VQConfig

    def frames(x: Tensor) -> Tensor:
        m = log_mel(x, sample_rate, n_fft=1024, hop=hop, n_mels=40)[..., : x.shape[-1] // hop]  # [B, M, T]
        return m.transpose(1, 2)                                                              # [B, T, M]

    feats = frames(train)
    vq = VectorQuantizer(VQConfig(codebook_size=codebook_size, dim=feats.shape[-1], kmeans_iters=20,
                                  codebook_update="ema"))
    vq.train()(feats.reshape(1, -1, feats.shape[-1]))            # the first call seeds the codebook by k-means
    return [vq.nearest(frames(x).reshape(-1, feats.shape[-1])).view(len(x), -1) for x in clips]


def train_mert(cfg: MertConfig, clips: Tensor, codes: Tensor | None, steps: int, batch: int = 16, lr: float = 1e-3,
               seed: int = 0, progress=None) -> tuple[Mert, dict]:
    """A student trained on clips [N, L] (and the teacher's codes [N, T(, Q)] when code_levels > 0):
    AdamW (betas 0.9, 0.98, weight decay 0.01), linear warm-up over a tenth of the steps then linear
    decay to 5 %, gradients clipped at 10, seeded batches and masks. `progress(step, out)` is called
    after every step when given. Returns the model in eval mode and the final terms."""
    import time

    torch.manual_seed(seed)
    model = Mert(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
    order, noise = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    start, last = time.perf_counter(), {}
    for step in range(steps):
        idx = torch.randint(0, len(clips), (batch,), generator=order)
        out = model.loss({"audio": clips[idx], **({"codes": codes[idx]} if codes is not None else {})}, generator=noise)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        schedule.step()
        last = {k: float(v.detach()) for k, v in out.items()}
        if progress is not None:
            progress(step, last)
    return model.eval(), {"train_seconds": time.perf_counter() - start, **{f"final_{k}": v for k, v in last.items()}}
