"""NVFP4 quantize / dequantize, exact torch reference (any device).

    w[n, k] = E2M1(code[n, k]) * e4m3(block_scale[n, k // 16]) * global_scale

`code * block_scale` is exact in bf16/fp16/fp32; the global scale is applied once, in fp32.
"""

import torch

from .e2m1 import FP4_MAX, e2m1_decode, e2m1_encode
from .packing import HIGH_FIRST, LOW_FIRST, pack_nibbles, swap_nibbles, unpack_nibbles
from .swizzle import LINEAR, SWIZZLED, check_scale_layout, from_blocked, round_up, to_blocked
from .weights import NVFP4_BLOCK, NVFP4Weight, WeightFormatError

E4M3_MAX = 448.0
GLOBAL_SCALE_DIVISOR = FP4_MAX * E4M3_MAX  # 2688: amax / 2688 is the default weight_scale_2
NATIVE_ROW_MULTIPLE = 16  # ComfyUI-native packed weights have rows padded to a multiple of 16


def nvfp4_global_scale(weight: torch.Tensor) -> torch.Tensor:
    """Default `weight_scale_2 = amax(|W|) / (6 * 448)` as an fp32 scalar (1.0 for an all-zero weight)."""
    amax = weight.detach().abs().amax().float()
    return torch.where(amax > 0, amax / GLOBAL_SCALE_DIVISOR, torch.ones_like(amax))


def quantize_nvfp4(
    weight: torch.Tensor,
    global_scale: torch.Tensor | None = None,
    nibble_order: str = HIGH_FIRST,
    scale_layout: str = SWIZZLED,
) -> NVFP4Weight:
    """Quantize a `[N, K]` float weight (K a multiple of 16) to NVFP4 in the requested conventions."""
    if weight.dim() != 2:
        raise WeightFormatError(f"quantize_nvfp4: expected a 2-D weight, found shape {list(weight.shape)}")
    n, k = weight.shape
    if k % NVFP4_BLOCK:
        raise WeightFormatError(f"quantize_nvfp4: in_features must be a multiple of 16, found {k}")
    w = weight.detach().float()
    if not torch.isfinite(w).all():
        raise WeightFormatError("quantize_nvfp4: weight contains NaN or Inf")
    gs = (nvfp4_global_scale(w) if global_scale is None else global_scale.float()).reshape(())
    blocks = w.reshape(n, k // NVFP4_BLOCK, NVFP4_BLOCK)
    block_amax = blocks.abs().amax(dim=-1)
    block_scale = torch.clamp(block_amax / FP4_MAX / gs, max=E4M3_MAX).to(torch.float8_e4m3fn)
    total = block_scale.float() * gs
    safe = torch.where(total == 0, torch.ones_like(total), total)
    scaled = torch.where(total.unsqueeze(-1) == 0, 0.0, blocks / safe.unsqueeze(-1))
    codes = e2m1_encode(scaled.clamp(-FP4_MAX, FP4_MAX).reshape(n, k))
    stored_scale = to_blocked(block_scale) if check_scale_layout(scale_layout) == SWIZZLED else block_scale
    return NVFP4Weight(
        packed=pack_nibbles(codes, nibble_order),
        block_scale=stored_scale,
        global_scale=gs.clone(),
        out_features=n,
        in_features=k,
        nibble_order=nibble_order,
        scale_layout=scale_layout,
    )


def nvfp4_codes(weight: NVFP4Weight) -> torch.Tensor:
    """The E2M1 codes `[N, K]` (uint8 0..15), nibble order undone and row padding dropped."""
    n, k = weight.shape
    return unpack_nibbles(weight.packed[:n, : k // 2], weight.nibble_order)


def nvfp4_block_scales(weight: NVFP4Weight) -> torch.Tensor:
    """The block scales as a row-major float8_e4m3fn `[N, K/16]` matrix, whatever the stored layout."""
    scale = weight.block_scale
    scale = scale.view(torch.float8_e4m3fn) if scale.dtype == torch.uint8 else scale
    n, cols = weight.out_features, weight.scale_cols
    if weight.scale_layout == LINEAR:
        return scale.reshape(n, cols)
    return from_blocked(scale, n, cols)


def dequantize_nvfp4(
    weight: NVFP4Weight, dtype: torch.dtype = torch.float32, scale_first: bool = False
) -> torch.Tensor:
    """Dequantize to `[N, K]` in `dtype`, computing in fp32 and rounding once.

    Default association `(code * block_scale) * global_scale`: the first product is exact, so the result is
    the correctly rounded value (what the kernels compute). `scale_first=True` computes
    `code * (global_scale * block_scale)` like comfy-kitchen, torchao and ModelOpt (bit-identical to them).
    """
    n, k = weight.shape
    values = e2m1_decode(nvfp4_codes(weight)).reshape(n, k // NVFP4_BLOCK, NVFP4_BLOCK)
    block = nvfp4_block_scales(weight).float().unsqueeze(-1)
    gs = weight.global_scale.float().reshape(())
    out = values * (gs * block) if scale_first else (values * block) * gs
    return out.reshape(n, k).to(dtype)


# nibble order -> how packed bytes become high_first (byte-wise, lossless)
_TO_HIGH_FIRST = {HIGH_FIRST: lambda packed: packed.clone(), LOW_FIRST: swap_nibbles}


def is_native_nvfp4(weight: NVFP4Weight, pad_rows_to: int = NATIVE_ROW_MULTIPLE) -> bool:
    """True when the stored tensors already are ComfyUI-native (what `native_nvfp4` would return)."""
    n, k = weight.shape
    return (
        (weight.nibble_order, weight.scale_layout) == (HIGH_FIRST, SWIZZLED)
        and tuple(weight.packed.shape) == (round_up(n, pad_rows_to), k // 2)
        and tuple(weight.block_scale.shape) == weight.expected_scale_shape()
        and weight.global_scale.dtype == torch.float32
    )


def native_nvfp4(weight: NVFP4Weight, pad_rows_to: int = NATIVE_ROW_MULTIPLE) -> NVFP4Weight:
    """The same NVFP4 weight in ComfyUI-native conventions: high_first nibbles (a byte-wise swap for
    low_first), block scales in the swizzled 128x4 layout, packed rows zero padded to `pad_rows_to`.

    Lossless (codes, logical block scales and the global scale are unchanged) and computed on the weight's
    own device; the result never shares memory with the input. `repair` rewrites files with it and the
    loader converts layers with it when ComfyUI's FP4 GEMM runs them.
    """
    n, k = weight.shape
    packed = _TO_HIGH_FIRST[weight.nibble_order](weight.packed[:n, : k // 2])
    rows = round_up(n, pad_rows_to)
    if rows != n:
        packed = torch.cat([packed, packed.new_zeros(rows - n, k // 2)])
    return NVFP4Weight(
        packed=packed.contiguous(),
        block_scale=to_blocked(nvfp4_block_scales(weight)),
        global_scale=weight.global_scale.float().reshape(()).clone(),
        out_features=n,
        in_features=k,
        nibble_order=HIGH_FIRST,
        scale_layout=SWIZZLED,
    ).validate()
