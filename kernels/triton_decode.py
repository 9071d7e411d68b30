"""Triton device functions shared by the kernels: bit-exact E2M1 / E4M3 / E5M2 decoding and NVFP4 tile loads.

Decoding uses integer bit moves into an fp16 pattern (fp16 subnormals are exact in hardware, and no fp8
conversion instruction is needed, so the same code runs on sm_75..sm_120 and in the interpreter):

    E2M1 code `s e1 e0 m`  -> fp16 bits `s 000 e1 e0 m 000000000` = value * 2^-14
    E4M3 byte `s eeee mmm` -> fp16 bits `s 0 eeee mmm 0000000`    = value * 2^-8   (0x7F/0xFF -> NaN)
    E5M2 byte              -> fp16 bits `byte << 8`                = value           (E5M2 is truncated fp16)

Import this module only when a Triton path runs (Triton is optional).
"""

import triton
import triton.language as tl

E2M1_FIX = tl.constexpr(16384.0)  # 2^14: fp16 pattern of an E2M1 code -> its value
E4M3_FIX = tl.constexpr(256.0)  # 2^8: fp16 pattern of an E4M3 byte -> its value


@triton.jit
def e2m1_fp16_pattern(code):
    """E2M1 codes (uint8 0..15) -> fp32 values divided by 2^14, exactly."""
    c = code.to(tl.uint16)
    bits = ((c & 8) << 12) | ((c & 7) << 9)
    return bits.to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def e4m3_to_f32(byte):
    """float8_e4m3fn bytes (uint8) -> exact fp32 values (NaN for the NaN encodings)."""
    b = byte.to(tl.uint16)
    bits = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
    value = bits.to(tl.float16, bitcast=True).to(tl.float32) * E4M3_FIX
    return tl.where((b & 0x7F) == 0x7F, float("nan"), value)


@triton.jit
def e5m2_to_f32(byte):
    """float8_e5m2 bytes (uint8) -> exact fp32 values (Inf/NaN kept)."""
    return (byte.to(tl.uint16) << 8).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def fp8_to_f32(byte, E5M2: tl.constexpr):
    if E5M2:
        return e5m2_to_f32(byte)
    else:
        return e4m3_to_f32(byte)


@triton.jit
def nvfp4_scale_offsets(rn, rc, stride_sn, stride_sk, scale_col_tiles, SWIZZLED: tl.constexpr):
    """Offsets of block scales (rows rn, scale columns rc) in a linear or cuBLAS 128x4-swizzled buffer."""
    r = rn[:, None]
    c = rc[None, :]
    if SWIZZLED:
        return ((r // 128 * scale_col_tiles + c // 4) * 32 + r % 32) * 16 + (r % 128) // 32 * 4 + c % 4
    else:
        return r.to(tl.int64) * stride_sn + c * stride_sk


@triton.jit
def nvfp4_tile(
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
    HIGH_FIRST: tl.constexpr,
    SWIZZLED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """fp32 `[BLOCK_N, BLOCK_K]` tile of `code * block_scale` (exact) for rows `rn`, inputs `k0..k0+BLOCK_K`.

    Masked-out rows and inputs (n >= N, k >= K) come back as 0. K is a multiple of 16, BLOCK_K of 32.
    """
    row_ok = rn < N
    rj = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(
        packed_ptr + rn.to(tl.int64)[:, None] * stride_pn + rj[None, :] * stride_pk,
        mask=row_ok[:, None] & (rj[None, :] < K // 2),
        other=0,
    )
    low = packed & 0xF
    high = packed >> 4
    codes = tl.interleave(high, low) if HIGH_FIRST else tl.interleave(low, high)
    values = e2m1_fp16_pattern(codes)

    rc = k0 // 16 + tl.arange(0, BLOCK_K // 16)
    scale_bytes = tl.load(
        scale_ptr + nvfp4_scale_offsets(rn, rc, stride_sn, stride_sk, scale_col_tiles, SWIZZLED),
        mask=row_ok[:, None] & (rc[None, :] < K // 16),
        other=0,
    )
    scales = e4m3_to_f32(scale_bytes) * E2M1_FIX
    blocks = tl.reshape(values, [BLOCK_N, BLOCK_K // 16, 16]) * scales[:, :, None]
    return tl.reshape(blocks, [BLOCK_N, BLOCK_K])


@triton.jit
def fp8_tile(data_ptr, rn, k0, N, K, stride_dn, stride_dk, E5M2: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 `[len(rn), BLOCK_K]` tile of exact fp8 values, rows `rn`, inputs `k0..k0+BLOCK_K` (0 masked)."""
    rk = k0 + tl.arange(0, BLOCK_K)
    data = tl.load(
        data_ptr + rn.to(tl.int64)[:, None] * stride_dn + rk[None, :] * stride_dk,
        mask=(rn < N)[:, None] & (rk < K)[None, :],
        other=0,
    )
    return fp8_to_f32(data, E5M2)
