"""Fused Triton dequant-matmul `y = x @ W.T (* scale) + bias` for NVFP4 and FP8 weights, small M.

The weight tile is unpacked in registers (`code * block_scale`, or the fp8 values: exact in bf16/fp16),
multiplied with bf16/fp16 activations on tensor cores with fp32 accumulation; the global / per-tensor /
per-row scale and the bias are applied in an fp32 epilogue. Masked for any M and N; K a multiple of 16
(NVFP4) or anything (FP8). Under the interpreter the dot operands are fp32 (its bf16 dot is broken).
Worth it only while the GEMM is weight-read-bound (M below ~50-90, see dispatch.FUSED_MAX_M).
"""

import torch
import triton
import triton.language as tl

from . import triton_utils
from .capabilities import interpreter_active
from .triton_decode import fp8_tile, nvfp4_tile
from .triton_utils import fp8_args, launcher, m_bucket, nvfp4_args, on_device, pick_configs
from .weights import FP8Weight, NVFP4Weight

SCALE_TENSOR = tl.constexpr(triton_utils.SCALE_TENSOR)
SCALE_ROW = tl.constexpr(triton_utils.SCALE_ROW)
X_DTYPES = (torch.bfloat16, torch.float16)

# (BLOCK_N, BLOCK_K, warps, stages) per BLOCK_M bucket (the power of two >= M, 16..128). Small M is
# weight-read-bound: narrow N tiles give enough programs to fill 132 SMs (H100/H200) at N = 3072..5120, and
# 3-4 stages keep weight loads in flight. Chosen from ptxas resource usage for sm_90 (no spills, <= ~160
# registers, <= 160 KB shared memory; tests/test_kernels_ptx.py keeps it so); configs that do not fit a
# smaller GPU's shared memory are skipped there by the autotuner. Timings still to be measured on a GPU.
_TILES = {
    16: (
        (32, 128, 4, 4),
        (64, 128, 8, 4),
        (32, 256, 8, 3),
        (64, 64, 4, 4),
        (128, 64, 8, 4),
        (128, 128, 8, 3),
    ),
    32: ((32, 128, 8, 4), (64, 64, 8, 4), (64, 128, 8, 4), (128, 64, 8, 4), (32, 64, 8, 4), (32, 256, 8, 3)),
    64: ((64, 64, 8, 4), (64, 128, 8, 3), (128, 64, 8, 4), (32, 128, 8, 3), (128, 128, 8, 3), (32, 64, 4, 4)),
    128: (
        (128, 64, 8, 4),
        (64, 64, 8, 4),
        (128, 128, 8, 3),
        (64, 128, 8, 3),
        (32, 64, 8, 4),
        (128, 64, 8, 3),
    ),
}
GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for bm, tiles in _TILES.items()
    for bn, bk, w, s in tiles
]
_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 4}, num_warps=1)
CONFIGS = pick_configs(GPU_CONFIGS, _INTERPRETER_CONFIG)


def check_config(m: int):
    """The one config the first-use self-check compiles for `m` rows: the first of its M bucket."""
    bucket = m_bucket(m)
    return next((c for c in CONFIGS if c.kwargs["BLOCK_M"] == bucket), CONFIGS[0])


def _prune_by_m_bucket(configs, named_args, **kwargs):
    """Tune only the configs whose BLOCK_M matches this call's M bucket."""
    bucket = named_args["M_BUCKET"]
    kept = [c for c in configs if c.kwargs["BLOCK_M"] == bucket]
    return kept or configs


_PRUNE = {"early_config_prune": _prune_by_m_bucket}


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped program order (L2 reuse of weight tiles across M tiles), as in Triton's matmul tutorial."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_size = GROUP_M * num_pid_n
    first_m = pid // group_size * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_size) % group_m
    pid_n = (pid % group_size) // group_m
    return pid_m, pid_n


@triton.jit
def _x_tile(x_ptr, rm, k0, M, K, stride_xm, stride_xk, BLOCK_K: tl.constexpr):
    rk = k0 + tl.arange(0, BLOCK_K)
    return tl.load(
        x_ptr + rm.to(tl.int64)[:, None] * stride_xm + rk[None, :] * stride_xk,
        mask=(rm < M)[:, None] & (rk < K)[None, :],
        other=0.0,
    )


@triton.jit
def _dot(x, w, acc, DOT_FP32: tl.constexpr):
    """acc += x @ w.T, w (exact fp32 values) cast to x's dtype; all fp32 under the interpreter."""
    if DOT_FP32:
        return tl.dot(x.to(tl.float32), tl.trans(w), acc)
    else:
        return tl.dot(x, tl.trans(w.to(x.dtype)), acc)


@triton.jit
def _store(acc, bias_ptr, out_ptr, rm, rn, M, N, stride_om, stride_on, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    offsets = rm.to(tl.int64)[:, None] * stride_om + rn[None, :] * stride_on
    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(
    configs=CONFIGS, key=["M_BUCKET", "N", "K", "HIGH_FIRST", "SWIZZLED", "HAS_BIAS"], prune_configs_by=_PRUNE
)
@triton.jit
def _nvfp4_fused_kernel(
    x_ptr,
    packed_ptr,
    scale_ptr,
    global_scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_pn,
    stride_pk,
    stride_sn,
    stride_sk,
    scale_col_tiles,
    stride_om,
    stride_on,
    M_BUCKET,
    HIGH_FIRST: tl.constexpr,
    SWIZZLED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = _x_tile(x_ptr, rm, k0, M, K, stride_xm, stride_xk, BLOCK_K)
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
        acc = _dot(x, w, acc, DOT_FP32)
    acc = acc * tl.load(global_scale_ptr)
    _store(acc, bias_ptr, out_ptr, rm, rn, M, N, stride_om, stride_on, HAS_BIAS)


@triton.autotune(
    configs=CONFIGS, key=["M_BUCKET", "N", "K", "SCALE_MODE", "E5M2", "HAS_BIAS"], prune_configs_by=_PRUNE
)
@triton.jit
def _fp8_fused_kernel(
    x_ptr,
    data_ptr,
    scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_dn,
    stride_dk,
    stride_om,
    stride_on,
    M_BUCKET,
    SCALE_MODE: tl.constexpr,
    E5M2: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = _x_tile(x_ptr, rm, k0, M, K, stride_xm, stride_xk, BLOCK_K)
        w = fp8_tile(data_ptr, rn, k0, N, K, stride_dn, stride_dk, E5M2, BLOCK_K)
        acc = _dot(x, w, acc, DOT_FP32)
    if SCALE_MODE == SCALE_TENSOR:
        acc = acc * tl.load(scale_ptr)
    elif SCALE_MODE == SCALE_ROW:
        acc = acc * tl.load(scale_ptr + rn, mask=rn < N, other=0.0)[None, :]
    _store(acc, bias_ptr, out_ptr, rm, rn, M, N, stride_om, stride_on, HAS_BIAS)


def _grid(m: int, n: int):
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


def _prepare(x: torch.Tensor, n: int, k: int, bias: torch.Tensor | None):
    if x.dtype not in X_DTYPES:
        raise ValueError(f"fused kernel activations must be one of {X_DTYPES}, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"fused kernel input: expected [M, {k}], found {list(x.shape)}")
    if bias is not None and (bias.numel() != n or bias.device != x.device):
        found = f"{list(bias.shape)} on {bias.device}"
        raise ValueError(f"bias: expected {n} elements on {x.device}, found {found}")
    out = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
    bias_arg = bias.reshape(-1).contiguous() if bias is not None else out  # unused if HAS_BIAS is false
    return out, bias_arg


def nvfp4_linear(
    x: torch.Tensor, w: NVFP4Weight, bias: torch.Tensor | None = None, config=None
) -> torch.Tensor:
    """`x [M, K] @ dequant(w).T + bias` -> `[M, N]` in x's dtype, in one kernel (`config`: pin one config)."""
    a = nvfp4_args(w, x.device)
    out, bias_arg = _prepare(x, a.n, a.k, bias)
    if out.numel() == 0:
        return out
    m = x.shape[0]
    with on_device(out):
        launcher(_nvfp4_fused_kernel, _grid(m, a.n), config)(
            x,
            a.packed,
            a.scale,
            a.global_scale,
            bias_arg,
            out,
            m,
            a.n,
            a.k,
            x.stride(0),
            x.stride(1),
            a.packed.stride(0),
            a.packed.stride(1),
            a.stride_sn,
            a.stride_sk,
            a.scale_col_tiles,
            out.stride(0),
            out.stride(1),
            m_bucket(m),
            HIGH_FIRST=a.high_first,
            SWIZZLED=a.swizzled,
            HAS_BIAS=bias is not None,
            DOT_FP32=interpreter_active(),
        )
    return out


def fp8_linear(x: torch.Tensor, w: FP8Weight, bias: torch.Tensor | None = None, config=None) -> torch.Tensor:
    """`x [M, K] @ (fp8 values * scale).T + bias` -> `[M, N]` in x's dtype, in one kernel."""
    a = fp8_args(w, x.device)
    out, bias_arg = _prepare(x, a.n, a.k, bias)
    if out.numel() == 0:
        return out
    m = x.shape[0]
    with on_device(out):
        launcher(_fp8_fused_kernel, _grid(m, a.n), config)(
            x,
            a.data,
            a.scale if a.scale is not None else out,  # unused pointer when SCALE_MODE is none
            bias_arg,
            out,
            m,
            a.n,
            a.k,
            x.stride(0),
            x.stride(1),
            a.data.stride(0),
            a.data.stride(1),
            out.stride(0),
            out.stride(1),
            m_bucket(m),
            SCALE_MODE=a.scale_mode,
            E5M2=a.e5m2,
            HAS_BIAS=bias is not None,
            DOT_FP32=interpreter_active(),
        )
    return out


LINEARS = {NVFP4Weight: nvfp4_linear, FP8Weight: fp8_linear}


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None, config=None) -> torch.Tensor:
    return LINEARS[type(weight)](x, weight, bias, config)
