"""Scene layouts (paper P1): where each object of a graph goes, and that layout painted on the grid.

P1 turns a scene graph into an object layout before any pixel is generated; the image model then
only has to draw each object where the layout puts it. Two modules:

`LayoutPredictor`: places the objects one after another. Object k's centre is a categorical over
a bins x bins grid of the image, from the graph encoding of object k and the already placed objects:
    sequence  = [obj_0, at_0, obj_1, at_1, ...]     obj_k = encoded object, at_k = obj_k + where(k)
    logits(k, c) = unary(h[obj_k], c) + sum_{j<k} pairwise(pair_kj, c - centre_j)
The unary potential reads the causal transformer's state of object k and the candidate cell c:
where such an object may go at all (its size keeps it off the border). The pairwise potential
reads the offset of c from each placed object j and the pair's relations (`pair_kj`: its
predicates in both directions plus both objects' encodings). Relations such as "left of" and the
room two objects need are functions of that offset, so the potentials learn them within a few
hundred steps, where a linear head over the cells alone stays at chance on relations.
Trained by teacher forcing on the data's true centres (cross-entropy); sampled object by object,
keeping any centre the user fixed.

`LayoutPainter`: the layout as a map on the latent grid [B, N, D]. Every cell within `reach` (image
fractions, per axis) of an object centre receives that object's features plus an embedding of the
cell's offset from the centre, so a generator reading the map knows which object covers each cell
and which part of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.transformer import MLP, Transformer


def centre_bins(xy: Tensor, bins: int) -> Tensor:
    """Centres [..., 2] in image fractions -> flat bin index y_bin * bins + x_bin [...] (int64)."""
    cell = (xy.clamp(0, 1) * bins).long().clamp(max=bins - 1)
    return cell[..., 1] * bins + cell[..., 0]


def bin_centres(index: Tensor, bins: int) -> Tensor:
    """Inverse of `centre_bins` up to quantisation: flat bin [...] -> bin centre [..., 2]."""
    return torch.stack([index % bins, index // bins], dim=-1).float().add(0.5).div(bins)


class Potential(nn.Module):
    """phi(feature, coordinate) -> scalar: an MLP of a projected feature plus a coordinate feature.

    Coordinates come from a fixed table (cell centres, or every possible bin offset), embedded once
    per call, so the [B, P, cells, hidden] activation costs adds and small matmuls.
    """

    def __init__(self, dim: int, coords: Tensor, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("coords", coords, persistent=False)  # [K, 2]
        self.feature_proj = nn.Linear(dim, hidden)
        self.coord_mlp = nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.out = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.out[-1].weight)  # starts neutral: the layout begins uniform
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, feature: Tensor, index: Tensor | None = None) -> Tensor:
        """feature [B, P, D]; index [B, P, C] into the table (None: every row, C = K) -> [B, P, C]."""
        table = self.coord_mlp(self.coords.to(feature.dtype))                 # [K, H]
        coord = table[None, None] if index is None else table[index]          # [B, P, C, H]
        return self.out(self.feature_proj(feature)[:, :, None] + coord)[..., 0]


class LayoutPredictor(nn.Module):
    def __init__(self, dim: int, bins: int, depth: int, heads: int) -> None:
        super().__init__()
        self.bins = bins
        cells = torch.arange(bins * bins)
        self.register_buffer("cell_xy", torch.stack([cells % bins, cells // bins], -1), persistent=False)
        span = torch.arange(-(bins - 1), bins).float() / bins
        dy, dx = torch.meshgrid(span, span, indexing="ij")
        self.unary = Potential(dim, (self.cell_xy.float() + 0.5) / bins)
        self.pairwise = Potential(dim, torch.stack([dx, dy], -1).reshape(-1, 2))
        self.x_emb = nn.Embedding(bins, dim)
        self.y_emb = nn.Embedding(bins, dim)
        self.role = nn.Embedding(2, dim)  # 0 = "place this object", 1 = "it was placed here"
        self.transformer = Transformer(dim, depth, heads)

    def logits(self, objects: Tensor, mask: Tensor, xy: Tensor, pair: Tensor) -> Tensor:
        """objects [B, M, D], mask [B, M], centres xy [B, M, 2] (teacher forcing) and pair features
        [B, M, M, D] -> [B, M, bins^2]; row k depends on the centres of objects j < k only."""
        B, M, _ = objects.shape
        cell = self._cells(xy)
        h = self._states(objects, mask, cell)
        rows, cols = torch.tril_indices(M, M, offset=-1, device=mask.device)  # pairs j < k
        phi = self._pairwise(pair, mask, cell, rows, cols)                    # [B, P, C]
        return self.unary(h[:, 0::2]) + phi.new_zeros(B, M, phi.shape[-1]).index_add(1, rows, phi)

    def row_logits(self, k: int, objects: Tensor, mask: Tensor, xy: Tensor, pair: Tensor) -> Tensor:
        """Row k of `logits` alone [B, bins^2], from objects <= k: what sampling object k needs
        (the other rows' potentials, most of the cost, are not computed)."""
        objects, mask, cell = objects[:, : k + 1], mask[:, : k + 1], self._cells(xy[:, : k + 1])
        h = self._states(objects, mask, cell)
        cols = torch.arange(k, device=mask.device)
        phi = self._pairwise(pair, mask, cell, torch.full_like(cols, k), cols)  # [B, k, C]
        return self.unary(h[:, 2 * k: 2 * k + 1])[:, 0] + phi.sum(1)

    def _cells(self, xy: Tensor) -> Tensor:
        """Centres [B, M, 2] -> their (x, y) bins [B, M, 2]."""
        return (xy.clamp(0, 1) * self.bins).long().clamp(max=self.bins - 1)

    def _states(self, objects: Tensor, mask: Tensor, cell: Tensor) -> Tensor:
        """The causal transformer over [obj_0, at_0, obj_1, at_1, ...] -> states [B, 2M, D]."""
        B, M, D = objects.shape
        placed = objects + self.x_emb(cell[..., 0]) + self.y_emb(cell[..., 1]) + self.role.weight[1]
        query = objects + self.role.weight[0]
        seq = torch.stack([query, placed], dim=2).reshape(B, 2 * M, D)
        return self.transformer(seq, causal=True, key_mask=mask.repeat_interleave(2, dim=1))

    def _pairwise(self, pair: Tensor, mask: Tensor, cell: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """phi [B, P, bins^2] for the pairs (rows[p], cols[p]), each with cols[p] < rows[p] placed
        already; pairs with a padded object give 0."""
        n = 2 * self.bins - 1
        delta = self.cell_xy[None, None] - cell[:, cols, None] + (self.bins - 1)      # [B, P, C, 2]
        phi = self.pairwise(pair[:, rows, cols], delta[..., 1] * n + delta[..., 0])   # [B, P, C]
        return phi * (mask[:, rows] & mask[:, cols]).to(phi.dtype)[..., None]

    def nll(self, objects: Tensor, mask: Tensor, xy: Tensor, pair: Tensor) -> Tensor:
        """Mean cross-entropy (nats) of the true centre bins over real objects."""
        logits = self.logits(objects, mask, xy, pair).float()
        target = centre_bins(xy, self.bins)
        loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [B, M]
        return (loss * mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def log_prob(self, objects: Tensor, mask: Tensor, xy: Tensor, pair: Tensor) -> Tensor:
        """Log-probability [B] of whole layouts xy [B, M, 2] (summed over real objects)."""
        logp = torch.log_softmax(self.logits(objects, mask, xy, pair).float(), dim=-1)
        chosen = logp.gather(-1, centre_bins(xy, self.bins)[..., None])[..., 0]  # [B, M]
        return (chosen * mask).sum(1)

    @torch.no_grad()
    def sample(self, objects: Tensor, mask: Tensor, pair: Tensor, known: Tensor | None = None, *,
               generator: torch.Generator | None = None, temperature: float = 1.0,
               candidates: int = 1, cell_penalty: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """Place every object [B, M, 2]; rows of `known` [B, M, 2] that are finite are kept as given.

        With candidates > 1, that many layouts are drawn per row and the one the model finds most
        likely is kept (reranking by the model's own likelihood, no outside knowledge).
        `cell_penalty(k, xy)` -> [B, bins^2]: how many rules placing object k in each cell breaks,
        given the centres xy [B, M, 2] of objects < k (B * candidates rows with candidates); object k
        is then drawn among the cells of least penalty only (the model's distribution restricted to them).
        Placed centres are bin centres; padded objects get (0.5, 0.5) and are masked downstream.
        """
        if candidates > 1:
            many = [t.repeat_interleave(candidates, 0) for t in (objects, mask, pair)]
            rep_known = None if known is None else known.repeat_interleave(candidates, 0)
            xy = self.sample(*many, rep_known, generator=generator, temperature=temperature, cell_penalty=cell_penalty)
            score = self.log_prob(*many[:2], xy, many[2]).view(-1, candidates)  # [B, K]
            best = score.argmax(1) + torch.arange(len(score), device=score.device) * candidates
            return xy[best]
        B, M, _ = objects.shape
        xy = torch.full((B, M, 2), 0.5, device=objects.device)
        keep = torch.zeros(B, M, dtype=torch.bool, device=objects.device)
        if known is not None:
            keep = torch.isfinite(known).all(-1)
            xy = torch.where(keep[..., None], known.float(), xy)
        for k in range(M):
            logits = self.row_logits(k, objects, mask, xy, pair).float()
            if cell_penalty is not None:
                penalty = cell_penalty(k, xy)                                           # [B, cells]
                logits = logits.masked_fill(penalty > penalty.min(1, keepdim=True).values, float("-inf"))
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                index = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                index = logits.argmax(-1)
            xy[:, k] = torch.where(keep[:, k, None], xy[:, k], bin_centres(index, self.bins))
        return xy


class LayoutPainter(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int], reach: float) -> None:
        super().__init__()
        if len(grid) != 2:
            raise ValueError(f"a layout is painted on a 2D latent grid, got grid {tuple(grid)}")
        H, W = grid
        self.reach = reach
        rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        centres = torch.stack([(cols + 0.5) / W, (rows + 0.5) / H], dim=-1).reshape(H * W, 2)
        self.register_buffer("cells", centres, persistent=False)  # [N, 2] (x, y) image fractions
        self.object_proj = nn.Linear(dim, dim)
        self.offset_mlp = nn.Sequential(nn.Linear(2, dim), nn.GELU(), nn.Linear(dim, dim))
        self.out = MLP(dim, 2 * dim)

    def forward(self, objects: Tensor, mask: Tensor, xy: Tensor) -> Tensor:
        """objects [B, M, D], mask [B, M], centres xy [B, M, 2] -> layout map [B, N, D]."""
        offset = (self.cells[None, None] - xy[:, :, None].to(self.cells.dtype)) / self.reach  # [B, M, N, 2]
        inside = (offset.abs() <= 1).all(-1) & mask[:, :, None]                             # [B, M, N]
        features = self.object_proj(objects)[:, :, None] + self.offset_mlp(offset.to(objects.dtype))
        painted = (features * inside[..., None].to(features.dtype)).sum(1)                  # [B, N, D]
        return self.out(painted)
