"""Scaled FP8 quantize / dequantize, torch reference: per-tensor, per-row or no scale."""

import torch

from .weights import FP8_DTYPES, FP8Weight, WeightFormatError

FP8_GRANULARITIES = ("tensor", "row")


def quantize_fp8(
    weight: torch.Tensor, granularity: str = "tensor", fp8_dtype: torch.dtype = torch.float8_e4m3fn
) -> FP8Weight:
    """Quantize `[N, K]` to fp8 with scale `amax / fp8_max` (shape `[]` per tensor, `[N]` per row)."""
    if granularity not in FP8_GRANULARITIES:
        raise ValueError(f"fp8 granularity must be one of {FP8_GRANULARITIES}, got {granularity!r}")
    if fp8_dtype not in FP8_DTYPES:
        raise ValueError(f"fp8 dtype must be one of {FP8_DTYPES}, got {fp8_dtype}")
    w = weight.detach().float()
    if w.dim() != 2:
        raise WeightFormatError(f"quantize_fp8: expected a 2-D weight, found shape {list(w.shape)}")
    if not torch.isfinite(w).all():
        raise WeightFormatError("quantize_fp8: weight contains NaN or Inf")
    fp8_max = torch.finfo(fp8_dtype).max
    amax = w.abs().amax() if granularity == "tensor" else w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / fp8_max, torch.ones_like(amax))
    row_scale = scale if granularity == "tensor" else scale.unsqueeze(1)
    data = torch.clamp(w / row_scale, -fp8_max, fp8_max).to(fp8_dtype)
    return FP8Weight(data=data, scale=scale)


def dequantize_fp8(weight: FP8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`data * scale` computed in fp32 and rounded once to `dtype`."""
    values = weight.data.float()
    if weight.scale is None:
        return values.to(dtype)
    scale = weight.scale.float()
    scale = scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1, 1)
    return (values * scale).to(dtype)
