"""Class-label conditioning: one embedding token per example."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.registry import register


@dataclass
class ClassConfig(ConditionerConfig):
    name: str = "class"
    num_classes: int = 10

    @classmethod
    def tiny(cls) -> "ClassConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(dim=16, num_classes=3)


@register("conditioner", "class", ClassConfig)
class ClassConditioner(Conditioner):
    keys = ("label",)

    def __init__(self, config: ClassConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.num_classes, config.dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    def attributes(self) -> dict[str, tuple[str, int]]:
        return {"class": ("label", self.config.num_classes)}

    def forward(self, cond: dict[str, Tensor], generator: torch.Generator | None = None) -> Context:
        label = cond["label"]  # [B]
        # The check reads the labels off the device: eager only (a compiled graph would break
        # here; an out-of-range label still fails in the embedding lookup).
        if not torch.compiler.is_compiling() and (label.min() < 0 or label.max() >= self.config.num_classes):
            raise ValueError(f"labels must be in [0, {self.config.num_classes}), got {label.min()}..{label.max()}")
        tokens = self.embed(label)[:, None]  # [B, 1, D]
        return Context(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
