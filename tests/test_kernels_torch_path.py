"""The `torch` path's fast dequantize (byte-pair table for NVFP4, in-place scaling for FP8) gives bit for bit
the values of the reference formula it replaced (`kernels.dequantize_nvfp4` / `dequantize_fp8`: fp32 maths,
rounded once), and so does its linear.

Raw random bytes, not quantized weights, so every nibble pair and every block-scale byte (subnormal, huge,
negative) is exercised; odd shapes, junk padding rows, both nibble orders, both scale layouts, block scales
stored as e4m3 or as their uint8 bytes, per-tensor / per-row / no FP8 scale, e4m3 and e5m2, the three compute
dtypes, and chunk boundaries inside and at the end of a weight. Bits are compared (so -0.0 vs 0.0 counts).
"""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from wan_nvfp4 import kernels as K
from wan_nvfp4.kernels import ops, torch_paths

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
ODD_SHAPES = ((1, 16), (37, 48), (129, 80), (200, 272))
CONVENTIONS = [(o, s) for o in K.NIBBLE_ORDERS for s in K.SCALE_LAYOUTS]
E4M3_NAN_BYTES = (0x7F, 0xFF)
INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def _id(value) -> str:
    return str(value).replace("torch.", "").replace("float8_", "")


def _bytes(shape, g: torch.Generator, exclude=()) -> torch.Tensor:
    b = torch.randint(0, 256, shape, generator=g, dtype=torch.int32)
    for bad in exclude:  # NaN encodings, replaced by a neighbour
        b[b == bad] = bad - 1
    return b.to(torch.uint8)


def raw_nvfp4(n, k, order, layout, seed, pad_rows=0, gs=0.1) -> K.NVFP4Weight:
    """Random packed bytes and random (non-NaN) e4m3 block-scale bytes in the given conventions."""
    g = torch.Generator().manual_seed(seed)
    packed = _bytes((n + pad_rows, k // 2), g)
    scales = _bytes((n, k // 16), g, exclude=E4M3_NAN_BYTES).view(torch.float8_e4m3fn)
    if layout == K.SWIZZLED:
        scales = K.to_blocked(scales)
    w = K.NVFP4Weight(packed, scales, torch.tensor(gs), n, k, order, layout)
    return w.validate()


def raw_fp8(n, k, granularity, fp8_dtype, seed) -> K.FP8Weight:
    g = torch.Generator().manual_seed(seed)
    nan = (0x7F, 0xFF) if fp8_dtype == torch.float8_e4m3fn else (0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF)
    data = _bytes((n, k), g, exclude=nan).view(fp8_dtype)
    scales = {
        "none": None,
        "tensor": torch.tensor(0.0371),
        "tensor[1]": torch.tensor([3.7e-3]),
        "row": torch.rand(n, generator=g) * 0.05 + 1e-4,
        "row[N,1]": torch.rand(n, 1, generator=g) * 0.05 + 1e-4,
    }
    return K.FP8Weight(data, scales[granularity]).validate()


def assert_same_bits(out: torch.Tensor, want: torch.Tensor) -> None:
    assert out.dtype == want.dtype and out.shape == want.shape, (out.dtype, want.dtype, out.shape, want.shape)
    view = INT_VIEW[out.dtype]
    diff = out.view(view) != want.view(view)
    assert not diff.any(), f"{int(diff.sum())} of {out.numel()} values differ in their bits"


@pytest.fixture(params=[None, 3 * 272, 1], ids=["one-chunk", "chunks", "row-per-chunk"])
def chunking(request, monkeypatch):
    """Whole weight at once, several chunks with a partial last one, and one row per chunk."""
    if request.param is not None:
        monkeypatch.setattr(torch_paths, "CHUNK_WEIGHTS", request.param)
    return request.param


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("conv", CONVENTIONS, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_nvfp4_torch_dequantize_is_the_reference_formula_bit_for_bit(shape, conv, dtype, chunking):
    w = raw_nvfp4(*shape, *conv, seed=shape[0] + shape[1], pad_rows=3)
    assert_same_bits(torch_paths.dequantize(w, dtype), K.dequantize_nvfp4(w, dtype))


@pytest.mark.parametrize("conv", CONVENTIONS, ids=_id)
@pytest.mark.parametrize("gs", [1.0, 0.1, 7.5e-5, 3.1e3], ids=str)
def test_nvfp4_every_byte_pair_and_global_scale(conv, gs):
    """All 65536 (scale byte, packed byte) pairs once each, block scales as uint8 bytes; several global
    scales, including ones that overflow fp16 and reach bf16 / fp16 subnormals."""
    pairs = torch.arange(256 * 256, dtype=torch.int32)
    packed = (pairs % 256).to(torch.uint8).reshape(256, 256).repeat_interleave(8, dim=1)  # K = 4096
    scale = (pairs // 256).to(torch.uint8).reshape(256, 256)
    scale[(scale == 0x7F) | (scale == 0xFF)] = 0x7E
    n, k = 256, 256 * 16
    stored = (
        K.to_blocked(scale.view(torch.float8_e4m3fn)).view(torch.uint8) if conv[1] == K.SWIZZLED else scale
    )
    w = K.NVFP4Weight(packed, stored, torch.tensor(gs), n, k, *conv).validate()
    for dtype in DTYPES:
        assert_same_bits(torch_paths.dequantize(w, dtype), K.dequantize_nvfp4(w, dtype))


def test_nvfp4_nan_block_scales_give_nan_where_the_reference_does():
    w = raw_nvfp4(40, 64, K.HIGH_FIRST, K.LINEAR, seed=5)
    scale = w.block_scale.view(torch.uint8).clone()
    scale[3, 1] = 0x7F
    scale[17, 3] = 0xFF
    w = replace(w, block_scale=scale)
    for dtype in DTYPES:
        out, want = torch_paths.dequantize(w, dtype), K.dequantize_nvfp4(w, dtype)
        assert torch.equal(out.isnan(), want.isnan()) and out.isnan().sum() == 32
        assert_same_bits(out.nan_to_num(0.0), want.nan_to_num(0.0))


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("granularity", ["none", "tensor", "tensor[1]", "row", "row[N,1]"])
@pytest.mark.parametrize("fp8_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_fp8_torch_dequantize_is_the_reference_formula_bit_for_bit(
    shape, granularity, fp8_dtype, dtype, chunking
):
    w = raw_fp8(*shape, granularity, fp8_dtype, seed=shape[0] * shape[1])
    assert_same_bits(torch_paths.dequantize(w, dtype), K.dequantize_fp8(w, dtype))


def test_fp8_dequantize_leaves_the_stored_weight_alone():
    w = raw_fp8(37, 48, "row", torch.float8_e4m3fn, seed=1)
    before = w.data.view(torch.uint8).clone(), w.scale.clone()
    torch_paths.dequantize(w, torch.float32)
    torch_paths.dequantize(w, torch.bfloat16)
    assert torch.equal(w.data.view(torch.uint8), before[0]) and torch.equal(w.scale, before[1])


WEIGHTS = {
    "nvfp4-comfy": lambda: raw_nvfp4(129, 80, K.HIGH_FIRST, K.SWIZZLED, seed=11, pad_rows=15),
    "nvfp4-modelopt": lambda: raw_nvfp4(37, 48, K.LOW_FIRST, K.LINEAR, seed=12, gs=1.7e-4),
    "fp8-tensor": lambda: raw_fp8(129, 80, "tensor", torch.float8_e4m3fn, seed=13),
    "fp8-row": lambda: raw_fp8(37, 48, "row", torch.float8_e5m2, seed=14),
}
REFERENCES = {K.NVFP4Weight: K.dequantize_nvfp4, K.FP8Weight: K.dequantize_fp8}


@pytest.mark.parametrize("kind", WEIGHTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
def test_torch_path_linear_is_f_linear_of_the_reference_weight(kind, dtype, chunking):
    w = WEIGHTS[kind]()
    n, k = w.shape
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 5, k, generator=g) * 0.01).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    want = F.linear(x, REFERENCES[type(w)](w, dtype), bias)
    assert_same_bits(ops.linear(x, w, bias, path="torch"), want)


def test_the_bit_comparison_catches_a_different_association():
    """Negative control: comfy-kitchen's association `code * (global * block)` differs in some bits from the
    reference's `(code * block) * global`, and a swapped nibble order differs too; the checks above see it."""
    w = raw_nvfp4(64, 256, K.HIGH_FIRST, K.SWIZZLED, seed=21)
    ours = torch_paths.dequantize(w, torch.float32)
    with pytest.raises(AssertionError):
        assert_same_bits(ours, K.dequantize_nvfp4(w, torch.float32, scale_first=True))
    with pytest.raises(AssertionError):
        assert_same_bits(ours, K.dequantize_nvfp4(replace(w, nibble_order=K.LOW_FIRST), torch.float32))
