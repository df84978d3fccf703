"""Inference on finished models (P28, the inference survey): int8 Linear weights for CPU
sampling, and `torch.export` programs of one denoiser call and of the tokenizer's decoder.

Legend: B batch, M rows of a Linear's input (all leading dims flattened), K in features,
N out features, grid the latent grid, C latent channels.

int8 (`quantize_int8`): every nn.Linear becomes an `Int8Linear` holding int8 weights [N, K] and one
fp32 scale per output channel (symmetric, w ~= q * scale, |q| <= 127): 4x less weight memory.
Its forward quantises the input per row on the fly (symmetric, dynamic: the scale is each row's
max |x| / 127, so no calibration data is needed) and multiplies int8 x int8 -> int32 with
`torch._int_mm`, then rescales. This is the scheme of `torch.ao.quantization.quantize_dynamic`,
written here because torch 2.13 marks `torch.ao.quantization` and its quantized tensors
deprecated (pointing to the separate torchao package), and because plain int8 tensors, unlike
packed fbgemm weights, go through `torch.export`. `activations=False` keeps the input in fp32
and dequantises the weight per call instead (weight-only: the memory saving, fp32 accuracy of the
matmul, no speed-up). Convolutions, embeddings and norms stay fp32: the transformers' weight is
almost all Linear, and the conv tokenizers' decoders are small next to the generators.

A quantized model is for sampling only (no gradients through the int8 matmul) and cannot be
saved: `save_pretrained` refuses it, because its config would rebuild the fp32 model. Quantising
takes milliseconds, so save the fp32 model and quantise after `from_pretrained`.

Export (`export_denoiser`, `export_decoder`): `torch.export.export` of the network evaluation a
sampler repeats (DiT: `predict(x, t, context)`) and of `tokenizer.decode`, batch size dynamic
where the graph allows; `.module()` of the result runs like the eager call. `save_onnx` writes such a
program as an ONNX file (torch's dynamo exporter; needs the `onnx` extra: onnx + onnxscript, and
onnxruntime to run it), for runtimes outside Python/torch.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.atomic import atomic_path
from latentforge.conditioning.base import Context


class Int8Linear(nn.Module):
    """A Linear with int8 weights [N, K] and per-output-channel fp32 scales [N]; inference only."""

    inference_only = True  # serialization refuses modules that a config cannot rebuild

    def __init__(self, linear: nn.Linear, activations: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activations = activations
        w = linear.weight.detach().float()                                       # [N, K]
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0                     # [N]
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    @property
    def weight(self) -> Tensor:
        """The dequantised weight [N, K], for code that reads `linear.weight` (MatFormer slices)."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        x = x.reshape(-1, self.in_features).float()                              # [M, K], fp32 whatever autocast says
        if not self.activations:
            out = F.linear(x, self.weight)
        else:
            # per-row symmetric scale: one outlier token does not cost the others their precision
            x_scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0  # [M, 1]
            x_int8 = torch.round(x / x_scale).clamp(-127, 127).to(torch.int8)
            # int32 accumulation is exact for K < 133k (127 * 127 * K < 2^31)
            out = torch._int_mm(x_int8, self.weight_int8.t()).float() * x_scale * self.weight_scale  # [M, N]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        mode = "int8 weights and activations" if self.activations else "int8 weights"
        return f"in_features={self.in_features}, out_features={self.out_features}, {mode}"


def quantize_int8(model: nn.Module, activations: bool = True) -> nn.Module:
    """A copy of `model` (a generator, a tokenizer: any module) in eval mode with every nn.Linear
    replaced by an `Int8Linear`; the original is left as it was. Convs, embeddings and norms stay fp32.

    Args:
        activations: True quantises each Linear's input per row too (int8 matmul, the faster
            path); False dequantises the weights per call (weight-only).
    """
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:  # subclasses (LoRA bases, ...) may carry more than a weight
                setattr(parent, name, Int8Linear(child, activations))
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and weight buffers (int8 weights and their scales count)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ---------------------------------------------------------------------------------------------- export


class _Denoiser(nn.Module):
    """One DiT network evaluation as a module of tensors only: x [B, *grid, C] (normalised noisy
    latents), t [B], and, for a conditional DiT, the context's tokens [B, L, Dc] and mask [B, L]."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: Tensor, t: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        context = None if tokens is None else Context(tokens, mask)
        return self.generator.predict(x, t, context)


class _Decoder(nn.Module):
    def __init__(self, tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, z: Tensor) -> Tensor:
        return self.tokenizer.decode(z)


def _export(module: nn.Module, args: tuple, dynamic_batch: bool) -> torch.export.ExportedProgram:
    """torch.export with the batch (dim 0 of every tensor input) dynamic, or static if it must be."""
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        shapes = tuple(None if a is None else {0: batch} for a in args)
        try:
            return torch.export.export(module, args, dynamic_shapes=shapes)
        except Exception:  # a graph that specialises on B (a reshape with a literal size): export it static
            pass
    return torch.export.export(module, args)


@torch.no_grad()
def export_denoiser(generator: nn.Module, x: Tensor, t: Tensor, context: Context | None = None,
                    dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """Export one network evaluation of a DiT, `generator.predict(x, t, context)`.

    Args:
        x: example normalised noisy latents [B, *grid, C]; t: example times [B].
        context: example condition (a conditional DiT); its tokens [B, L, Dc] and mask [B, L]
            become the program's 3rd and 4th inputs. Spatial maps (layouts) are not exported.
    Returns an ExportedProgram; `program.module()(x, t[, tokens, mask])` -> [B, *grid, C].
    """
    if context is not None and context.spatial is not None:
        raise ValueError("export_denoiser exports token conditions only; this context has a spatial map")
    args = (x, t) if context is None else (x, t, context.tokens, context.mask)
    return _export(_Denoiser(generator.eval()).eval(), args, dynamic_batch)


@torch.no_grad()
def export_decoder(tokenizer: nn.Module, z: Tensor, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """Export `tokenizer.decode` for example latents z (codes [B, *grid] or vectors [B, *grid, C]);
    `program.module()(z)` -> data in the model's layout (images [B, 3, H, W])."""
    return _export(_Decoder(tokenizer.eval()).eval(), (z,), dynamic_batch)


def save_onnx(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    """Write an exported program (`export_denoiser`, `export_decoder`) as an ONNX model at `path`,
    atomically; its inputs keep the program's names and dynamic batch. Returns the path.

    Raises ImportError naming the extra when onnx / onnxscript are not installed."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'latentforge[onnx]' ({err})") from None
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx_program = torch.onnx.export(program, (), dynamo=True, verbose=False)
        onnx_program.save(str(tmp))
    return path
