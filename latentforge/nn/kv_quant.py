"""A KV cache stored in few bits, older blocks in fewer: P15's staircase adaptive quantization (SAQ).

Legend: B batch, H heads, S cached tokens, Dh head size, b bits, M = 2^b - 1 the top code.

Quantization (per token, per head, asymmetric min-max over the Dh channels of one key or value):
    low = min_c x_c,  scale = (max_c x_c - low) / M,  code_c = round((x_c - low) / scale)  in 0..M
    x_hat_c = low + scale * code_c,   |x_c - x_hat_c| <= scale / 2.
Per token rather than per channel, so a token is quantized the moment it arrives (a per-channel
scale would need its whole block first). `low` and `scale` are stored in fp16, rounded outward
(low down, scale up) so the grid still covers [min, max] and the bound above holds for the stored
scale. Codes are packed 8 / b to a byte; b is 2, 4 or 8.

The staircase: the cache is cut into aligned blocks of `block` tokens, and a block's bit width
depends on its age, counted in blocks from the newest (age 0 holds the latest token). With
`stairs = ((8, 1), (4, 2), (2, None))` the newest block is held at 8 bits, the two before it at
4, all older ones at 2. When a block ages onto a lower stair it is dequantized and quantized
again at the new width (its min and max are kept exactly: codes 0 and M decode to them, so the
new grid spans the same range; the error is then at most scale_new/2 + scale_old/2). Uniform
int8/int4/int2 caches are the one-stair case.

Memory: `nbytes()` counts what the cache stores for its tokens: packed codes plus fp16 low and
scale per token and head, for keys and values. Attention needs the dequantized keys and values;
this reference implementation keeps them in a working buffer of the model's dtype, refreshed only
for the blocks that change, where a fused kernel would dequantize on the fly. The buffer is the
price of plain SDPA and is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latentforge.nn.attention import KVCache

BITS = (2, 4, 8)


# ---------------------------------------------------------------------------------------------- codes


def quantize(x: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Min-max rounding of x [..., Dh] per row: codes uint8 [..., Dh] in 0..2^b-1, and the row's fp16
    scale and low [..., 1] (rounded outward, see the module doc)."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    top = 2**bits - 1
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        low = lo.half()
        low = torch.where(low.float() > lo, low.nextafter(torch.full_like(low, -torch.inf)), low)
        scale = ((hi - low.float()) / top).clamp_min(1e-6).half()
        short = low.float() + scale.float() * top < hi  # the fp16 scale's grid must still reach max
        scale = torch.where(short, scale.nextafter(torch.full_like(scale, torch.inf)), scale)
        codes = ((x - low.float()) / scale.float()).round().clamp(0, top).to(torch.uint8)
    return codes, scale, low


def dequantize(codes: Tensor, scale: Tensor, low: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """x_hat = low + scale * code, [..., Dh] in `dtype`."""
    return (low.float() + scale.float() * codes.float()).to(dtype)


def pack(codes: Tensor, bits: int) -> Tensor:
    """uint8 codes [..., Dh] of `bits` bits -> [..., Dh * bits / 8] bytes, 8 / bits codes to a byte."""
    per = 8 // bits
    if codes.shape[-1] % per:
        raise ValueError(f"{bits}-bit packing needs a head size divisible by {per}, got {codes.shape[-1]}")
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)  # [per]
    return (codes.unflatten(-1, (-1, per)) << shifts).sum(-1, dtype=torch.uint8)


def unpack(packed: Tensor, bits: int) -> Tensor:
    """Inverse of `pack`: [..., Dh * bits / 8] bytes -> uint8 codes [..., Dh]."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed[..., None] >> shifts) & (2**bits - 1)).flatten(-2)


# ---------------------------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class Staircase:
    """Bit widths by age: `stairs` (bits, blocks) from the newest block back; the last stair's
    blocks is None (every older block). One stair is a uniform cache."""

    stairs: tuple[tuple[int, int | None], ...] = ((8, 1), (4, 2), (2, None))
    block: int = 16

    def __post_init__(self) -> None:
        if not self.stairs or self.stairs[-1][1] is not None \
                or any(n is None or n < 1 for _, n in self.stairs[:-1]) or any(b not in BITS for b, _ in self.stairs):
            raise ValueError(f"stairs must be (bits in {BITS}, blocks >= 1) pairs, the last with blocks None; "
                             f"got {self.stairs}")
        if self.block < 1:
            raise ValueError(f"block must be >= 1 tokens, got {self.block}")

    def bits(self, age: int) -> int:
        """The width of a block `age` blocks older than the newest."""
        for bits, blocks in self.stairs:
            if blocks is None or age < blocks:
                return bits
            age -= blocks
        raise AssertionError("unreachable: the last stair takes every age")


# What a sampler's `kv_cache` option names; a `Staircase` may be passed instead.
NAMED = {
    "int8": Staircase(((8, None),)),
    "int4": Staircase(((4, None),)),
    "int2": Staircase(((2, None),)),
    "staircase": Staircase(),
}


class _Stored:
    """Packed codes, scale and low of one block of keys or values, [B, H, block, ...]."""

    def __init__(self, shape: tuple[int, int, int, int], bits: int, device: torch.device) -> None:
        B, H, L, Dh = shape
        self.bits = bits
        self.codes = torch.zeros(B, H, L, Dh * bits // 8, dtype=torch.uint8, device=device)
        self.scale = torch.zeros(B, H, L, 1, dtype=torch.float16, device=device)
        self.low = torch.zeros_like(self.scale)

    def put(self, start: int, x: Tensor) -> None:
        """Quantize tokens x [B, H, T, Dh] into rows start .. start + T - 1."""
        codes, scale, low = quantize(x, self.bits)
        end = start + x.shape[2]
        self.codes[:, :, start:end], self.scale[:, :, start:end], self.low[:, :, start:end] = \
            pack(codes, self.bits), scale, low

    def get(self, end: int, dtype: torch.dtype) -> Tensor:
        """Rows 0 .. end - 1 dequantized, [B, H, end, Dh]."""
        return dequantize(unpack(self.codes[:, :, :end], self.bits), self.scale[:, :, :end], self.low[:, :, :end], dtype)

    def bytes_per_token(self) -> int:
        B, H, _, packed = self.codes.shape
        return B * H * (packed + 2 * 2)  # codes + fp16 scale and low


class QuantizedKVCache:
    """A KV cache with `KVCache`'s interface (`append`, `length`) holding keys and values quantized
    by age along a `Staircase` (see the module doc)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, device: torch.device,
                 dtype: torch.dtype, staircase: Staircase = Staircase()) -> None:
        self.staircase = staircase
        self.shape = (batch, heads, staircase.block, head_dim)
        self.device, self.dtype = device, dtype
        # the dequantized working copy attention reads (not counted in nbytes, see the module doc)
        self.k = torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.blocks: list[tuple[_Stored, _Stored]] = []  # (keys, values) per block, oldest first
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [B, H, T, Dh] after the cached ones; return all keys and values so far, dequantized."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.k.shape[2]}")
        L, done = self.staircase.block, 0
        while done < k.shape[2]:
            pos = self.length + done
            if pos // L == len(self.blocks):  # a new block opens: the older ones age one step
                bits = self.staircase.bits(0)
                self.blocks.append((_Stored(self.shape, bits, self.device), _Stored(self.shape, bits, self.device)))
                self._age()
            take = min(L - pos % L, k.shape[2] - done)
            stored_k, stored_v = self.blocks[-1]
            stored_k.put(pos % L, k[:, :, done:done + take])
            stored_v.put(pos % L, v[:, :, done:done + take])
            done += take
        self.length = end
        self._refresh(len(self.blocks) - 1)
        return self.k[:, :, :end], self.v[:, :, :end]

    def _age(self) -> None:
        """Requantize every block whose age now puts it on a lower stair."""
        newest = len(self.blocks) - 1
        for index, (stored_k, stored_v) in enumerate(self.blocks):
            bits = self.staircase.bits(newest - index)
            if bits == stored_k.bits:
                continue
            full = self.staircase.block
            values = [s.get(full, torch.float32) for s in (stored_k, stored_v)]
            self.blocks[index] = (_Stored(self.shape, bits, self.device), _Stored(self.shape, bits, self.device))
            for s, x in zip(self.blocks[index], values):
                s.put(0, x)
            self._refresh(index)

    def _refresh(self, index: int) -> None:
        """Write block `index`'s dequantized keys and values into the working copy."""
        L = self.staircase.block
        start = index * L
        count = min(L, self.length - start)
        stored_k, stored_v = self.blocks[index]
        self.k[:, :, start:start + count] = stored_k.get(count, self.dtype)
        self.v[:, :, start:start + count] = stored_v.get(count, self.dtype)

    def bits(self) -> list[int]:
        """The bit width each cached token is held at, oldest first (length entries)."""
        L = self.staircase.block
        return [self.blocks[t // L][0].bits for t in range(self.length)]

    def nbytes(self) -> int:
        """Bytes stored for the cached tokens: packed codes + fp16 scale and low, keys and values."""
        L = self.staircase.block
        return sum(2 * k.bytes_per_token() * min(L, self.length - i * L) for i, (k, _) in enumerate(self.blocks))


def kv_cache_bytes(cache: KVCache | QuantizedKVCache) -> int:
    """Bytes a cache stores for its tokens (a full cache: keys and values in the model's dtype)."""
    if isinstance(cache, QuantizedKVCache):
        return cache.nbytes()
    B, H, _, Dh = cache.k.shape
    return 2 * B * H * cache.length * Dh * cache.k.element_size()


def new_kv_cache(kind: str | Staircase, batch: int, heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> KVCache | QuantizedKVCache:
    """The cache a sampler's `kv_cache` option names: "full" (the model's dtype), "int8", "int4",
    "int2", "staircase" (8 -> 4 -> 2 bits by age, `Staircase()`), or a `Staircase`."""
    if isinstance(kind, Staircase):
        return QuantizedKVCache(batch, heads, max_len, head_dim, device, dtype, kind)
    if kind == "full":
        return KVCache(batch, heads, max_len, head_dim, device, dtype)
    if kind not in NAMED:
        raise ValueError(f"kv_cache must be 'full', {', '.join(map(repr, NAMED))} or a Staircase, got {kind!r}")
    return QuantizedKVCache(batch, heads, max_len, head_dim, device, dtype, NAMED[kind])
