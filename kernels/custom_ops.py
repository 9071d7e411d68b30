"""`torch.library` custom ops (namespace `wan_nvfp4`) with fake implementations: compile-safe entry points.

Called as `torch.ops.wan_nvfp4.<name>`. The ops take the weight's tensors and simple scalars (the
NVFP4Weight / FP8Weight fields) plus the path name, already chosen by `ops` outside the op. Inside, a table
maps the path to its implementation; Triton modules are imported only when a Triton path runs.
torch.compile sees each op as one opaque node whose output shape comes from the fake implementation, so
graphs stay whole (no graph breaks).
"""

import importlib

import torch
import torch.nn.functional as F

from . import fp8_scaled_mm, torch_paths
from .dispatch import FP8_SCALED_MM, REFERENCE, TORCH, TRITON_DEQUANT, TRITON_FUSED
from .weights import FP8Weight, NVFP4Weight

Tensor = torch.Tensor


def _triton_module(name: str):
    return importlib.import_module(f"{__package__}.{name}")


def _triton_dequantize(weight, dtype: torch.dtype) -> Tensor:
    return _triton_module("triton_dequant").dequantize(weight, dtype)


def _triton_dequant_linear(x: Tensor, weight, bias: Tensor | None) -> Tensor:
    b = None if bias is None else bias.to(x.dtype)
    return F.linear(x, _triton_dequantize(weight, x.dtype), b)


def _triton_fused_linear(x: Tensor, weight, bias: Tensor | None) -> Tensor:
    return _triton_module("triton_fused").linear(x, weight, bias)


# path -> implementation; each takes (x [M, K], weight, bias) or (weight, dtype).
LINEAR_IMPLS = {
    REFERENCE: torch_paths.reference_linear,
    TORCH: torch_paths.linear,
    TRITON_DEQUANT: _triton_dequant_linear,
    TRITON_FUSED: _triton_fused_linear,
    FP8_SCALED_MM: fp8_scaled_mm.linear,
}
DEQUANTIZE_IMPLS = {
    REFERENCE: torch_paths.reference_dequantize,
    TORCH: torch_paths.dequantize,
    TRITON_DEQUANT: _triton_dequantize,
}


def _run_linear(x: Tensor, weight, bias: Tensor | None, path: str) -> Tensor:
    x2d = x.reshape(-1, x.shape[-1])
    y = LINEAR_IMPLS[path](x2d, weight, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def nvfp4_linear(
    x: Tensor,
    packed: Tensor,
    block_scale: Tensor,
    global_scale: Tensor,
    out_features: int,
    in_features: int,
    nibble_order: str,
    scale_layout: str,
    bias: Tensor | None,
    path: str,
) -> Tensor:
    w = NVFP4Weight(packed, block_scale, global_scale, out_features, in_features, nibble_order, scale_layout)
    return _run_linear(x, w, bias, path)


def _nvfp4_linear_fake(x, packed, block_scale, global_scale, out_features, *rest):
    return x.new_empty((*x.shape[:-1], out_features))


def nvfp4_dequantize(
    packed: Tensor,
    block_scale: Tensor,
    global_scale: Tensor,
    out_features: int,
    in_features: int,
    nibble_order: str,
    scale_layout: str,
    dtype: torch.dtype,
    path: str,
) -> Tensor:
    w = NVFP4Weight(packed, block_scale, global_scale, out_features, in_features, nibble_order, scale_layout)
    return DEQUANTIZE_IMPLS[path](w, dtype)


def _nvfp4_dequantize_fake(packed, block_scale, global_scale, out_features, in_features, nibble_order, *rest):
    dtype = rest[1]
    return packed.new_empty((out_features, in_features), dtype=dtype)


def fp8_linear(x: Tensor, data: Tensor, scale: Tensor | None, bias: Tensor | None, path: str) -> Tensor:
    return _run_linear(x, FP8Weight(data, scale), bias, path)


def _fp8_linear_fake(x, data, scale, bias, path):
    return x.new_empty((*x.shape[:-1], data.shape[0]))


def fp8_dequantize(data: Tensor, scale: Tensor | None, dtype: torch.dtype, path: str) -> Tensor:
    return DEQUANTIZE_IMPLS[path](FP8Weight(data, scale), dtype)


def _fp8_dequantize_fake(data, scale, dtype, path):
    return data.new_empty(tuple(data.shape), dtype=dtype)


NAMESPACE = "wan_nvfp4"
# op name -> (implementation, fake implementation)
OPS = {
    "nvfp4_linear": (nvfp4_linear, _nvfp4_linear_fake),
    "nvfp4_dequantize": (nvfp4_dequantize, _nvfp4_dequantize_fake),
    "fp8_linear": (fp8_linear, _fp8_linear_fake),
    "fp8_dequantize": (fp8_dequantize, _fp8_dequantize_fake),
}


def _register() -> None:
    """Define the ops once per process. A second copy of this package (ComfyUI importing the pack under its
    folder name next to an installed `wan_nvfp4`) finds them defined and uses them: same code, same maths."""
    for name, (fn, fake) in OPS.items():
        if hasattr(getattr(torch.ops, NAMESPACE), name):
            continue
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", fn, mutates_args=())
        op.register_fake(fake)


_register()


def nvfp4_fields(w: NVFP4Weight) -> tuple:
    """The NVFP4Weight fields in the custom ops' argument order (tensors, then scalars)."""
    tensors = (w.packed, w.block_scale, w.global_scale)
    return (*tensors, w.out_features, w.in_features, w.nibble_order, w.scale_layout)
