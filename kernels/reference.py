"""Exact torch reference for every weight format: dequantize, and `linear(x, weight, bias)` in fp32."""

import torch
import torch.nn.functional as F

from .fp8 import dequantize_fp8
from .nvfp4 import dequantize_nvfp4
from .weights import FP8Weight, NVFP4Weight


def _dequantize_plain(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return weight.to(dtype)


DEQUANTIZERS = {
    NVFP4Weight: dequantize_nvfp4,
    FP8Weight: dequantize_fp8,
    torch.Tensor: _dequantize_plain,
    torch.nn.Parameter: _dequantize_plain,
}


def dequantize(weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantize any supported weight (NVFP4Weight, FP8Weight or a float tensor) to `dtype`."""
    try:
        fn = DEQUANTIZERS[type(weight)]
    except KeyError:
        raise TypeError(f"no dequantizer for weight of type {type(weight).__name__}") from None
    return fn(weight, dtype)


def linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ W.T + bias` with W dequantized exactly, computed in fp32, returned in x's dtype."""
    w = dequantize(weight, torch.float32).to(x.device)
    b = None if bias is None else bias.to(device=x.device, dtype=torch.float32)
    return F.linear(x.float(), w, b).to(x.dtype)
