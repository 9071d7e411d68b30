"""The per-format entry points: `linear(x, weight, bias, path)` and `dequantize(weight, dtype, path)`.

`weight` is an NVFP4Weight, FP8Weight or float tensor exactly as read from the file (no conversion at load).
The path is resolved here, outside the custom ops, from declared constraints (`dispatch`); `auto` also
looks at the regime (M vs the fused threshold) and, for the Triton paths, at the first-use self-check of the
device (`selfcheck`). `resolve_path` returns the choice without running it, so a
model can log it (`options.PathLog`). Paths: see `dispatch.PATHS`.
"""

import torch
import torch.nn.functional as F

from . import custom_ops, selfcheck
from .capabilities import device_caps
from .dispatch import (
    AUTO,
    CONSTRAINTS,
    DEQUANTIZE,
    FLOAT,
    LINEAR,
    REFERENCE,
    Request,
    check_path,
    choose_path,
    weight_format,
)
from .options import DEFAULT_OPTIONS, KernelOptions
from .reference import linear_reference
from .weights import FP8Weight, NVFP4Weight


def _request(entry: str, weight, dtype: torch.dtype, device: torch.device, m: int | None) -> Request:
    fmt = weight_format(weight)
    n, k = weight.shape
    weight_dtype = weight.data.dtype if isinstance(weight, FP8Weight) else None
    return Request(entry, fmt, device_caps(device), dtype, m, n, k, weight_dtype)


def _resolve(req: Request, path: str, options: KernelOptions, weight, device: torch.device) -> str:
    requested = options.path if path == AUTO else path
    if requested == AUTO:
        gate = None if req.format == FLOAT else selfcheck.gate(device, weight, req.dtype)
        return choose_path(req, fp8_fast=options.fp8_fast, fused_max_m=options.fused_max_m, gate=gate)
    return check_path(requested, req)


def _compute_dtype(x: torch.Tensor, options: KernelOptions) -> torch.dtype:
    return options.compute_dtype or x.dtype


def resolve_path(x: torch.Tensor, weight, path: str = AUTO, options: KernelOptions | None = None) -> str:
    """The path `linear(x, weight, path=path, options=options)` would run (raises if a forced one cannot)."""
    options = options or DEFAULT_OPTIONS
    m = x.numel() // max(x.shape[-1], 1)
    req = _request(LINEAR, weight, _compute_dtype(x, options), x.device, m)
    return _resolve(req, path, options, weight, x.device)


def path_problem(x: torch.Tensor, weight, path: str, options: KernelOptions | None = None) -> str | None:
    """Why `path` cannot run `linear(x, weight)` (None when it can): for menus, logs and the bench."""
    options = options or DEFAULT_OPTIONS
    m = x.numel() // max(x.shape[-1], 1)
    req = _request(LINEAR, weight, _compute_dtype(x, options), x.device, m)
    return CONSTRAINTS[path].why_not(req)


def _check_input(x: torch.Tensor, weight) -> None:
    k = weight.shape[1]
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"linear: input's last dimension must be in_features={k}, found {list(x.shape)}")


def _float_linear(x: torch.Tensor, weight: torch.Tensor, bias, path: str) -> torch.Tensor:
    if path == REFERENCE:
        return linear_reference(x, weight, bias)
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def _nvfp4_linear(x, weight: NVFP4Weight, bias, path: str) -> torch.Tensor:
    return torch.ops.wan_nvfp4.nvfp4_linear(x, *custom_ops.nvfp4_fields(weight), bias, path)


def _fp8_linear(x, weight: FP8Weight, bias, path: str) -> torch.Tensor:
    return torch.ops.wan_nvfp4.fp8_linear(x, weight.data, weight.scale, bias, path)


_LINEARS = {NVFP4Weight: _nvfp4_linear, FP8Weight: _fp8_linear}


def linear(
    x: torch.Tensor,
    weight,
    bias: torch.Tensor | None = None,
    path: str = AUTO,
    *,
    options: KernelOptions | None = None,
) -> torch.Tensor:
    """`x [..., K] @ W.T + bias` -> `[..., N]` in x's dtype, W an NVFP4Weight, FP8Weight or float tensor.

    path: `auto` (the options' path, else chosen by dispatch) or a forced path name.
    """
    options = options or DEFAULT_OPTIONS
    _check_input(x, weight)
    xc = x.to(_compute_dtype(x, options))
    chosen = resolve_path(xc, weight, path, options)
    if weight_format(weight) == FLOAT:
        y = _float_linear(xc, weight, bias, chosen)
    else:
        y = _LINEARS[type(weight)](xc, weight, bias, chosen)
    return y.to(x.dtype)


def resolve_dequantize_path(weight, dtype: torch.dtype, path: str = AUTO) -> str:
    """The path `dequantize(weight, dtype, path)` would run."""
    req = _request(DEQUANTIZE, weight, dtype, weight.device, None)
    return _resolve(req, path, DEFAULT_OPTIONS, weight, weight.device)


def dequantize(weight, dtype: torch.dtype = torch.bfloat16, path: str = AUTO) -> torch.Tensor:
    """The weight as a `[N, K]` tensor of `dtype` (exact: every path gives the reference's values)."""
    chosen = resolve_dequantize_path(weight, dtype, path)
    if isinstance(weight, NVFP4Weight):
        return torch.ops.wan_nvfp4.nvfp4_dequantize(*custom_ops.nvfp4_fields(weight), dtype, chosen)
    if isinstance(weight, FP8Weight):
        return torch.ops.wan_nvfp4.fp8_dequantize(weight.data, weight.scale, dtype, chosen)
    return weight.to(dtype)
