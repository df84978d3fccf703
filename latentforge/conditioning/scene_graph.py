"""Scene-graph conditioning (paper P1, trf-sg2im): a transformer over object and relation tokens.

object token   = shape_emb + color_emb + size_emb + slot_emb[slot_i]     (one per object)
relation token = subject_slot_emb[slot_s] + predicate_emb[p] + object_slot_emb[slot_o]
The slot embeddings tie relations to objects; bidirectional self-attention (padding masked)
lets each object token learn where it must sit relative to the others. Output: context
[B, M + R, D] and its mask, M objects and R = M (M - 1) relation slots.

Graphs of any size up to `max_objects` (the data set's limit, 6 for Shapes, whatever the training
graphs held): in training each graph's objects take distinct slots drawn at random from all
`max_objects` (`random_slots`), so every slot embedding is trained and none means "the third
object"; a graph of M objects padded to M is encoded with slots 0..M-1, a draw training has seen.
Nothing else depends on M: the encoder and the layout predictor are transformers over the objects.

With `layout` on (the default, as in P1) the encoded objects are also placed: a layout predictor
(`conditioning/layout.py`) is trained on the data's object centres (`obj_x`, `obj_y`; its
cross-entropy is handed to the generator as `layout_nll`) and, when centres are not given,
samples them; the layout is painted on the latent grid as the context's spatial map.

Sampling-time rejection: where the data set knows its placement rules (`DataSet.layout_critic`:
Shapes counts overlapping boxes, objects over the border and relations the centres break), the
pipeline attaches that critic as `layout_critic`, and with `layout_rejection: K` the sampler draws K
layouts per graph and keeps the first that breaks the fewest rules — rejection sampling from the
predictor's own distribution restricted to valid layouts, where one exists among the K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.conditioning.layout import LayoutPainter, LayoutPredictor, bin_centres, centre_bins
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register


@dataclass
class SceneGraphConfig(ConditionerConfig):
    name: str = "scene_graph"
    dim: int = 128
    depth: int = 2
    heads: int = 4
    max_objects: int = 3             # object slots: the largest graph it encodes (recipes: the data's limit)
    random_slots: bool = True        # training: objects take random distinct slots (see the module doc)
    num_shapes: int = 3
    num_colors: int = 6
    num_sizes: int = 2
    num_predicates: int = 4
    layout: bool = True              # P1: predict object centres and paint them on the grid
    grid: tuple[int, ...] = (8, 8)   # latent grid the layout is painted on (set from the generator)
    layout_bins: int = 16            # centres are categorical over layout_bins x layout_bins cells
    layout_depth: int = 2
    layout_reach: float = 0.25       # cells within this distance (image fractions, per axis) of a centre
    layout_temperature: float = 1.0
    layout_candidates: int = 1       # draw this many layouts per graph, keep the most likely
    layout_rejection: int = 0        # with the data's layout critic: draw this many, keep the first that breaks fewest rules
    layout_constrained: bool = False # with the data's layout critic: place each object only where it breaks fewest rules

    @classmethod
    def tiny(cls) -> "SceneGraphConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(dim=16, depth=1, heads=2, max_objects=2, grid=(2, 2), layout_bins=4, layout_depth=1)


@register("conditioner", "scene_graph", SceneGraphConfig)
class SceneGraphConditioner(Conditioner):
    keys = ("obj_shape", "obj_color", "obj_size", "obj_mask", "rel_subj", "rel_pred", "rel_obj", "rel_mask")
    optional_keys = ("obj_x", "obj_y")  # object centres (nan where unknown)

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
        # The attributes start at unit scale, not GPT-2's 0.02: at 0.02 the generators learnt where
        # objects go long before what they are (MAR never learnt colour, the hierarchical model only
        # after ~600 steps); at unit scale both read colour within 250 steps (BENCHMARKS.md, issue 14).
        for table in (self.shape, self.color, self.size):
            nn.init.normal_(table.weight, std=1.0)
        self.layout = self.painter = None
        self.layout_critic = None  # set at sampling time from the data set (not saved); see the module doc
        if config.layout:
            self.layout = LayoutPredictor(D, config.layout_bins, config.layout_depth, config.heads)
            self.pair_row = nn.Linear(D, D)  # the object being placed
            self.pair_col = nn.Linear(D, D)  # an object placed before it
            self.predicate_as_subject = nn.Embedding(config.num_predicates, D)
            self.predicate_as_object = nn.Embedding(config.num_predicates, D)
            self.painter = LayoutPainter(D, tuple(config.grid), config.layout_reach)

    def attributes(self) -> dict[str, tuple[str, int]]:
        c = self.config
        return {"colour": ("obj_color", c.num_colors), "shape": ("obj_shape", c.num_shapes),
                "size": ("obj_size", c.num_sizes)}

    def forward(self, cond: dict[str, Tensor], generator: torch.Generator | None = None) -> Context:
        encoded, mask = self._encode(cond)
        if self.layout is None:
            return Context(encoded, mask)
        objects, obj_mask = encoded[:, : cond["obj_shape"].shape[1]], cond["obj_mask"].bool()
        centres, losses = self._centres(objects, cond, generator)
        return Context(encoded, mask, self.painter(objects, obj_mask, centres), losses)

    @torch.no_grad()
    def sample_centres(self, cond: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """The layout alone: object centres [B, M, 2] in image fractions (given ones kept)."""
        if self.layout is None:
            raise ValueError("this scene-graph encoder has no layout predictor (layout: false)")
        encoded, _ = self._encode(cond)
        training, self.training = self.training, False
        try:
            return self._centres(encoded[:, : cond["obj_shape"].shape[1]], cond, generator)[0]
        finally:
            self.training = training

    def _encode(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        B, M = cond["obj_shape"].shape
        capacity = self.config.max_objects
        if M > capacity:
            raise ValueError(f"scene graphs padded to {M} objects; this encoder has {capacity} object slots "
                             f"(max_objects={capacity})")
        device = cond["obj_shape"].device
        if self.training and self.config.random_slots:
            slots = torch.rand(B, capacity, device=device).argsort(dim=1)[:, :M]              # [B, M] distinct
        else:
            slots = torch.arange(M, device=device).expand(B, M)
        objects = (self.shape(cond["obj_shape"]) + self.color(cond["obj_color"]) + self.size(cond["obj_size"])
                   + self.slot(slots) + self.kind_emb.weight[0])                              # [B, M, D]
        relations = (self.subject_slot(slots.gather(1, cond["rel_subj"])) + self.predicate(cond["rel_pred"])
                     + self.object_slot(slots.gather(1, cond["rel_obj"])) + self.kind_emb.weight[1])  # [B, R, D]
        tokens = torch.cat([objects, relations], dim=1)                                      # [B, M+R, D]
        mask = torch.cat([cond["obj_mask"], cond["rel_mask"]], dim=1).bool()
        return self.encoder(tokens, key_mask=mask), mask

    def _centres(self, objects: Tensor, cond: dict[str, Tensor],
                 generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Training: the true centres and the layout NLL; otherwise sampled centres (given ones
        kept). Either way snapped to bin centres, so the painter sees the same grid in both."""
        obj_mask = cond["obj_mask"].bool()
        known = self._known_centres(cond, obj_mask)
        pair = self._pair_features(objects, cond)
        losses = {}
        if self.training:
            if not torch.isfinite(known[obj_mask]).all():
                raise ValueError("training the layout predictor needs every object's centre (obj_x, obj_y)")
            centres = torch.nan_to_num(known, nan=0.5)
            losses["layout_nll"] = self.layout.nll(objects, obj_mask, centres, pair)
        elif self.layout_critic is not None and self.config.layout_rejection > 1:
            centres = self._rejection_sample(objects, obj_mask, pair, known, cond, generator)
        else:
            K = self.config.layout_candidates
            penalty = None
            if self.layout_critic is not None and self.config.layout_constrained:
                penalty = self._cell_penalty({k: v.repeat_interleave(K, 0) for k, v in cond.items()})
            centres = self.layout.sample(objects, obj_mask, pair, known, generator=generator,
                                         temperature=self.config.layout_temperature, candidates=K,
                                         cell_penalty=penalty)
        return self._snap(centres), losses

    def _snap(self, centres: Tensor) -> Tensor:
        """Centres [..., 2] moved to their layout bin's centre: what the painter sees."""
        return bin_centres(centre_bins(centres, self.config.layout_bins), self.config.layout_bins)

    def _cell_penalty(self, cond: dict[str, Tensor]):
        """(k, xy [B, M, 2]) -> [B, cells]: the critic's count for the objects <= k with object k
        at each cell of the layout grid (padded objects and later ones left out)."""
        bins = self.config.layout_bins
        cells = bin_centres(torch.arange(bins * bins, device=cond["obj_mask"].device), bins)  # [C, 2]
        C = len(cells)
        rows = {k: v.repeat_interleave(C, 0) for k, v in cond.items()}  # graph b, cell c at b * C + c

        def penalty(k: int, xy: Tensor) -> Tensor:
            B, M, _ = xy.shape
            trial = xy[:, None].repeat(1, C, 1, 1)                                        # [B, C, M, 2]
            trial[:, :, k] = cells
            placed = torch.arange(M, device=xy.device) <= k                                # [M]
            part = dict(rows, obj_mask=rows["obj_mask"].bool() & placed,
                        rel_mask=rows["rel_mask"].bool() & placed[rows["rel_subj"]] & placed[rows["rel_obj"]])
            return self.layout_critic(part, trial.view(B * C, M, 2)).view(B, C)

        return penalty

    def _rejection_sample(self, objects: Tensor, obj_mask: Tensor, pair: Tensor, known: Tensor,
                          cond: dict[str, Tensor], generator: torch.Generator | None) -> Tensor:
        """K layouts per graph [B * K, M, 2]; per graph the first with the fewest broken rules."""
        K, (B, M) = self.config.layout_rejection, obj_mask.shape
        many = [t.repeat_interleave(K, 0) for t in (objects, obj_mask, pair, known)]
        rows = {k: v.repeat_interleave(K, 0) for k, v in cond.items()}
        penalty = self._cell_penalty(rows) if self.config.layout_constrained else None
        xy = self.layout.sample(*many, generator=generator, temperature=self.config.layout_temperature,
                                cell_penalty=penalty)
        broken = self.layout_critic(rows, self._snap(xy))
        best = broken.view(B, K).argmin(1)  # the first of the fewest: an unbiased pick among valid draws
        return xy.view(B, K, M, 2)[torch.arange(B, device=xy.device), best]

    def _pair_features(self, objects: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """[B, M, M, D]: row k, column j = both objects plus the predicates relating them.

        A relation (s, p, o) adds predicate_as_subject[p] at (s, o) and predicate_as_object[p]
        at (o, s), so each ordered pair reads its relations from its own side.
        """
        M = objects.shape[1]
        subj = F.one_hot(cond["rel_subj"], M).to(objects.dtype)                            # [B, R, M]
        obj = F.one_hot(cond["rel_obj"], M).to(objects.dtype)
        real = cond["rel_mask"].to(objects.dtype)[..., None]
        as_subject = self.predicate_as_subject(cond["rel_pred"]) * real                      # [B, R, D]
        as_object = self.predicate_as_object(cond["rel_pred"]) * real
        relations = (torch.einsum("brk,brj,brd->bkjd", subj, obj, as_subject)
                     + torch.einsum("brk,brj,brd->bkjd", obj, subj, as_object))
        return self.pair_row(objects)[:, :, None] + self.pair_col(objects)[:, None] + relations

    def _known_centres(self, cond: dict[str, Tensor], obj_mask: Tensor) -> Tensor:
        """Given object centres [B, M, 2]: nan where unknown (no obj_x/obj_y, or nan in them)."""
        if "obj_x" not in cond or "obj_y" not in cond:
            return torch.full((*obj_mask.shape, 2), float("nan"), device=obj_mask.device)
        return torch.stack([cond["obj_x"], cond["obj_y"]], dim=-1).float()
