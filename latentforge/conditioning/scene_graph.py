"""Scene-graph conditioning (paper P1, trf-sg2im): a transformer over object and relation tokens.

object token   = shape_emb + color_emb + size_emb + slot_emb[i]          (one per object slot)
relation token = subject_slot_emb[s] + predicate_emb[p] + object_slot_emb[o]
The slot embeddings tie relations to objects; bidirectional self-attention (padding masked)
lets each object token learn where it must sit relative to the others, which is the layout
reasoning P1 does with its graph transformer. Output: context [B, M + R, D] and its mask,
M object slots and R = M (M - 1) relation slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register


@dataclass
class SceneGraphConfig(ConditionerConfig):
    name: str = "scene_graph"
    dim: int = 128
    depth: int = 2
    heads: int = 4
    max_objects: int = 3
    num_shapes: int = 3
    num_colors: int = 6
    num_sizes: int = 2
    num_predicates: int = 4


@register("conditioner", "scene_graph", SceneGraphConfig)
class SceneGraphConditioner(Conditioner):
    keys = ("obj_shape", "obj_color", "obj_size", "obj_mask", "rel_subj", "rel_pred", "rel_obj", "rel_mask")

    def __init__(self, config: SceneGraphConfig) -> None:
        super().__init__(config)
        D, M = config.dim, config.max_objects
        self.shape = nn.Embedding(config.num_shapes, D)
        self.color = nn.Embedding(config.num_colors, D)
        self.size = nn.Embedding(config.num_sizes, D)
        self.slot = nn.Embedding(M, D)
        self.subject_slot = nn.Embedding(M, D)
        self.object_slot = nn.Embedding(M, D)
        self.predicate = nn.Embedding(config.num_predicates, D)
        self.kind_emb = nn.Embedding(2, D)  # 0 = object token, 1 = relation token
        self.encoder = Transformer(D, config.depth, config.heads)
        init_transformer_weights(self, config.depth)

    def forward(self, cond: dict[str, Tensor]) -> Context:
        M = self.config.max_objects
        if cond["obj_shape"].shape[1] != M:
            raise ValueError(f"scene graphs padded to {cond['obj_shape'].shape[1]} objects; "
                             f"this encoder takes max_objects={M}")
        slots = torch.arange(M, device=cond["obj_shape"].device)
        objects = (self.shape(cond["obj_shape"]) + self.color(cond["obj_color"]) + self.size(cond["obj_size"])
                   + self.slot(slots)[None] + self.kind_emb.weight[0])                        # [B, M, D]
        relations = (self.subject_slot(cond["rel_subj"]) + self.predicate(cond["rel_pred"])
                     + self.object_slot(cond["rel_obj"]) + self.kind_emb.weight[1])            # [B, R, D]
        tokens = torch.cat([objects, relations], dim=1)                                      # [B, M+R, D]
        mask = torch.cat([cond["obj_mask"], cond["rel_mask"]], dim=1).bool()
        return Context(self.encoder(tokens, key_mask=mask), mask)
