"""Patch-GAN discriminator with the hinge loss, for adversarial tokenizer training.

A stack of strided 4x4 convolutions (pix2pix / VQGAN's "NLayerDiscriminator" layout) gives
one real-vs-fake logit per overlapping image patch rather than one per image, so the
adversarial signal is about local texture, the detail pixel losses blur away.

Losses (hinge, as in VQGAN):
    d_loss = 1/2 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))
    g_loss = -mean D(x_hat)
Both are off (exact zeros, the discriminator is not even run) before `start_step`: an
autoencoder that cannot reconstruct yet only gives the discriminator an easy win whose
gradients destabilise the early fit.

GroupNorm replaces BatchNorm so a logit never depends on the other images of the batch.
`adversarial_terms` lets one optimiser train both players: `d_loss` sees a detached
reconstruction (it trains only the discriminator) and the generator term runs the
discriminator with detached parameters (it trains only the tokenizer), so the two
objectives can simply be added to the tokenizer's loss.

Shapes: B batch, C image channels, H x W image; logits are [B, 1, h, w] patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ADDED_LATER
from latentforge.nn.conv import group_norm


@dataclass
class DiscriminatorConfig:
    """Width, depth, and when and how strongly the adversarial term enters."""

    in_channels: int = 3
    channels: int = 64        # width of the first layer; doubled per strided layer, capped at 8x
    layers: int = 3           # strided (halving) convolutions; the patch size grows with them
    start_step: int = 0       # steps before this one train without any adversarial term
    weight: float = 0.1       # multiplies g_loss in the tokenizer's objective
    # VQGAN's adaptive weight: g_loss is further multiplied by `adaptive_weight` (the ratio of the
    # reconstruction's and the GAN term's gradient norms at the decoder's last layer), so `weight`
    # is relative to the reconstruction loss's pull instead of an absolute scale
    adaptive: bool = field(default=False, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        for key, low in (("in_channels", 1), ("channels", 1), ("layers", 1), ("start_step", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DiscriminatorConfig.{key} must be an integer >= {low}, got {value!r}")
        if not self.weight >= 0:
            raise ValueError(f"DiscriminatorConfig.weight must be >= 0, got {self.weight!r}")


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """1/2 * (mean relu(1 - real) + mean relu(1 + fake)): zero once real >= 1 and fake <= -1."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """-mean fake: the generator pushes its patches' logits up, without a margin."""
    return -logits_fake.float().mean()


class PatchDiscriminator(nn.Module):
    """[B, C, H, W] images in [-1, 1] -> [B, 1, H / 2^layers - 2, W / 2^layers - 2] logits."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        width = [config.channels * min(2**i, 8) for i in range(config.layers + 1)]
        # No norm after the first convolution (as in pix2pix): it would wipe out the input's
        # absolute colour and brightness, which the discriminator should see.
        body: list[nn.Module] = [nn.Conv2d(config.in_channels, width[0], 4, stride=2, padding=1),
                                 nn.LeakyReLU(0.2)]
        for i in range(1, config.layers):
            body += [nn.Conv2d(width[i - 1], width[i], 4, stride=2, padding=1), group_norm(width[i]),
                     nn.LeakyReLU(0.2)]
        # Two stride-1 4x4 convolutions widen each logit's patch without shrinking further.
        body += [nn.Conv2d(width[config.layers - 1], width[config.layers], 4, stride=1, padding=1),
                 group_norm(width[config.layers]), nn.LeakyReLU(0.2),
                 nn.Conv2d(width[config.layers], 1, 4, stride=1, padding=1)]
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images [B, {self.config.in_channels}, H, W], got {list(x.shape)}")
        side = min(x.shape[-2:]) // 2**self.config.layers
        if side < 3:  # the two stride-1 convolutions each take 1 pixel off the side
            raise ValueError(f"images {list(x.shape[-2:])} are too small for {self.config.layers} strided layers: "
                             f"need a side of at least {3 * 2**self.config.layers}")
        return self.body(x)  # [B, 1, h, w]

    def active(self, step: int) -> bool:
        """Whether the adversarial terms are on at training step `step`."""
        return step >= self.config.start_step

    def d_loss(self, real: Tensor, fake: Tensor, step: int) -> dict[str, Tensor]:
        """Discriminator objective; `fake` is detached so no gradient reaches the tokenizer.

        Returns:
            {"d_loss": scalar, "logits_real": mean logit, "logits_fake": mean logit}
            (all zeros before `start_step`).
        """
        if not self.active(step):
            zero = real.new_zeros(())
            return {"d_loss": zero, "logits_real": zero, "logits_fake": zero}
        logits_real, logits_fake = self(real), self(fake.detach())
        return {"d_loss": hinge_d_loss(logits_real, logits_fake),
                "logits_real": logits_real.detach().float().mean(),
                "logits_fake": logits_fake.detach().float().mean()}

    def g_loss(self, fake: Tensor, step: int) -> dict[str, Tensor]:
        """The tokenizer's adversarial term: {"g_adv": weight * hinge_g_loss} (zero before `start_step`)."""
        if not self.active(step):
            return {"g_adv": fake.new_zeros(())}
        return {"g_adv": self.config.weight * hinge_g_loss(self(fake))}


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN's balance (taming-transformers, vqperceptual.py `calculate_adaptive_weight`):
    ||d rec_loss / d last_layer|| / (||d g_loss / d last_layer|| + 1e-4), clamped to [0, max_weight]
    and detached, so the GAN term's pull on the decoder's output layer scales with the
    reconstruction's whatever the two losses' magnitudes. Keeps both graphs for the real backward.

    Without autograd (a loss evaluated under no_grad) there is nothing to measure: 0, as VQGAN.
    """
    if not (torch.is_grad_enabled() and rec_loss.requires_grad and g_loss.requires_grad):
        return rec_loss.new_zeros((), dtype=torch.float32)
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    ratio = torch.linalg.vector_norm(rec_grad.float()) / (torch.linalg.vector_norm(g_grad.float()) + 1e-4)
    return ratio.clamp(0.0, max_weight).detach()


def adversarial_terms(discriminator: PatchDiscriminator, real: Tensor, fake: Tensor, step: int,
                      rec_loss: Tensor | None = None, last_layer: Tensor | None = None) -> dict[str, Tensor]:
    """Both players' terms, safe to add to one loss: {"g_adv", "d_loss", "logits_real", "logits_fake"}
    (+ "adaptive_weight" when the config is adaptive: then `rec_loss` and `last_layer`, the
    decoder's output weight, are required).

    The generator term reads the discriminator through detached parameters, so its gradient
    reaches the tokenizer only; `d_loss` reads a detached `fake`, so its gradient reaches the
    discriminator only.
    """
    out = discriminator.d_loss(real, fake, step)
    if not discriminator.active(step):
        return {"g_adv": fake.new_zeros(()), **out}
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    frozen.update(dict(discriminator.named_buffers()))
    logits = torch.func.functional_call(discriminator, frozen, (fake,))
    if discriminator.config.adaptive:
        if rec_loss is None or last_layer is None:
            raise ValueError("an adaptive GAN weight needs the reconstruction loss and the decoder's last layer")
        g_loss = hinge_g_loss(logits)
        lam = adaptive_weight(rec_loss, g_loss, last_layer)
        return {"g_adv": discriminator.config.weight * lam * g_loss, "adaptive_weight": lam, **out}
    return {"g_adv": discriminator.config.weight * hinge_g_loss(logits), **out}
