"""REPA: representation alignment of a generator's hidden states with a frozen image encoder.

Legend: B batch, N generator tokens (its patch grid), D generator width, M encoder patches,
C encoder channels, H the projector's hidden width.

REPA (Yu et al. 2024, "Representation Alignment for Generation: Training Diffusion Transformers Is
Easier Than You Think"; github.com/sihyun-yu/REPA, models/sit.py and loss.py, read for the facts):
while the generator learns to denoise, the hidden states h [B, N, D] after one early block (SiT-XL
uses block 8 of 28, about depth / 3) of its pass on the *noisy* input are mapped per token by a
small MLP, Linear(D, H) -> SiLU -> Linear(H, H) -> SiLU -> Linear(H, C) (H = 2048 in the paper),
and pulled towards a frozen pretrained encoder's patch features y [B, N, C] of the *clean* image:

    loss = generator loss + lambda * mean over (B, N) of (1 - cos(MLP(h), y))       lambda = 0.5

(the paper's code uses -cos; 1 - cos differs by a constant, so the gradients are the same). The
early blocks then learn a semantic representation they would otherwise have to discover from the
denoising loss alone, which the paper reports speeds up convergence by over 17x on ImageNet.

Here the block's output is read with a forward hook, so neither generator's code changes and its
outputs are those without REPA. Encoders: any module mapping images [B, 3, S, S] in [-1, 1] to
patch features [B, M, C] (the Shapes probe's conv stages, tokenizers/rae.py `ProbeEncoder`; P18's
MP3 ViT, pretraining/mp3.py); their M patches are resized (area-averaged, or bilinear when the
generator's grid is finer) to the generator's token grid.

    repa = REPA(RepaConfig(), generator, encoder, encoder_dim)   # the encoder is frozen here
    out = repa.loss(generator, z, context, images)
    # {"loss": total, "denoise": the generator's own loss (with its conditioner's terms), "repa": mean(1 - cos),
    #  "repa_cos": mean cos}

`Aligned` bundles a generator and its REPA for a training loop that optimises one module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.conditioning.base import Context


@dataclass
class RepaConfig:
    weight: float = 0.5                     # lambda, the paper's proj_coeff
    layer: int = 0                          # 1-based backbone block whose output is aligned; 0: max(1, depth // 3)
    projector_dim: int = 512                # H (the paper's 2048 at width 1152; ours are 128 wide)
    encoder: Literal["probe", "mp3"] = "probe"  # what `encoder_weights` holds (recipes build it from there)
    encoder_weights: str = ""               # a weights file; "" with encoder "probe": the data's cached probe
    encoder_heads: int = 4                  # attention heads of an MP3 encoder (its weights do not say)

    def __post_init__(self) -> None:
        if self.weight < 0 or self.layer < 0 or self.projector_dim < 1:
            raise ValueError(f"need weight >= 0, layer >= 0, projector_dim >= 1, got {self.weight}, {self.layer}, "
                             f"{self.projector_dim}")
        if self.encoder not in ("probe", "mp3"):
            raise ValueError(f"encoder must be 'probe' or 'mp3', got {self.encoder!r}")


def alignment_loss(projected: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """mean(1 - cos) over every token of projected and target [B, N, C], and the mean cosine
    (detached, for logging). Computed in fp32."""
    cos = F.cosine_similarity(projected.float(), target.float(), dim=-1)  # [B, N]
    return (1 - cos).mean(), cos.mean().detach()


def backbone_blocks(generator: nn.Module) -> nn.ModuleList:
    """The blocks REPA may read: DiT's backbone (after any P20 patch mixer), MAR's transformer."""
    if hasattr(generator, "transformer") and hasattr(generator.transformer, "blocks"):
        return generator.transformer.blocks                 # MAR
    if isinstance(getattr(generator, "blocks", None), nn.ModuleList):
        return generator.blocks                             # DiT
    raise TypeError(f"REPA reads a DiT's or MAR's backbone blocks; {type(generator).__name__} has neither")


def resize_tokens(features: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch features [B, M, C] on a square sqrt(M) x sqrt(M) grid -> [B, h * w, C] on `grid`."""
    B, M, C = features.shape
    side = math.isqrt(M)
    if side * side != M:
        raise ValueError(f"encoder features must lie on a square grid, got {M} patches")
    if (side, side) == tuple(grid):
        return features
    x = features.transpose(1, 2).reshape(B, C, side, side)                       # [B, C, s, s]
    if side >= max(grid):
        x = F.adaptive_avg_pool2d(x, grid)                 # pooling: each token the mean of its patches
    else:
        x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
    return x.flatten(2).transpose(1, 2)                                          # [B, h * w, C]


def build_encoder(config: RepaConfig, state: dict[str, Tensor]) -> tuple[nn.Module, int]:
    """The frozen encoder `config.encoder` names, with `state` (its weights) loaded, and its channels C.
    Probe: a Shapes probe network's state dict (its conv stages are used); MP3: an `MP3Encoder`'s,
    its width, depth, patch and image size read off the weights' shapes."""
    if config.encoder == "probe":
        from latentforge.tokenizers.rae import ProbeEncoder

        width = state["body.0.weight"].shape[0]
        encoder: nn.Module = ProbeEncoder(width)
        missing, unexpected = encoder.load_probe(state)
        dim = 2 * width
    else:
        from latentforge.pretraining.mp3 import MP3Config, MP3Encoder

        dim, patch_values = state["embed.proj.weight"].shape                      # [D, 3 p^2]
        depth = len({k.split(".")[2] for k in state if k.startswith("transformer.blocks.")})
        patch = math.isqrt(patch_values // 3)
        size = math.isqrt(state["position_head.weight"].shape[0]) * patch
        encoder = MP3Encoder(MP3Config(size=size, patch=patch, dim=dim, depth=depth, heads=config.encoder_heads))
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"not the weights of a {config.encoder} encoder (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    return encoder, dim


class REPA(nn.Module):
    """Projector, block choice and frozen encoder; a forward hook on the chosen block records its
    output while `loss` runs (and only then)."""

    def __init__(self, config: RepaConfig, generator: nn.Module, encoder: nn.Module, encoder_dim: int) -> None:
        super().__init__()
        self.config = config
        blocks = backbone_blocks(generator)
        layer = config.layer or max(1, len(blocks) // 3)
        if layer > len(blocks):
            raise ValueError(f"layer {layer} but the backbone has {len(blocks)} blocks")
        if getattr(generator.config, "mask_ratio", 0.0) and hasattr(generator, "mixer"):
            raise ValueError("REPA needs every token's hidden state: set the DiT's mask_ratio to 0")
        self.layer = layer
        gcfg = generator.config
        grid = tuple(getattr(gcfg, "patch_grid", gcfg.grid))
        if len(grid) != 2:
            raise ValueError(f"REPA aligns a 2D token grid with image patches, got grid {grid}")
        self.grid: tuple[int, int] = grid  # type: ignore[assignment]
        D, H = gcfg.dim, config.projector_dim
        self.projector = nn.Sequential(nn.Linear(D, H), nn.SiLU(), nn.Linear(H, H), nn.SiLU(), nn.Linear(H, encoder_dim))
        self.encoder = encoder.requires_grad_(False).eval()
        self._hidden: Tensor | None = None
        self._recording = False
        # the hook is a closure over self, not a module attribute: the generator's state dict is unchanged
        self._handle = blocks[layer - 1].register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if self._recording:
            self._hidden = output                           # [B, N, D]; returning None keeps the output
        return None

    def detach_hook(self) -> None:
        """Stop reading the block (the generator is then exactly what it was)."""
        self._handle.remove()

    def train(self, mode: bool = True) -> REPA:
        super().train(mode)
        self.encoder.eval()  # frozen: its batch-norm statistics must not move
        return self

    @torch.no_grad()
    def targets(self, images: Tensor) -> Tensor:
        """Clean images [B, 3, S, S] in [-1, 1] -> encoder features on the token grid [B, N, C]."""
        return resize_tokens(self.encoder(images).float(), self.grid)

    def loss(self, generator: nn.Module, z: Tensor, context: Context | None, images: Tensor) -> dict[str, Tensor]:
        """The generator's loss on latents z plus lambda * mean(1 - cos); `images` are z's clean images."""
        self._recording, self._hidden = True, None
        try:
            out = generator.loss(z, context)
        finally:
            self._recording = False
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError(f"block {self.layer} did not run in the generator's loss")
        align, cos = alignment_loss(self.projector(hidden), self.targets(images))
        return {**out, "loss": out["loss"] + self.config.weight * align, "denoise": out["loss"].detach(),
                "repa": align.detach(), "repa_cos": cos}


class Aligned(nn.Module):
    """A generator and its REPA as one module for the training loop: both are optimised, both are
    checkpointed; save `.generator` alone (the projector is a training aid)."""

    def __init__(self, generator: nn.Module, repa: REPA) -> None:
        super().__init__()
        self.generator, self.repa = generator, repa
        self.config = generator.config  # what the trainer reads (tokens per sample)

    def no_weight_decay(self) -> set[str]:
        own = getattr(self.generator, "no_weight_decay", lambda: set())()
        return {f"generator.{name}" for name in own}

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        g = self.generator
        return self.repa.loss(g, batch["codes"], g.encode_condition(batch), batch["images"])
