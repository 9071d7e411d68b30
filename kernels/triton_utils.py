"""Launch-side helpers for the Triton kernels: weight tensors -> kernel arguments, config selection.

Pure torch (no Triton import), so the argument preparation can be unit-tested without Triton.
"""

import contextlib
import functools
from dataclasses import dataclass

import torch

from .capabilities import interpreter_active
from .packing import HIGH_FIRST
from .swizzle import SWIZZLED, TILE_COLS
from .weights import FP8Weight, NVFP4Weight

# Scale modes of the fp8 kernels (constexpr SCALE_MODE).
SCALE_NONE, SCALE_TENSOR, SCALE_ROW = 0, 1, 2
_SCALE_MODES = {"none": SCALE_NONE, "tensor": SCALE_TENSOR, "row": SCALE_ROW}


def _same_device(device: torch.device, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device} (the input's device)")


@dataclass(frozen=True)
class NVFP4Args:
    """An NVFP4Weight as the kernels read it (no copy of the packed bytes)."""

    packed: torch.Tensor  # uint8 [>= N, K/2], any strides
    scale: torch.Tensor  # uint8: linear [N, K/16] any strides, or the flat contiguous swizzled buffer
    global_scale: torch.Tensor  # fp32, 1 element
    n: int
    k: int
    stride_sn: int
    stride_sk: int
    scale_col_tiles: int  # ceil((K/16) / 4), used by the swizzled offsets
    high_first: bool
    swizzled: bool


def nvfp4_args(w: NVFP4Weight, device: torch.device) -> NVFP4Args:
    _same_device(device, packed=w.packed, block_scale=w.block_scale, global_scale=w.global_scale)
    scale = w.block_scale.view(torch.uint8)
    swizzled = w.scale_layout == SWIZZLED
    if swizzled:
        scale = scale.reshape(-1) if scale.is_contiguous() else scale.contiguous().reshape(-1)
        stride_sn = stride_sk = 0
    else:
        scale = scale.reshape(w.out_features, w.scale_cols)
        stride_sn, stride_sk = scale.stride()
    gs = w.global_scale.reshape(1)
    gs = gs if gs.dtype == torch.float32 else gs.float()
    return NVFP4Args(
        packed=w.packed,
        scale=scale,
        global_scale=gs,
        n=w.out_features,
        k=w.in_features,
        stride_sn=stride_sn,
        stride_sk=stride_sk,
        scale_col_tiles=(w.scale_cols + TILE_COLS - 1) // TILE_COLS,
        high_first=w.nibble_order == HIGH_FIRST,
        swizzled=swizzled,
    )


@dataclass(frozen=True)
class FP8Args:
    data: torch.Tensor  # uint8 view of the fp8 weight [N, K]
    scale: torch.Tensor | None  # fp32: 1 element (tensor) or N (row); None for plain fp8
    scale_mode: int
    e5m2: bool
    n: int
    k: int


def fp8_args(w: FP8Weight, device: torch.device) -> FP8Args:
    _same_device(device, data=w.data, scale=w.scale)
    scale = None if w.scale is None else w.scale.reshape(-1)
    if scale is not None and (scale.dtype != torch.float32 or not scale.is_contiguous()):
        scale = scale.float().contiguous()
    n, k = w.shape
    return FP8Args(
        data=w.data.view(torch.uint8),
        scale=scale,
        scale_mode=_SCALE_MODES[w.granularity],
        e5m2=w.data.dtype == torch.float8_e5m2,
        n=n,
        k=k,
    )


def on_device(t: torch.Tensor):
    """Context that makes `t`'s GPU the current one for a Triton launch (no-op on CPU / the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def launcher(kernel, grid, config=None):
    """`kernel[grid]` (autotuned), or with `config` its JIT function pinned to that one config: one compile,
    no benchmarking (the first-use self-check runs this way, see kernels/selfcheck.py)."""
    if config is None:
        return kernel[grid]
    return functools.partial(kernel.fn[grid], **config.all_kwargs())


def pick_configs(gpu_configs: list, interpreter_config) -> list:
    """The autotune list for GPUs, or the single interpreter config (no benchmarking on CPU)."""
    return [interpreter_config] if interpreter_active() else gpu_configs


def m_bucket(m: int, smallest: int = 16, largest: int = 128) -> int:
    """Power of two >= m, clamped to [smallest, largest]: the BLOCK_M the fused kernel tunes for."""
    bucket = smallest
    while bucket < m and bucket < largest:
        bucket *= 2
    return bucket
