"""Quantized-weight codecs, the exact torch reference and (optional) Triton kernels. torch/triton only.

The linear / dequantize entry points and their custom ops live in `kernels.ops` (import it explicitly);
importing `kernels` never imports Triton.
"""

from .dispatch import FUSED_MAX_M, PATHS, PathUnavailableError
from .e2m1 import E2M1_VALUES, FP4_MAX, e2m1_decode, e2m1_encode
from .fp8 import dequantize_fp8, quantize_fp8
from .nvfp4 import (
    E4M3_MAX,
    dequantize_nvfp4,
    native_nvfp4,
    nvfp4_block_scales,
    nvfp4_codes,
    nvfp4_global_scale,
    quantize_nvfp4,
)
from .options import KernelOptions, PathLog
from .packing import HIGH_FIRST, LOW_FIRST, NIBBLE_ORDERS, pack_nibbles, swap_nibbles, unpack_nibbles
from .reference import dequantize, linear_reference
from .swizzle import LINEAR, SCALE_LAYOUTS, SWIZZLED, from_blocked, swizzle_offset, swizzled_shape, to_blocked
from .weights import NVFP4_BLOCK, FP8Weight, NVFP4Weight, WeightFormatError

__all__ = [
    "E2M1_VALUES",
    "E4M3_MAX",
    "FP4_MAX",
    "FUSED_MAX_M",
    "HIGH_FIRST",
    "LINEAR",
    "LOW_FIRST",
    "NIBBLE_ORDERS",
    "NVFP4_BLOCK",
    "PATHS",
    "SCALE_LAYOUTS",
    "SWIZZLED",
    "FP8Weight",
    "KernelOptions",
    "NVFP4Weight",
    "PathLog",
    "PathUnavailableError",
    "WeightFormatError",
    "dequantize",
    "dequantize_fp8",
    "dequantize_nvfp4",
    "e2m1_decode",
    "e2m1_encode",
    "from_blocked",
    "linear_reference",
    "native_nvfp4",
    "nvfp4_block_scales",
    "nvfp4_codes",
    "nvfp4_global_scale",
    "pack_nibbles",
    "quantize_fp8",
    "quantize_nvfp4",
    "swap_nibbles",
    "swizzle_offset",
    "swizzled_shape",
    "to_blocked",
    "unpack_nibbles",
]
