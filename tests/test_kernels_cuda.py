"""The interpreter test cases again, compiled for a real NVIDIA GPU, plus real WAN shapes, dispatch, the FP8
fast path and torch.compile with the Triton paths. Skipped on machines without CUDA (or when
TRITON_INTERPRET is set, so these never run interpreted). On a GPU the dequant must be bit-exact."""

from dataclasses import replace

import pytest
import torch

from wan_nvfp4 import kernels as K
from wan_nvfp4.kernels import capabilities, ops, selfcheck
from wan_nvfp4.kernels.dispatch import FUSED_MAX_M, NVFP4
from wan_nvfp4.kernels.options import KernelOptions
from wan_nvfp4.tests import kernel_cases as C

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(capabilities.interpreter_active(), reason="TRITON_INTERPRET is set: not on the GPU"),
]

# WAN Linear shapes (N, K) at full size: 14B and 5B attention and FFN.
WAN_FULL = [(5120, 5120), (13824, 5120), (5120, 13824), (3072, 3072), (14336, 3072), (3072, 14336)]
DEV = "cuda"


def _id(value) -> str:
    return str(value).replace("torch.", "").replace("float8_", "")


def _triton_dequant():
    from wan_nvfp4.kernels import triton_dequant

    return triton_dequant


def _triton_fused():
    from wan_nvfp4.kernels import triton_fused

    return triton_fused


@pytest.mark.parametrize(("shape", "conv", "dtype"), C.NVFP4_DEQUANT_CASES, ids=_id)
def test_nvfp4_dequant_bit_exact(shape, conv, dtype):
    w = C.make_nvfp4(*shape, *conv, seed=shape[0] + shape[1]).to(DEV)
    out = _triton_dequant().dequantize(w, dtype)
    C.assert_rounded_from(out.cpu(), K.dequantize_nvfp4(w, torch.float32).cpu(), allow_ulp=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=_id)
@pytest.mark.parametrize("conv", C.CONVENTIONS, ids=_id)
def test_nvfp4_dequant_every_code_and_scale_byte_bit_exact(conv, dtype):
    """fp16 subnormals in the bit-move decode (E2M1 +-0.5, e4m3 subnormal scales) must survive on the GPU."""
    w = C.exhaustive_nvfp4(*conv)
    out = _triton_dequant().dequantize(w.to(DEV), dtype)
    C.assert_rounded_from(out.cpu(), K.dequantize_nvfp4(w, torch.float32), allow_ulp=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=_id)
@pytest.mark.parametrize("granularity", ["none", "tensor", "row"])
@pytest.mark.parametrize("fp8_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=_id)
def test_fp8_dequant_every_byte_bit_exact(fp8_dtype, granularity, dtype):
    f = C.exhaustive_fp8(fp8_dtype, granularity)
    out = _triton_dequant().dequantize(f.to(DEV), dtype)
    C.assert_rounded_from(out.cpu(), K.dequantize_fp8(f, torch.float32), allow_ulp=False)


@pytest.mark.parametrize("shape", WAN_FULL, ids=_id)
@pytest.mark.parametrize("conv", C.CONVENTIONS, ids=_id)
def test_nvfp4_dequant_bit_exact_wan_shapes(shape, conv):
    w = C.make_nvfp4(*shape, *conv, seed=1).to(DEV)
    out = _triton_dequant().dequantize(w, torch.bfloat16)
    assert torch.equal(out, K.dequantize_nvfp4(w, torch.bfloat16))


def test_nvfp4_dequant_padded_rows_strides_and_nan():
    w = C.make_nvfp4(200, 96, "low_first", "linear", seed=3, pad_rows=24)
    scale = w.block_scale.view(torch.uint8).clone()
    scale[199, 5] = 0xFF  # e4m3fn NaN (negative)
    w = replace(w, block_scale=scale).to(DEV)
    wide = torch.zeros((224, 96), dtype=torch.uint8, device=DEV)
    wide[:, 7 : 7 + 48] = w.packed
    strided = replace(w, packed=wide[:, 7 : 7 + 48])
    out = _triton_dequant().dequantize(strided, torch.float32)
    C.assert_rounded_from(out.cpu(), K.dequantize_nvfp4(w, torch.float32).cpu(), allow_ulp=False)


@pytest.mark.parametrize(("shape", "kind", "dtype"), C.FP8_DEQUANT_CASES, ids=_id)
def test_fp8_dequant_bit_exact(shape, kind, dtype):
    w = C.make_fp8(*shape, *kind, seed=shape[0]).to(DEV)
    out = _triton_dequant().dequantize(w, dtype)
    C.assert_rounded_from(out.cpu(), K.dequantize_fp8(w, torch.float32).cpu(), allow_ulp=False)


@pytest.mark.parametrize(("m", "shape", "conv", "dtype", "with_bias"), C.FUSED_NVFP4_CASES, ids=_id)
def test_fused_nvfp4(m, shape, conv, dtype, with_bias):
    n, k = shape
    w = C.make_nvfp4(n, k, *conv, seed=n)
    x = C.make_x(m, k, dtype, seed=m)
    bias = torch.randn(n, generator=C.seeded(9)).to(dtype) if with_bias else None
    out = _triton_fused().linear(x.to(DEV), w.to(DEV), None if bias is None else bias.to(DEV))
    C.assert_linear_close(out.cpu(), x, w, bias)


@pytest.mark.parametrize("m", [1, 16, 52, 128])
@pytest.mark.parametrize("shape", [(5120, 5120), (3072, 14336)], ids=_id)
def test_fused_nvfp4_wan_shapes(m, shape):
    n, k = shape
    w = C.make_nvfp4(n, k, "high_first", "swizzled", seed=2).to(DEV)
    x = C.make_x(m, k, torch.bfloat16).to(DEV)
    bias = torch.randn(n, device=DEV, dtype=torch.bfloat16)
    out = _triton_fused().linear(x, w, bias)
    C.assert_linear_close(out.cpu(), x.cpu(), w.to("cpu"), bias.cpu())


@pytest.mark.parametrize(("m", "shape", "kind", "dtype"), C.FUSED_FP8_CASES, ids=_id)
def test_fused_fp8(m, shape, kind, dtype):
    n, k = shape
    w = C.make_fp8(n, k, *kind, seed=n)
    x = C.make_x(m, k, dtype, seed=m)
    bias = torch.randn(n, generator=C.seeded(10)).to(dtype)
    out = _triton_fused().linear(x.to(DEV), w.to(DEV), bias.to(DEV))
    C.assert_linear_close(out.cpu(), x, w, bias)


@pytest.mark.parametrize("path", ["triton-dequant", "triton-fused", "torch"])
def test_ops_linear_paths_on_gpu(path):
    w = C.make_nvfp4(3072, 3072, "low_first", "linear", seed=4)
    x = torch.randn(4, 64, 3072, generator=C.seeded(5)).to(torch.bfloat16)
    out = ops.linear(x.to(DEV), w.to(DEV), path=path)
    assert out.shape == (4, 64, 3072)
    C.assert_linear_close(out.cpu().reshape(256, 3072), x.reshape(256, 3072), w, None, weight_rounded=True)


def test_auto_picks_by_regime_on_gpu():
    w = C.make_nvfp4(512, 512, "high_first", "swizzled").to(DEV)
    small = torch.zeros(FUSED_MAX_M[NVFP4], 512, dtype=torch.bfloat16, device=DEV)
    large = torch.zeros(4096, 512, dtype=torch.bfloat16, device=DEV)
    fused_ok = torch.cuda.get_device_capability() >= (8, 0)
    assert ops.resolve_path(small, w) == ("triton-fused" if fused_ok else "triton-dequant")
    assert ops.resolve_path(large, w) == "triton-dequant"


def test_fp8_fast_path_error_is_small():
    if not (8, 9) <= torch.cuda.get_device_capability() <= (9, 9):
        pytest.skip("fp8-scaled-mm is declared for sm_89 / sm_90 only")
    w = C.make_fp8(5120, 5120, "row", torch.float8_e4m3fn, seed=6).to(DEV)
    x = C.make_x(512, 5120, torch.bfloat16).to(DEV)
    opts = KernelOptions(fp8_fast=True)
    assert ops.resolve_path(x, w, options=opts) == "fp8-scaled-mm"
    out = ops.linear(x, w, options=opts)
    exact, _ = C.linear_exact(x, w, None)  # on the CPU in float64: a GPU fp32 matmul may run in TF32
    assert 0.005 < C.relative_error(out, exact) < 0.05  # lossy (FP8 activations), but not broken


def test_compile_fullgraph_with_triton_paths():
    w = C.make_nvfp4(1024, 512, "high_first", "swizzled", seed=7).to(DEV)
    x = C.make_x(16, 512, torch.bfloat16).to(DEV)

    def f(x):
        return ops.linear(x, w, path="triton-fused") + ops.linear(x, w, path="triton-dequant")

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True)(x)
    torch.testing.assert_close(out, f(x), rtol=1e-2, atol=1e-2)


# ---- first-use self-check (kernels/selfcheck.py) -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=_id)
def test_selfcheck_passes_every_variant_on_this_gpu(dtype):
    rows = selfcheck.check_all(DEV, dtype)
    ran = [r for r in rows if r["status"] != "n/a"]
    assert ran and all(r["status"] == "passed" for r in ran), [r for r in ran if r["status"] != "passed"]
    print(f"self-check {dtype}: {len(ran)} checks in {sum(r['seconds'] for r in ran):.2f} s")


def test_selfcheck_first_use_under_compile_then_constant():
    """Fresh state: the first call is traced; the check runs eagerly, the graph keeps the chosen path."""
    selfcheck.reset()
    w = C.make_nvfp4(1024, 512, "high_first", "swizzled", seed=8).to(DEV)
    x = C.make_x(16, 512, torch.bfloat16).to(DEV)
    torch._dynamo.reset()
    out = torch.compile(lambda x: ops.linear(x, w), fullgraph=True)(x)
    fused_ok = torch.cuda.get_device_capability() >= (8, 0)
    checked = [(r.path, r.passed) for r in selfcheck.results()]
    assert checked[0] == ("triton-fused" if fused_ok else "triton-dequant", True), checked
    print(f"first-use checks for one variant: {sum(r.seconds for r in selfcheck.results()):.2f} s")
    C.assert_linear_close(out.cpu(), x.cpu(), w.to("cpu"), None)
    assert ops.resolve_path(x, w) == checked[0][0] and len(selfcheck.results()) == len(checked)
