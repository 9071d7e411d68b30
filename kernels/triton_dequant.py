"""Triton dequantization of NVFP4 and scaled-FP8 weights to bf16 / fp16 / fp32, at memory bandwidth.

Exact: `code * block_scale` (and fp8 values) are exact in fp32; the global / per-tensor / per-row scale
is applied once in fp32 and the result rounded once, so the output equals `kernels.dequantize(w, dtype)`
bit for bit on a GPU (the interpreter truncates fp32 -> bf16 instead of rounding: 1 bf16 ulp).
Both nibble orders and both scale layouts are read as stored (constexpr switches), padded rows ignored.
"""

import torch
import triton
import triton.language as tl

from . import triton_utils
from .triton_decode import fp8_tile, nvfp4_tile
from .triton_utils import fp8_args, launcher, nvfp4_args, on_device, pick_configs
from .weights import FP8Weight, NVFP4Weight

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_TENSOR = tl.constexpr(triton_utils.SCALE_TENSOR)
SCALE_ROW = tl.constexpr(triton_utils.SCALE_ROW)

# Bandwidth kernel, no K loop: each program writes one [BLOCK_N, BLOCK_K] tile, 32-64 weights per thread
# (32-64 registers on sm_90 per ptxas: high occupancy to hide memory latency). Timings to be measured.
GPU_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=1)
    for bn, bk, w in ((32, 256, 8), (16, 512, 8), (64, 128, 8), (32, 128, 4), (64, 256, 8), (16, 256, 4))
]
_INTERPRETER_CONFIG = triton.Config({"BLOCK_N": 32, "BLOCK_K": 64}, num_warps=1, num_stages=1)
CONFIGS = pick_configs(GPU_CONFIGS, _INTERPRETER_CONFIG)
CHECK_CONFIG = CONFIGS[0]  # the one config the first-use self-check compiles (kernels/selfcheck.py)


@triton.autotune(configs=CONFIGS, key=["N", "K", "HIGH_FIRST", "SWIZZLED"])
@triton.jit
def _nvfp4_dequant_kernel(
    packed_ptr,
    scale_ptr,
    global_scale_ptr,
    out_ptr,
    N,
    K,
    stride_pn,
    stride_pk,
    stride_sn,
    stride_sk,
    scale_col_tiles,
    stride_on,
    HIGH_FIRST: tl.constexpr,
    SWIZZLED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    w = nvfp4_tile(
        packed_ptr,
        scale_ptr,
        rn,
        k0,
        N,
        K,
        stride_pn,
        stride_pk,
        stride_sn,
        stride_sk,
        scale_col_tiles,
        HIGH_FIRST,
        SWIZZLED,
        BLOCK_N,
        BLOCK_K,
    )
    w = w * tl.load(global_scale_ptr)
    rk = k0 + tl.arange(0, BLOCK_K)
    mask = (rn < N)[:, None] & (rk < K)[None, :]
    offsets = rn.to(tl.int64)[:, None] * stride_on + rk[None, :]
    tl.store(out_ptr + offsets, w.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=CONFIGS, key=["N", "K", "SCALE_MODE", "E5M2"])
@triton.jit
def _fp8_dequant_kernel(
    data_ptr,
    scale_ptr,
    out_ptr,
    N,
    K,
    stride_dn,
    stride_dk,
    stride_on,
    SCALE_MODE: tl.constexpr,
    E5M2: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    w = fp8_tile(data_ptr, rn, k0, N, K, stride_dn, stride_dk, E5M2, BLOCK_K)
    if SCALE_MODE == SCALE_TENSOR:
        w = w * tl.load(scale_ptr)
    elif SCALE_MODE == SCALE_ROW:
        w = w * tl.load(scale_ptr + rn, mask=rn < N, other=0.0)[:, None]
    rk = k0 + tl.arange(0, BLOCK_K)
    mask = (rn < N)[:, None] & (rk < K)[None, :]
    offsets = rn.to(tl.int64)[:, None] * stride_on + rk[None, :]
    tl.store(out_ptr + offsets, w.to(out_ptr.dtype.element_ty), mask=mask)


def _grid(n: int, k: int):
    return lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(k, meta["BLOCK_K"]))


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in OUT_DTYPES:
        raise ValueError(f"Triton dequant output dtype must be one of {OUT_DTYPES}, got {dtype}")


def dequantize_nvfp4(w: NVFP4Weight, dtype: torch.dtype, config=None) -> torch.Tensor:
    """`[N, K]` in `dtype` on the weight's device (exact, see the module docstring); `config` pins one
    tile config instead of autotuning."""
    _check_dtype(dtype)
    a = nvfp4_args(w, w.device)
    out = torch.empty((a.n, a.k), dtype=dtype, device=w.device)
    if out.numel() == 0:
        return out
    with on_device(out):
        launcher(_nvfp4_dequant_kernel, _grid(a.n, a.k), config)(
            a.packed,
            a.scale,
            a.global_scale,
            out,
            a.n,
            a.k,
            a.packed.stride(0),
            a.packed.stride(1),
            a.stride_sn,
            a.stride_sk,
            a.scale_col_tiles,
            out.stride(0),
            HIGH_FIRST=a.high_first,
            SWIZZLED=a.swizzled,
        )
    return out


def dequantize_fp8(w: FP8Weight, dtype: torch.dtype, config=None) -> torch.Tensor:
    """`[N, K]` fp8 values times their per-tensor / per-row scale (fp32, rounded once) in `dtype`."""
    _check_dtype(dtype)
    a = fp8_args(w, w.device)
    out = torch.empty((a.n, a.k), dtype=dtype, device=w.device)
    if out.numel() == 0:
        return out
    with on_device(out):
        launcher(_fp8_dequant_kernel, _grid(a.n, a.k), config)(
            a.data,
            a.scale if a.scale is not None else out,  # unused pointer when SCALE_MODE is none
            out,
            a.n,
            a.k,
            a.data.stride(0),
            a.data.stride(1),
            out.stride(0),
            SCALE_MODE=a.scale_mode,
            E5M2=a.e5m2,
        )
    return out


DEQUANTIZERS = {NVFP4Weight: dequantize_nvfp4, FP8Weight: dequantize_fp8}


def dequantize(weight, dtype: torch.dtype, config=None) -> torch.Tensor:
    return DEQUANTIZERS[type(weight)](weight, dtype, config)
