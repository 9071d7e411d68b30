"""The `torch` and `reference` paths: plain-torch dequantize + F.linear, any device (CPU, MPS, ROCm, CUDA).

`torch` gives exactly the values of `kernels.dequantize(w, dtype)` (the reference formula), computed in
fewer passes over memory:

- NVFP4: a table of the two weights of every (block-scale byte, packed byte) pair is built per call with
  the reference formula (`(code * block_scale) * global_scale` in fp32, rounded once to the dtype; 128 Ki
  entries); the weight is then one gather per packed byte, written straight into the output. The
  index is `block_scale_byte * 256 + packed_byte` (int32).
- FP8: `data` widened to fp32 and scaled in place (fp32 output: the output itself is the buffer), or per
  row chunk into the output for bf16 / fp16.

Row chunks bound the temporaries (the int32 index, the fp32 chunk) to ~64 MB on big layers; they are
large because every torch op costs a thread hand-off on CPU. `reference` is `kernels.linear_reference`
(fp32 maths).
"""

import torch
import torch.nn.functional as F

from .e2m1 import e2m1_decode
from .fp8 import dequantize_fp8
from .nvfp4 import nvfp4_block_scales
from .packing import unpack_nibbles
from .reference import dequantize as dequantize_reference
from .reference import linear_reference
from .weights import NVFP4_BLOCK, FP8Weight, NVFP4Weight

# Weights dequantized per chunk: bounds the temporaries (int32 index: 2 B per weight; fp32: 4 B) to 64 MB.
CHUNK_WEIGHTS = 1 << 24
BYTES_PER_BLOCK = NVFP4_BLOCK // 2  # packed bytes that share one block scale


def _chunk_rows(n: int, k: int) -> int:
    return max(1, min(n, CHUNK_WEIGHTS // max(k, 1)))


_PRODUCTS: dict[tuple[torch.device, str], torch.Tensor] = {}


def _code_times_scale(device: torch.device, nibble_order: str) -> torch.Tensor:
    """`[256 * 256, 2]` fp32: row `s * 256 + b` = the E2M1 values of packed byte `b` times the e4m3 value of
    block-scale byte `s` (exact products; cached per device and nibble order)."""
    key = (torch.device(device), nibble_order)
    if key not in _PRODUCTS:
        bytes_ = torch.arange(256, dtype=torch.uint8, device=device)
        values = e2m1_decode(unpack_nibbles(bytes_.reshape(256, 1), nibble_order))  # [256, 2]
        block = bytes_.view(torch.float8_e4m3fn).float().reshape(256, 1, 1)
        _PRODUCTS[key] = (values.unsqueeze(0) * block).reshape(256 * 256, 2)
    return _PRODUCTS[key]


def nvfp4_pair_table(w: NVFP4Weight, dtype: torch.dtype) -> torch.Tensor:
    """`[256 * 256, 2]` in `dtype`: row `s * 256 + b` holds the two weights that packed byte `b` (in the
    weight's nibble order) stands for under block-scale byte `s`: `(code * block_scale) * global_scale`
    in fp32 rounded once, the reference formula."""
    gs = w.global_scale.float().reshape(())
    return (_code_times_scale(w.device, w.nibble_order) * gs).to(dtype)


def _dequantize_nvfp4(w: NVFP4Weight, dtype: torch.dtype) -> torch.Tensor:
    n, k = w.shape
    table = nvfp4_pair_table(w, dtype)
    scale_rows = nvfp4_block_scales(w).view(torch.uint8).to(torch.int32).mul_(256)  # [N, K/16]
    packed = w.packed[:n, : k // 2]
    out = torch.empty((n, k), dtype=dtype, device=w.device)
    step = _chunk_rows(n, k)
    index = torch.empty((step, k // NVFP4_BLOCK, BYTES_PER_BLOCK), dtype=torch.int32, device=w.device)
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        part = index[: r1 - r0]
        part.copy_(packed[r0:r1].view(r1 - r0, k // NVFP4_BLOCK, BYTES_PER_BLOCK))
        part.add_(scale_rows[r0:r1].unsqueeze(-1))
        torch.index_select(table, 0, part.view(-1), out=out[r0:r1].view(-1, 2))
    return out


def _fp8_row_scale(w: FP8Weight) -> torch.Tensor:
    scale = w.scale.float()
    return scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1, 1)


def _dequantize_fp8(w: FP8Weight, dtype: torch.dtype) -> torch.Tensor:
    if w.scale is None:
        return dequantize_fp8(w, dtype)
    scale = _fp8_row_scale(w)
    if dtype == torch.float32:
        return w.data.to(torch.float32, copy=True).mul_(scale)
    n, k = w.shape
    out = torch.empty((n, k), dtype=dtype, device=w.device)
    step = _chunk_rows(n, k)
    wide = torch.empty((step, k), dtype=torch.float32, device=w.device)  # reused: allocated once
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        part = wide[: r1 - r0]
        part.copy_(w.data[r0:r1])
        part.mul_(scale if scale.dim() == 0 else scale[r0:r1])
        out[r0:r1].copy_(part)
    return out


_DEQUANTIZERS = {NVFP4Weight: _dequantize_nvfp4, FP8Weight: _dequantize_fp8}


def dequantize(weight, dtype: torch.dtype) -> torch.Tensor:
    """Exact dequantization to `dtype` (the reference's values), a float weight cast to `dtype`."""
    dequant = _DEQUANTIZERS.get(type(weight))
    return weight.to(dtype) if dequant is None else dequant(weight, dtype)


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear with the weight dequantized in torch to x's dtype."""
    b = None if bias is None else bias.to(x.dtype)
    return F.linear(x, dequantize(weight, x.dtype), b)


def reference_linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    return linear_reference(x, weight, bias)


def reference_dequantize(weight, dtype: torch.dtype) -> torch.Tensor:
    return dequantize_reference(weight, dtype)
