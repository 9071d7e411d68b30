"""Quantize one float weight into an output layout, row chunk by row chunk, and measure its SQNR.

NVFP4 blocks run along K inside one row, so once the global scale (amax of the whole weight) is fixed,
quantizing row chunks gives exactly the bytes `kernels.quantize_nvfp4` gives for the whole weight, while
holding only one chunk's fp32 intermediates.
"""

import math
from dataclasses import dataclass

import torch

from ...kernels import (
    LINEAR,
    FP8Weight,
    dequantize_fp8,
    dequantize_nvfp4,
    nvfp4_global_scale,
    quantize_fp8,
    quantize_nvfp4,
    to_blocked,
)
from .output_formats import OutputLayout
from .presets import FP8_TARGET, NVFP4_TARGET

CHUNK_ELEMENTS = 2 * 1024 * 1024  # about 8 MB of fp32 per intermediate


@dataclass
class QuantizedLayer:
    """role -> output tensor (as planned by the layout), and the dequantized weight's SQNR vs the source."""

    tensors: dict[str, torch.Tensor]
    sqnr_db: float


class _SqnrAccumulator:
    def __init__(self):
        self.signal = 0.0
        self.noise = 0.0

    def add(self, ref: torch.Tensor, approx: torch.Tensor) -> None:
        self.signal += float(torch.linalg.vector_norm(ref.float())) ** 2
        self.noise += float(torch.linalg.vector_norm(ref.float() - approx.float())) ** 2

    @property
    def db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)


def _row_chunks(n: int, k: int):
    rows = max(1, CHUNK_ELEMENTS // max(k, 1))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def _amax(weight: torch.Tensor) -> torch.Tensor:
    """max |w| as a 1-element fp32 tensor, chunk by chunk (exact: max needs no rounding)."""
    n, k = weight.shape
    amax = torch.zeros((), dtype=torch.float32)
    for a, b in _row_chunks(n, k):
        amax = torch.maximum(amax, weight[a:b].abs().amax().float())
    return amax.reshape(1, 1)


def quantize_nvfp4_layer(weight: torch.Tensor, layout: OutputLayout) -> QuantizedLayer:
    """NVFP4 in `layout`'s conventions; bit-identical to `kernels.quantize_nvfp4` on the whole weight."""
    n, k = weight.shape
    gs = nvfp4_global_scale(_amax(weight))  # the same formula, on the amax alone
    packed = torch.zeros((-(-n // layout.pad_rows_to) * layout.pad_rows_to, k // 2), dtype=torch.uint8)
    scales = torch.empty((n, k // 16), dtype=torch.float8_e4m3fn)
    acc = _SqnrAccumulator()
    for a, b in _row_chunks(n, k):
        chunk = weight[a:b].float()
        q = quantize_nvfp4(chunk, global_scale=gs, nibble_order=layout.nibble_order, scale_layout=LINEAR)
        acc.add(chunk, dequantize_nvfp4(q))
        packed[a:b] = q.packed
        scales[a:b] = q.block_scale
    if layout.scale_layout != LINEAR:
        scales = to_blocked(scales)
    return QuantizedLayer({"weight": packed, "block_scale": scales, "global_scale": gs.reshape(())}, acc.db)


def quantize_fp8_layer(weight: torch.Tensor, layout: OutputLayout) -> QuantizedLayer:
    """Per-tensor `float8_e4m3fn`, fp32 scalar scale; bit-identical to `kernels.quantize_fp8(weight)`.

    The scale comes from the whole weight (`amax / 448`, via `quantize_fp8` on the amax alone), then rows are
    cast chunk by chunk exactly as `quantize_fp8` casts them.
    """
    n, k = weight.shape
    fp8 = torch.float8_e4m3fn
    scale = quantize_fp8(_amax(weight), granularity="tensor", fp8_dtype=fp8).scale.float()
    fp8_max = torch.finfo(fp8).max
    data = torch.empty((n, k), dtype=fp8)
    acc = _SqnrAccumulator()
    for a, b in _row_chunks(n, k):
        chunk = weight[a:b].float()
        data[a:b] = torch.clamp(chunk / scale, -fp8_max, fp8_max).to(fp8)
        acc.add(chunk, dequantize_fp8(FP8Weight(data[a:b], scale)))
    return QuantizedLayer({"weight": data, "scale": scale.reshape(())}, acc.db)


QUANTIZERS = {NVFP4_TARGET: quantize_nvfp4_layer, FP8_TARGET: quantize_fp8_layer}


def quantize_layer(weight: torch.Tensor, target: str, layout: OutputLayout) -> QuantizedLayer:
    """Quantize a 2-D float weight to `target` (nvfp4 | fp8) in `layout`."""
    return QUANTIZERS[target](weight, layout)
