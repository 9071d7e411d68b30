"""Every Triton kernel against the exact torch reference, run by the Triton interpreter on CPU.

Kernels run in a spawned worker with TRITON_INTERPRET=1 (see kernel_cases); references are computed here.
Dequant: bit-exact in fp32, within 1 ulp in bf16/fp16 (the interpreter truncates fp32 -> bf16).
Fused / dequant+matmul: within the output's rounding plus fp32 accumulation error (kernel_cases).
"""

from dataclasses import replace

import pytest
import torch

from wan_nvfp4 import kernels as K
from wan_nvfp4.tests import kernel_cases as C

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


@pytest.fixture(scope="module")
def interp():
    worker = C.InterpreterWorker()
    yield worker
    worker.close()


def _id(value) -> str:
    return str(value).replace("torch.", "").replace("float8_", "")


# ---- NVFP4 dequant ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "conv", "dtype"), C.NVFP4_DEQUANT_CASES, ids=_id)
def test_nvfp4_dequant_matches_reference(interp, shape, conv, dtype):
    w = C.make_nvfp4(*shape, *conv, seed=shape[0] + shape[1])
    out = interp("dequantize", w, dtype)
    assert out.dtype == dtype
    C.assert_rounded_from(out, K.dequantize_nvfp4(w, torch.float32), allow_ulp=True)


def test_nvfp4_dequant_ignores_padded_rows_and_follows_strides(interp):
    n, k = 200, 96
    w = C.make_nvfp4(n, k, "low_first", "linear", seed=3, pad_rows=24)  # ComfyUI-style padded rows
    wide = torch.zeros((n + 24, k), dtype=torch.uint8)
    wide[:, 5 : 5 + k // 2] = w.packed  # packed bytes as a strided view into a wider buffer
    scales = torch.zeros((n, w.scale_cols + 3), dtype=torch.uint8)
    scales[:, 1 : 1 + w.scale_cols] = w.block_scale.view(torch.uint8)
    strided = replace(w, packed=wide[:, 5 : 5 + k // 2], block_scale=scales[:, 1 : 1 + w.scale_cols])
    assert not strided.packed.is_contiguous() and not strided.block_scale.is_contiguous()
    out = interp("dequantize", strided, torch.float32)
    C.assert_rounded_from(out, K.dequantize_nvfp4(w, torch.float32), allow_ulp=False)


def test_nvfp4_dequant_nan_scale_gives_nan_block(interp):
    w = C.make_nvfp4(130, 64, "high_first", "linear", seed=4)
    scale = w.block_scale.view(torch.uint8).clone()
    scale[129, 2] = 0x7F  # e4m3fn NaN
    w = replace(w, block_scale=scale.view(torch.float8_e4m3fn))
    out = interp("dequantize", w, torch.float32)
    assert out[129, 32:48].isnan().all() and out.isnan().sum() == 16
    C.assert_rounded_from(out, K.dequantize_nvfp4(w, torch.float32), allow_ulp=False)


@pytest.mark.parametrize("conv", C.CONVENTIONS, ids=_id)
def test_nvfp4_dequant_matches_comfy_kitchen(interp, conv):
    """Independent oracle: comfy-kitchen eager in fp32 (scale product first: within 1 fp32 ulp)."""
    ck = pytest.importorskip("comfy_kitchen")
    from comfy_kitchen.float_utils import to_blocked

    w = C.make_nvfp4(257, 160, *conv, seed=5)
    scale = w.block_scale if conv[1] == K.SWIZZLED else to_blocked(w.block_scale, flatten=False)
    with ck.use_backend("eager"):
        want = ck.dequantize_nvfp4(
            w.packed, w.global_scale, scale, output_type=torch.float32, hi_first=conv[0] == K.HIGH_FIRST
        )
    out = interp("dequantize", w, torch.float32)
    torch.testing.assert_close(out, want.reshape(out.shape), rtol=2**-22, atol=0)


@pytest.mark.parametrize("conv", C.CONVENTIONS, ids=_id)
def test_nvfp4_dequant_decodes_every_code_and_scale_byte(interp, conv):
    w = C.exhaustive_nvfp4(*conv)
    want = K.dequantize_nvfp4(w, torch.float32)
    assert want.isnan().sum() == 2 * 16 * 16  # 0x7F and 0xFF, 16 blocks each
    C.assert_rounded_from(interp("dequantize", w, torch.float32), want, allow_ulp=False)
    C.assert_rounded_from(interp("dequantize", w, torch.bfloat16), want, allow_ulp=True)


@pytest.mark.parametrize("granularity", ["none", "tensor", "row"])
@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2], ids=_id)
def test_fp8_dequant_decodes_every_byte(interp, fp8_dtype, granularity):
    f = C.exhaustive_fp8(fp8_dtype, granularity)
    C.assert_rounded_from(interp("dequantize", f, torch.float32), K.dequantize_fp8(f), allow_ulp=False)


@pytest.mark.parametrize(
    "wrong", [{"nibble_order": "low_first"}, {"scale_layout": "linear"}], ids=["nibble", "layout"]
)
def test_nvfp4_dequant_wrong_convention_is_far_off(interp, wrong):
    """Negative test: declaring the other nibble order / scale layout must not reproduce the weight."""
    w = C.make_nvfp4(256, 256, "high_first", "swizzled", seed=6)  # shapes where both layouts fit
    out = interp("dequantize", replace(w, **wrong), torch.float32)
    assert C.relative_error(out, K.dequantize_nvfp4(w, torch.float32)) > 0.3


# ---- FP8 dequant --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "kind", "dtype"), C.FP8_DEQUANT_CASES, ids=_id)
def test_fp8_dequant_matches_reference(interp, shape, kind, dtype):
    w = C.make_fp8(*shape, *kind, seed=shape[0])
    out = interp("dequantize", w, dtype)
    C.assert_rounded_from(out, K.dequantize_fp8(w, torch.float32), allow_ulp=True)


# ---- fused NVFP4 / FP8 linear -------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "shape", "conv", "dtype", "with_bias"), C.FUSED_NVFP4_CASES, ids=_id)
def test_fused_nvfp4_linear_matches_reference(interp, m, shape, conv, dtype, with_bias):
    n, k = shape
    w = C.make_nvfp4(n, k, *conv, seed=n)
    x = C.make_x(m, k, dtype, seed=m)
    bias = torch.randn(n, generator=C.seeded(9)).to(dtype) if with_bias else None
    out = interp("fused_linear", x, w, bias)
    assert out.shape == (m, n) and out.dtype == dtype
    C.assert_linear_close(out, x, w, bias)


@pytest.mark.parametrize(("m", "shape", "kind", "dtype"), C.FUSED_FP8_CASES, ids=_id)
def test_fused_fp8_linear_matches_reference(interp, m, shape, kind, dtype):
    n, k = shape
    w = C.make_fp8(n, k, *kind, seed=n)
    x = C.make_x(m, k, dtype, seed=m)
    bias = torch.randn(n, generator=C.seeded(10)).to(dtype)
    out = interp("fused_linear", x, w, bias)
    C.assert_linear_close(out, x, w, bias)


@pytest.mark.parametrize("kind", ["nvfp4", "fp8"])
def test_fused_follows_input_and_bias_strides(interp, kind):
    n, k = 96, 64
    w = (
        C.make_nvfp4(n, k, "high_first", "linear", seed=16)
        if kind == "nvfp4"
        else C.make_fp8(n, k, "row", torch.float8_e4m3fn)
    )
    x = torch.randn(k, 5, generator=C.seeded(17)).to(torch.bfloat16).t()  # [5, K], column-major
    bias = torch.randn(2 * n, generator=C.seeded(18))[::2]  # stride 2
    assert not x.is_contiguous() and not bias.is_contiguous()
    out = interp("fused_linear", x, w, bias)
    C.assert_linear_close(out, x, w, bias)


def test_fused_wrong_nibble_order_is_far_off(interp):
    w = C.make_nvfp4(64, 128, "low_first", "linear", seed=11)
    x = C.make_x(3, 128, torch.bfloat16)
    out = interp("fused_linear", x, replace(w, nibble_order="high_first"), None)
    exact, _ = C.linear_exact(x, w, None)
    assert C.relative_error(out, exact) > 0.3


# ---- every shipped GPU tile config (the cases above run the interpreter's single config) --------------


def _gpu_configs(module_name: str) -> list:
    import importlib

    return importlib.import_module(f"wan_nvfp4.kernels.{module_name}").GPU_CONFIGS


@pytest.mark.parametrize("index", range(len(_gpu_configs("triton_dequant"))))
def test_every_shipped_dequant_config_is_exact(interp, index):
    """K spans several tiles of every BLOCK_K and is not a multiple of any; N is not a multiple of 128."""
    for conv in (("high_first", "swizzled"), ("low_first", "linear")):
        w = C.make_nvfp4(150, 1072, *conv, seed=index)
        out = interp("dequantize", w, torch.float32, gpu_config=index)
        C.assert_rounded_from(out, K.dequantize_nvfp4(w, torch.float32), allow_ulp=False)
    f = C.make_fp8(70, 1064, "row", E5M2, seed=index)
    out = interp("dequantize", f, torch.float32, gpu_config=index)
    C.assert_rounded_from(out, K.dequantize_fp8(f, torch.float32), allow_ulp=False)


@pytest.mark.parametrize("index", range(len(_gpu_configs("triton_fused"))))
def test_every_shipped_fused_config_matches_reference(interp, index):
    """M just past BLOCK_M (two M tiles: the grouped program order), N and K not multiples of any tile."""
    block_m = _gpu_configs("triton_fused")[index].kwargs["BLOCK_M"]
    x = C.make_x(block_m + 5, 272, torch.float16, seed=index)
    bias = torch.randn(150, generator=C.seeded(index)).to(torch.float16)
    for w in (
        C.make_nvfp4(150, 272, "high_first", "swizzled", seed=index),
        C.make_fp8(150, 272, "row", E4M3),
    ):
        C.assert_linear_close(interp("fused_linear", x, w, bias, gpu_config=index), x, w, bias)


# ---- the entry points, forced onto the Triton paths ---------------------------------------------------


@pytest.mark.parametrize("path", ["triton-fused", "triton-dequant"])
def test_ops_linear_runs_triton_paths_with_leading_dims(interp, path):
    w = C.make_nvfp4(96, 64, "high_first", "swizzled", seed=12)
    x = torch.randn(2, 3, 64, generator=C.seeded(13)).to(torch.bfloat16)
    bias = torch.randn(96, generator=C.seeded(14))
    out = interp("ops_linear", x, w, bias, path)
    assert out.shape == (2, 3, 96) and out.dtype == torch.bfloat16
    C.assert_linear_close(
        out.reshape(6, 96), x.reshape(6, 64), w, bias, weight_rounded=path == "triton-dequant"
    )


def test_ops_dequantize_triton_path(interp):
    w = C.make_fp8(70, 48, "row", torch.float8_e4m3fn, seed=15)
    out = interp("ops_dequantize", w, torch.float16, "triton-dequant")
    C.assert_rounded_from(out, K.dequantize_fp8(w, torch.float32), allow_ulp=True)


def test_auto_never_picks_the_interpreter(interp):
    w = C.make_nvfp4(32, 32, "high_first", "swizzled")
    assert interp("ops_resolve_path", torch.zeros(1, 32, dtype=torch.bfloat16), w) == "torch"
