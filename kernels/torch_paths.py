"""The `torch` and `reference` paths: plain-torch dequantize + F.linear, any device (CPU, MPS, ROCm, CUDA).

`torch` dequantizes with the exact reference code in row chunks (so its fp32 / index temporaries stay
bounded on big layers), straight to the compute dtype, then calls F.linear. Values are identical to
`kernels.dequantize(w, dtype)`. `reference` is `kernels.linear_reference` (fp32 maths).
"""

from dataclasses import replace

import torch
import torch.nn.functional as F

from .fp8 import dequantize_fp8
from .nvfp4 import dequantize_nvfp4
from .reference import dequantize as dequantize_reference
from .reference import linear_reference
from .swizzle import SWIZZLED, TILE_ROWS, swizzled_shape
from .weights import FP8Weight, NVFP4Weight

# Weights dequantized per chunk: bounds the reference code's temporaries (~20 B per weight) to ~320 MB.
CHUNK_WEIGHTS = 1 << 24


def _chunk_rows(n: int, k: int) -> int:
    rows = max(TILE_ROWS, CHUNK_WEIGHTS // max(k, 1) // TILE_ROWS * TILE_ROWS)
    return min(rows, n)


def _nvfp4_rows(w: NVFP4Weight, r0: int, r1: int) -> NVFP4Weight:
    """Rows r0:r1 of an NVFP4 weight (r0 a multiple of 128), sharing storage with it."""
    if w.scale_layout == SWIZZLED:
        _, cols_p = swizzled_shape(w.out_features, w.scale_cols)
        rows_p, _ = swizzled_shape(r1 - r0, w.scale_cols)
        flat = w.block_scale.reshape(-1)
        scale = flat[r0 * cols_p : (r0 + rows_p) * cols_p].reshape(rows_p, cols_p)
    else:
        scale = w.block_scale.reshape(w.out_features, w.scale_cols)[r0:r1]
    return replace(w, packed=w.packed[r0:r1], block_scale=scale, out_features=r1 - r0)


def _fp8_rows(w: FP8Weight, r0: int, r1: int) -> FP8Weight:
    scale = w.scale if w.granularity != "row" else w.scale.reshape(-1)[r0:r1]
    return replace(w, data=w.data[r0:r1], scale=scale)


_ROW_SLICERS = {NVFP4Weight: (_nvfp4_rows, dequantize_nvfp4), FP8Weight: (_fp8_rows, dequantize_fp8)}


def dequantize(weight, dtype: torch.dtype) -> torch.Tensor:
    """Exact dequantization to `dtype`, in row chunks for quantized weights."""
    if type(weight) not in _ROW_SLICERS:
        return weight.to(dtype)
    rows_of, dequant = _ROW_SLICERS[type(weight)]
    n, k = weight.shape
    step = _chunk_rows(n, k)
    if step >= n:
        return dequant(weight, dtype)
    out = torch.empty((n, k), dtype=dtype, device=weight.device)
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        out[r0:r1] = dequant(rows_of(weight, r0, r1), dtype)
    return out


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear with the weight dequantized in torch to x's dtype."""
    b = None if bias is None else bias.to(x.dtype)
    return F.linear(x, dequantize(weight, x.dtype), b)


def reference_linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    return linear_reference(x, weight, bias)


def reference_dequantize(weight, dtype: torch.dtype) -> torch.Tensor:
    return dequantize_reference(weight, dtype)
