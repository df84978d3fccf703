"""P14 VTrans: variational-information-bottleneck masks that prune a transformer's structure down to
a parameter budget, and the physical pruning that turns the masked stack into a smaller one.

Legend: B batch, T tokens, D model width, K kept embedding (residual) dims, H heads, Dh head size,
U FFN hidden units, L blocks, Dc context width.

VIB gates (VIBNet, Dai et al. 2018). Every structural unit u has a gate g_u = mu_u + sigma_u * eps,
eps ~ N(0, 1) drawn per example while training, and g_u = mu_u at eval. The penalty
sum_u log(1 + mu_u^2 / sigma_u^2) bounds the information the unit passes on: a unit whose
alpha_u = mu_u^2 / sigma_u^2 is small passes mostly noise, and it is the first to be pruned.
The units (VTrans):
  - embedding (residual) dims: one gate [D] for the whole stack; it scales the stack's input and
    every branch output, so a pruned dim is zero all along the residual stream;
  - attention heads: self- and cross-attention, [H] per block, on each head's output before proj;
  - FFN hidden units: [U] per block, after the GELU;
  - layers: [L], one per block on all its residual branches (a pruned layer is the identity).
The gates act through forward hooks on the library's `Transformer`, whose code stays as it is.
A pruned residual dim must not steer the kept ones. So while any is pruned, every LayerNorm takes
its mean and variance over the kept dims only, and it writes zeros at the pruned ones. Slicing
those dims out then computes exactly the same thing.

Physical pruning (`slim_transformer`) folds the eval gates into the weights:
  - head gates go into the columns of the attention's proj, FFN gates into the MLP proj's columns;
  - layer x embedding gates go into each branch's output rows, the embedding gate on the input
    into a fixed input scale.
It then slices the weights down to the kept units and drops the pruned layers. The result, a
`SlimTransformer`, computes what the masked stack computes (KV-cached sampling included), with
fewer parameters and FLOPs.

Baselines on the same machinery: `magnitude_scores` (RMS weight of each head / FFN unit) and
`random_scores`, pruned by `VIBMasks.prune_to_budget` exactly like the VIB scores (log alpha).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.nn.attention import Attention
from latentforge.nn.transformer import MLP, Transformer, TransformerBlock


def vib_penalty(mu: Tensor, log_sigma2: Tensor) -> Tensor:
    """VIBNet's KL bound, sum_u log(1 + mu_u^2 / sigma_u^2), summed over every element."""
    return torch.log1p(mu.pow(2) * torch.exp(-log_sigma2)).sum()


class VIBGate(nn.Module):
    """Gates of n units: mu + sigma * eps while training (eps per example), mu at eval; pruned units
    (the `alive` buffer False) are 0 either way."""

    def __init__(self, n: int, log_sigma2_init: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.ones(n))
        self.log_sigma2 = nn.Parameter(torch.full((n,), float(log_sigma2_init)))
        self.register_buffer("alive", torch.ones(n, dtype=torch.bool))

    def forward(self, batch: int) -> Tensor:
        """[B, 1, n] while training (one draw per example, shared over tokens), [n] at eval."""
        if not self.training:
            return self.mu * self.alive
        eps = torch.randn(batch, 1, self.mu.numel(), device=self.mu.device, dtype=self.mu.dtype)
        return (self.mu + torch.exp(0.5 * self.log_sigma2) * eps) * self.alive

    def log_alpha(self) -> Tensor:
        """log(mu^2 / sigma^2) [n]: the unit's signal-to-noise; low means prunable."""
        return torch.log(self.mu.detach().pow(2)) - self.log_sigma2.detach()

    def penalty(self) -> Tensor:
        """The KL bound over the units still alive."""
        return vib_penalty(self.mu[self.alive], self.log_sigma2[self.alive])


def masked_layer_norm(x: Tensor, norm: nn.LayerNorm, keep: Tensor) -> Tensor:
    """LayerNorm of x [..., D] over the dims where keep [D] is True; zeros at the others."""
    keep = keep.to(x.dtype)
    n = keep.sum()
    mean = (x * keep).sum(-1, keepdim=True) / n
    var = ((x - mean).pow(2) * keep).sum(-1, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + norm.eps) * norm.weight * keep + norm.bias * keep


@dataclass
class VIBConfig:
    """Which structures get gates, and the gates' start. A gate starts at mu = 1 and
    log sigma^2 = log_sigma2_init (log alpha = -log_sigma2_init): nearly the unmasked model."""

    embedding: bool = True    # residual dims (the width of the whole stack)
    heads: bool = True        # self- and cross-attention heads
    ffn: bool = True          # FFN hidden units
    layers: bool = True       # whole blocks
    log_sigma2_init: float = -6.0


class VIBMasks(nn.Module):
    """VIB gates over a `Transformer`'s units, applied by hooks (`attach`), and the bookkeeping of
    what is pruned: the parameter count of the stack that would remain, and budgeted pruning.

    Gate names: "emb" [D], "layers" [L], and per block l: f"heads{l}" [H], f"cross{l}" [H] (blocks
    with cross-attention), f"ffn{l}" [U]. A structure the config leaves ungated is never pruned.
    """

    def __init__(self, stack: Transformer, config: VIBConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VIBConfig()
        if stack.position != "none" or any(b.attn.hashed is not None for b in stack.blocks):
            raise ValueError("VIB pruning supports softmax attention with positions added to the tokens "
                             f"(position 'none'), got position {stack.position!r}")
        if any(b.mlp.nested for b in stack.blocks):
            raise ValueError("VIB pruning of MatFormer (nested) MLPs is not supported")
        first = stack.blocks[0]
        self.dim, self.depth = stack.norm.normalized_shape[0], len(stack.blocks)
        self.heads, self.head_dim = first.attn.heads, first.attn.head_dim
        self.units = first.mlp.hidden
        self.context_dim = first.cross.kv.in_features if first.cross is not None else None
        init = config.log_sigma2_init
        gates, self.block_of = {}, {}  # gate name -> its block (per-block gates)
        if config.embedding:
            gates["emb"] = VIBGate(self.dim, init)
        if config.layers:
            gates["layers"] = VIBGate(self.depth, init)
        for l in range(self.depth):
            if config.heads:
                gates[f"heads{l}"] = VIBGate(self.heads, init)
                if self.context_dim is not None:
                    gates[f"cross{l}"] = VIBGate(self.heads, init)
            if config.ffn:
                gates[f"ffn{l}"] = VIBGate(self.units, init)
            self.block_of.update({f"heads{l}": l, f"cross{l}": l, f"ffn{l}": l})
        self.gates = nn.ModuleDict(gates)
        self._now: dict[str, Tensor] = {}  # this forward pass's gate values
        self._handles: list = []

    # ---------------------------------------------------------------- gates in the forward pass

    def attach(self, stack: Transformer) -> VIBMasks:
        """Hook the gates into `stack` (the one these masks were built for); `detach` removes them."""
        self.detach()
        hook = self._handles.append
        hook(stack.register_forward_pre_hook(self._draw_gates))
        for norm in self._norms(stack):
            hook(norm.register_forward_hook(self._norm_hook))
        for l, block in enumerate(stack.blocks):
            hook(block.attn.proj.register_forward_pre_hook(self._scale_input(f"heads{l}", self.head_dim)))
            hook(block.attn.register_forward_hook(self._scale_branch(l)))
            if block.cross is not None:
                hook(block.cross.proj.register_forward_pre_hook(self._scale_input(f"cross{l}", self.head_dim)))
                hook(block.cross.register_forward_hook(self._scale_branch(l)))
            hook(block.mlp.proj.register_forward_pre_hook(self._scale_input(f"ffn{l}", 1)))
            hook(block.mlp.register_forward_hook(self._scale_branch(l)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @staticmethod
    def _norms(stack: Transformer) -> Iterator[nn.LayerNorm]:
        for block in stack.blocks:
            yield from (n for n in (block.norm1, block.cross_norm, block.norm2) if n is not None)
        yield stack.norm

    def _draw_gates(self, stack: nn.Module, args: tuple) -> tuple:
        x = args[0]  # [B, T, D]
        # one draw per forward pass: every hook of this pass sees the same noise
        self._now = {name: gate(x.shape[0]) for name, gate in self.gates.items()}
        if "emb" in self._now:
            x = x * self._now["emb"]
        return (x, *args[1:])

    def _norm_hook(self, norm: nn.LayerNorm, args: tuple, out: Tensor) -> Tensor:
        if "emb" not in self.gates or bool(self.gates["emb"].alive.all()):
            return out
        return masked_layer_norm(args[0], norm, self.gates["emb"].alive)

    def _scale_input(self, name: str, repeat: int):
        """Pre-hook of a proj: its input [B, T, n * repeat] times the gates of its n units."""
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if name not in self._now:
                return None
            return (args[0] * self._now[name].repeat_interleave(repeat, dim=-1),)
        return hook

    def _scale_branch(self, l: int):
        """Forward hook of block l's branch: its output [B, T, D] times the layer and embedding gates."""
        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            if "layers" in self._now:
                out = out * self._now["layers"][..., l : l + 1]
            if "emb" in self._now:
                out = out * self._now["emb"]
            return out
        return hook

    def penalty(self) -> Tensor:
        """The KL bound over every live unit, divided by the number of gated units (so a penalty
        weight means the same for any model size)."""
        total = sum(gate.penalty() for gate in self.gates.values())
        return total / sum(gate.mu.numel() for gate in self.gates.values())

    def log_alphas(self) -> dict[str, Tensor]:
        """Every gate's log alpha: the VIB score to prune by (lowest first)."""
        return {name: gate.log_alpha() for name, gate in self.gates.items()}

    # ---------------------------------------------------------------- what is kept, and its size

    def kept(self, name: str, n: int) -> Tensor:
        """Indices [k] of the live units of a gate (all n when the structure has no gate)."""
        if name not in self.gates:
            return torch.arange(n)
        return self.gates[name].alive.nonzero().flatten().cpu()

    def layer_alive(self, l: int) -> bool:
        return "layers" not in self.gates or bool(self.gates["layers"].alive[l])

    def _shape(self) -> tuple[int, list[tuple[int, int, int]]]:
        """Kept width K and, per live block, (self heads, cross heads, FFN units)."""
        width = len(self.kept("emb", self.dim))
        blocks = [(len(self.kept(f"heads{l}", self.heads)),
                   len(self.kept(f"cross{l}", self.heads)) if self.context_dim is not None else 0,
                   len(self.kept(f"ffn{l}", self.units)))
                  for l in range(self.depth) if self.layer_alive(l)]
        return width, blocks

    def param_count(self) -> int:
        """Parameters of the stack that pruning now would leave (what `slim_transformer` builds)."""
        (K, blocks), Dh, Dc = self._shape(), self.head_dim, self.context_dim
        total = 2 * K  # final LayerNorm
        for h, c, u in blocks:
            total += 2 * 2 * K                                  # norm1, norm2
            total += 3 * h * Dh * (K + 1) + (h * Dh + 1) * K    # qkv, proj
            if Dc is not None:
                total += 2 * K                                  # cross_norm
                total += c * Dh * (K + 1) + 2 * c * Dh * (Dc + 1) + (c * Dh + 1) * K  # q, kv, proj
            total += u * (K + 1) + (u + 1) * K                  # fc, proj
        return total

    def _removable(self, name: str, index: int) -> bool:
        """A unit may go if its group keeps one, and (heads, FFN units) if its layer is still live."""
        gate = self.gates[name]
        if not gate.alive[index] or int(gate.alive.sum()) <= 1:
            return False
        return name not in self.block_of or self.layer_alive(self.block_of[name])

    @torch.no_grad()
    def prune_to_budget(self, scores: dict[str, Tensor], budget: int, *, threshold: float = -math.inf,
                        floor: int | None = None) -> int:
        """Prune units in ascending score order while the stack has more than `budget` parameters
        or the next unit scores below `threshold`, never going below `floor` (default: the budget).

        A unit whose removal would cross the floor is skipped (a whole layer can be a quarter of
        the stack), and if the budget is still not met, the cheapest removable units go, lowest
        score first among equals: the count ends within one unit below the budget. Groups keep
        one unit each. `scores` are keyed like the gates; a gate missing from them is not pruned.
        Returns the number of units pruned.
        """
        floor = budget if floor is None else floor
        candidates = sorted((float(s), name, i) for name, v in scores.items() if name in self.gates
                            for i, s in enumerate(v.tolist()))
        params, pruned = self.param_count(), 0
        for score, name, i in candidates:
            if params <= floor or (params <= budget and score >= threshold):
                break
            if not self._removable(name, i):
                continue
            self.gates[name].alive[i] = False
            after = self.param_count()
            if after < floor:
                self.gates[name].alive[i] = True  # too big a unit for what is left to prune
                continue
            params, pruned = after, pruned + 1
        while params > budget:  # every unit left in the score order was too big: take the cheapest
            best = None
            for _, name, i in candidates:
                if self._removable(name, i):
                    self.gates[name].alive[i] = False
                    after = self.param_count()
                    self.gates[name].alive[i] = True
                    if best is None or after > best[0]:
                        best = (after, name, i)
            if best is None:
                raise ValueError(f"cannot prune to {budget} parameters: {params} left with one unit per group")
            params, (_, name, i) = best[0], best
            self.gates[name].alive[i] = False
            pruned += 1
        return pruned


# -------------------------------------------------------------------- baseline scores


@torch.no_grad()
def magnitude_scores(stack: Transformer) -> dict[str, Tensor]:
    """Structured magnitude scores: each head's and FFN unit's RMS weight (its rows of qkv / q and
    kv, or of fc, and its columns of proj), keyed like `VIBMasks` gates. RMS, not the norm, so
    heads and units with different weight counts compare."""
    scores = {}
    for l, block in enumerate(stack.blocks):
        attn, H, Dh = block.attn, block.attn.heads, block.attn.head_dim
        qkv = attn.qkv.weight.view(3, H, Dh, -1).pow(2).sum((0, 2, 3))        # [H] sums of squares
        proj = attn.proj.weight.view(-1, H, Dh).pow(2).sum((0, 2))
        count = 3 * attn.qkv.weight[:Dh].numel() + attn.proj.weight[:, :Dh].numel()
        scores[f"heads{l}"] = ((qkv + proj) / count).sqrt()
        if block.cross is not None:
            c = block.cross
            q = c.q.weight.view(H, Dh, -1).pow(2).sum((1, 2))
            kv = c.kv.weight.view(2, H, Dh, -1).pow(2).sum((0, 2, 3))
            proj = c.proj.weight.view(-1, H, Dh).pow(2).sum((0, 2))
            count = c.q.weight[:Dh].numel() + 2 * c.kv.weight[:Dh].numel() + c.proj.weight[:, :Dh].numel()
            scores[f"cross{l}"] = ((q + kv + proj) / count).sqrt()
        fc, proj = block.mlp.fc.weight, block.mlp.proj.weight                 # [U, D], [D, U]
        scores[f"ffn{l}"] = ((fc.pow(2).sum(1) + proj.pow(2).sum(0)) / (fc.shape[1] + proj.shape[0])).sqrt()
    return scores


def within_group_ranks(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each score replaced by its fractional rank within its gate, (rank + 0.5) / n: pruned by
    these, every group loses about the same fraction of its units (per-layer uniform pruning)."""
    return {name: (v.argsort().argsort().float() + 0.5) / v.numel() for name, v in scores.items()}


def random_scores(masks: VIBMasks, generator: torch.Generator) -> dict[str, Tensor]:
    """Uniform random scores for the head and FFN gates: random structured pruning."""
    return {name: torch.rand(gate.mu.numel(), generator=generator)
            for name, gate in masks.gates.items() if name.startswith(("heads", "cross", "ffn"))}


# -------------------------------------------------------------------- physical pruning


class SlimTransformer(Transformer):
    """A physically pruned `Transformer`: blocks of their own head counts and FFN widths at the kept
    residual width K, the pruned layers gone. Same interface, x [B, T, D] -> [B, T, D]: the input's
    kept dims are read (times the folded embedding gate), the output's pruned dims are zeros.
    `new_caches` and `context_kv` are the Transformer's (each block brings its own head count)."""

    def __init__(self, dim: int, keep: Tensor, blocks: list[TransformerBlock], norm: nn.LayerNorm) -> None:
        nn.Module.__init__(self)  # the blocks are given, not built
        self.dim = dim
        self.position, self.alibi_slopes = "none", None
        self.register_buffer("keep", keep.clone())                               # [K] long
        self.register_buffer("in_scale", torch.ones(len(keep)))                  # [K]
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm

    def forward(self, x: Tensor, *, causal: bool = False, key_mask: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                context_kv: list[tuple[Tensor, Tensor]] | None = None,
                caches: list | None = None, attn_mask: Tensor | None = None) -> Tensor:
        h = x[..., self.keep] * self.in_scale                                    # [B, T, K]
        for i, block in enumerate(self.blocks):
            h = block(h, causal=causal, key_mask=key_mask, context=context, context_mask=context_mask,
                      context_kv=None if context_kv is None else context_kv[i],
                      cache=None if caches is None else caches[i], attn_mask=attn_mask)
        out = x.new_zeros(*x.shape[:-1], self.dim)
        out[..., self.keep] = self.norm(h)                                       # [B, T, D]
        return out


def _sliced_norm(norm: nn.LayerNorm, keep: Tensor) -> nn.LayerNorm:
    out = nn.LayerNorm(len(keep), eps=norm.eps)
    out.weight.data.copy_(norm.weight.data[keep])
    out.bias.data.copy_(norm.bias.data[keep])
    return out


def _head_rows(heads: Tensor, head_dim: int, parts: int, total_heads: int) -> Tensor:
    """Row indices of `heads` in a projection holding `parts` stacked [H * Dh] blocks (q, k, v)."""
    rows = (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()     # [h * Dh]
    return torch.cat([rows + p * total_heads * head_dim for p in range(parts)])


def _fold_output(proj: nn.Linear, new: nn.Linear, keep: Tensor, cols: Tensor, col_scale: Tensor,
                 row_scale: Tensor) -> None:
    """new = proj restricted to rows `keep` and columns `cols`, times the gates of both."""
    new.weight.data.copy_(proj.weight.data[keep][:, cols] * col_scale * row_scale[:, None])
    new.bias.data.copy_(proj.bias.data[keep] * row_scale)


@torch.no_grad()
def slim_transformer(stack: Transformer, masks: VIBMasks) -> SlimTransformer:
    """The physically pruned copy of `stack`: the masks' eval gates folded in, pruned units sliced
    out. It computes what `stack` with `masks` attached computes in eval mode."""
    was_training = masks.training
    gates = {name: gate.eval()(1) for name, gate in masks.gates.items()}  # eval gates: mu * alive
    masks.train(was_training)
    D, H, Dh, U = masks.dim, masks.heads, masks.head_dim, masks.units
    ones = torch.ones(max(D, H, U, masks.depth))
    keep = masks.kept("emb", D)
    emb = gates.get("emb", ones[:D])[keep].cpu()                      # [K]
    blocks = []
    for l, old in enumerate(stack.blocks):
        if not masks.layer_alive(l):
            continue
        row_scale = emb * gates.get("layers", ones)[l].cpu()          # [K]: layer x embedding gate
        block = TransformerBlock(len(keep), 1, 1.0, masks.context_dim)  # norms at width K; the rest replaced
        block.norm1, block.norm2 = _sliced_norm(old.norm1, keep), _sliced_norm(old.norm2, keep)

        heads = masks.kept(f"heads{l}", H)
        block.attn = Attention(len(keep), len(heads), head_dim=Dh)
        rows = _head_rows(heads, Dh, 3, H)
        block.attn.qkv.weight.data.copy_(old.attn.qkv.weight.data[rows][:, keep])
        block.attn.qkv.bias.data.copy_(old.attn.qkv.bias.data[rows])
        head_gate = gates.get(f"heads{l}", ones[:H]).cpu()[heads].repeat_interleave(Dh)
        _fold_output(old.attn.proj, block.attn.proj, keep, _head_rows(heads, Dh, 1, H), head_gate, row_scale)

        if old.cross is not None:
            block.cross_norm = _sliced_norm(old.cross_norm, keep)
            heads = masks.kept(f"cross{l}", H)
            block.cross = Attention(len(keep), len(heads), context_dim=masks.context_dim, head_dim=Dh)
            rows = _head_rows(heads, Dh, 1, H)
            block.cross.q.weight.data.copy_(old.cross.q.weight.data[rows][:, keep])
            block.cross.q.bias.data.copy_(old.cross.q.bias.data[rows])
            kv_rows = _head_rows(heads, Dh, 2, H)
            block.cross.kv.weight.data.copy_(old.cross.kv.weight.data[kv_rows])
            block.cross.kv.bias.data.copy_(old.cross.kv.bias.data[kv_rows])
            head_gate = gates.get(f"cross{l}", ones[:H]).cpu()[heads].repeat_interleave(Dh)
            _fold_output(old.cross.proj, block.cross.proj, keep, rows, head_gate, row_scale)

        units = masks.kept(f"ffn{l}", U)
        block.mlp = MLP(len(keep), len(units))
        block.mlp.fc.weight.data.copy_(old.mlp.fc.weight.data[units][:, keep])
        block.mlp.fc.bias.data.copy_(old.mlp.fc.bias.data[units])
        _fold_output(old.mlp.proj, block.mlp.proj, keep, units, gates.get(f"ffn{l}", ones[:U]).cpu()[units],
                     row_scale)
        blocks.append(block)
    slim = SlimTransformer(D, keep, blocks, _sliced_norm(stack.norm, keep))
    slim.in_scale.copy_(emb)
    return slim.to(stack.norm.weight.device)

