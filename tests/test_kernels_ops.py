"""The entry points on CPU (`torch` and `reference` paths), the custom ops' schemas and fake implementations,
and the FP8 fast path's maths (run on CPU through torch._scaled_mm, bypassing its GPU-only dispatch)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from wan_nvfp4 import kernels as K
from wan_nvfp4.kernels import custom_ops, fp8_scaled_mm, ops, torch_paths
from wan_nvfp4.kernels.dispatch import PathUnavailableError
from wan_nvfp4.kernels.options import KernelOptions
from wan_nvfp4.tests import kernel_cases as C


def _id(value) -> str:
    return str(value).replace("torch.", "").replace("float8_", "")


@pytest.mark.parametrize("conv", C.CONVENTIONS, ids=_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=_id)
def test_torch_path_dequantize_is_the_reference(conv, dtype):
    w = C.make_nvfp4(300, 96, *conv, seed=1)
    assert ops.resolve_dequantize_path(w, dtype) == "torch"
    out = ops.dequantize(w, dtype)
    C.assert_rounded_from(out, K.dequantize_nvfp4(w, torch.float32), allow_ulp=False)


@pytest.mark.parametrize("conv", C.CONVENTIONS, ids=_id)
def test_torch_path_matches_comfy_kitchen(conv):
    """Independent oracle for the values every path must reproduce."""
    ck = pytest.importorskip("comfy_kitchen")
    from comfy_kitchen.float_utils import to_blocked

    w = C.make_nvfp4(130, 64, *conv, seed=2)
    scale = w.block_scale if conv[1] == K.SWIZZLED else to_blocked(w.block_scale, flatten=False)
    with ck.use_backend("eager"):
        want = ck.dequantize_nvfp4(
            w.packed, w.global_scale, scale, output_type=torch.float32, hi_first=conv[0] == K.HIGH_FIRST
        )
    torch.testing.assert_close(ops.dequantize(w, torch.float32), want.reshape(130, 64), rtol=2**-22, atol=0)


@pytest.mark.parametrize("layout", K.SCALE_LAYOUTS)
def test_torch_path_chunks_rows_without_changing_values(monkeypatch, layout):
    w = C.make_nvfp4(300, 64, "low_first", layout, seed=3, pad_rows=4)
    monkeypatch.setattr(torch_paths, "CHUNK_WEIGHTS", 128 * 64)  # 128-row chunks: 3 chunks, last one partial
    out = torch_paths.dequantize(w, torch.bfloat16)
    C.assert_rounded_from(out, K.dequantize_nvfp4(w, torch.float32), allow_ulp=False)
    f = C.make_fp8(300, 64, "row", torch.float8_e5m2, seed=4)
    C.assert_rounded_from(torch_paths.dequantize(f, torch.float16), K.dequantize_fp8(f), allow_ulp=False)


LINEAR_WEIGHTS = {
    "nvfp4-comfy": lambda: C.make_nvfp4(96, 80, "high_first", "swizzled", seed=5),
    "nvfp4-modelopt": lambda: C.make_nvfp4(96, 80, "low_first", "linear", seed=6),
    "fp8-tensor-e4m3": lambda: C.make_fp8(96, 80, "tensor", torch.float8_e4m3fn, seed=7),
    "fp8-row-e5m2": lambda: C.make_fp8(96, 80, "row", torch.float8_e5m2, seed=8),
    "fp8-plain": lambda: C.make_fp8(96, 80, "none", torch.float8_e4m3fn, seed=9),
    "float": lambda: C.random_weight(96, 80, seed=10).to(torch.bfloat16),
}


@pytest.mark.parametrize("kind", LINEAR_WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=_id)
@pytest.mark.parametrize("path", ["torch", "reference", "auto"])
def test_linear_on_cpu_paths(kind, dtype, path):
    w = LINEAR_WEIGHTS[kind]()
    x = torch.randn(2, 5, 80, generator=C.seeded(11)).to(dtype)
    bias = torch.randn(96, generator=C.seeded(12))
    out = ops.linear(x, w, bias, path)
    assert out.shape == (2, 5, 96) and out.dtype == dtype
    rounded = path != "reference" and dtype != torch.float32
    C.assert_linear_close(out.reshape(10, 96), x.reshape(10, 80), w, bias, weight_rounded=rounded)


def test_linear_shapes_and_errors():
    w = C.make_nvfp4(48, 32, "high_first", "swizzled")
    assert ops.linear(torch.randn(32), w).shape == (48,)
    assert ops.linear(torch.randn(0, 32), w).shape == (0, 48)
    with pytest.raises(ValueError, match="in_features=32, found \\[4, 16\\]"):
        ops.linear(torch.randn(4, 16), w)
    with pytest.raises(PathUnavailableError, match="Triton kernels need an NVIDIA GPU"):
        ops.linear(torch.randn(4, 32, dtype=torch.bfloat16), w, path="triton-dequant")
    with pytest.raises(PathUnavailableError, match="device cpu"):
        ops.linear(
            torch.randn(4, 32, dtype=torch.bfloat16),
            C.make_fp8(48, 32, "row", torch.float8_e4m3fn),
            path="fp8-scaled-mm",
        )


def test_options_path_and_compute_dtype():
    w = C.make_nvfp4(64, 48, "high_first", "swizzled", seed=13)
    x = torch.randn(3, 48, generator=C.seeded(14))
    out = ops.linear(x, w, options=KernelOptions(compute_dtype=torch.bfloat16))
    assert out.dtype == torch.float32  # output keeps x's dtype
    torch.testing.assert_close(out, ops.linear(x.bfloat16(), w).float(), rtol=0, atol=0)
    forced = KernelOptions(path="reference")
    assert ops.resolve_path(x, w, options=forced) == "reference"
    assert ops.resolve_path(x, w, "torch", options=forced) == "torch"  # an explicit path wins


def test_wrong_nibble_order_gives_a_wrong_linear():
    """Negative test: the entry point must honour the declared nibble order."""
    w = C.make_nvfp4(64, 64, "low_first", "linear", seed=15)
    x = C.make_x(4, 64, torch.float32)
    exact, _ = C.linear_exact(x, w, None)
    assert C.relative_error(ops.linear(x, w), exact) < 1e-5
    assert C.relative_error(ops.linear(x, replace(w, nibble_order="high_first")), exact) > 0.3


def test_custom_ops_pass_opcheck():
    """Schema, fake implementation and (no) aliasing of every op, checked by torch.library.opcheck."""
    w = C.make_nvfp4(40, 32, "high_first", "swizzled", seed=16)
    w = replace(w, block_scale=w.block_scale.view(torch.uint8))  # uint8 bytes: accepted, and comparable
    f = C.make_fp8(40, 32, "row", torch.float8_e4m3fn, seed=17)
    x = torch.randn(2, 3, 32)
    bias = torch.randn(40)
    fields = custom_ops.nvfp4_fields(w)
    all_checks = None  # every opcheck test
    # opcheck's schema check compares inputs with arithmetic that fp8 tensors lack on CPU
    no_schema = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    cases = [
        (torch.ops.wan_nvfp4.nvfp4_linear.default, (x, *fields, bias, "torch"), all_checks),
        (torch.ops.wan_nvfp4.nvfp4_linear.default, (x, *fields, None, "reference"), all_checks),
        (torch.ops.wan_nvfp4.nvfp4_dequantize.default, (*fields, torch.bfloat16, "torch"), all_checks),
        (torch.ops.wan_nvfp4.fp8_linear.default, (x, f.data, f.scale, bias, "torch"), no_schema),
        (torch.ops.wan_nvfp4.fp8_linear.default, (x, f.data, None, None, "reference"), no_schema),
        (torch.ops.wan_nvfp4.fp8_dequantize.default, (f.data, f.scale, torch.float16, "torch"), no_schema),
    ]
    for op, args, checks in cases:
        if checks is None:
            torch.library.opcheck(op, args)
        else:
            torch.library.opcheck(op, args, test_utils=checks)


def test_fp8_fast_path_maths_on_cpu():
    """Per-row e4m3 activations x FP8 weight: equals the fake-quantized product, ~2-3 % off the exact one."""
    w = C.make_fp8(320, 864, "row", torch.float8_e4m3fn, seed=18)
    x = C.make_x(77, 864, torch.bfloat16)
    x[5] = 0  # an all-zero row must not divide by zero
    bias = torch.randn(320, generator=C.seeded(19)).to(torch.bfloat16)
    codes, scale = fp8_scaled_mm.quantize_rows(x)
    assert codes.dtype == torch.float8_e4m3fn and scale.shape == (77, 1)
    assert torch.equal(codes.float().abs().amax(dim=1)[x.abs().amax(dim=1) > 0], torch.full((76,), 448.0))
    out = fp8_scaled_mm.linear(x, w, bias)
    fake_x = (codes.float() * scale).to(torch.float32)
    C.assert_linear_close(out, fake_x, w, bias)  # the scales land where they belong
    exact, _ = C.linear_exact(x, w, bias)
    assert 0.005 < C.relative_error(out, exact) < 0.05  # lossy, within the expected FP8 activation error
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        fp8_scaled_mm.linear(x, C.make_fp8(320, 864, "row", torch.float8_e5m2), None)


def test_float_weight_torch_path_is_plain_linear():
    w = torch.randn(24, 16, dtype=torch.float16)
    x = torch.randn(3, 16, dtype=torch.float16)
    assert torch.equal(ops.linear(x, w, path="torch"), F.linear(x, w))
    assert torch.equal(ops.dequantize(w, torch.float32), w.float())


def test_code_times_block_scale_and_fp8_values_are_exact_in_half_dtypes():
    """The premise of the fused kernel (weights cast to x's dtype before the tensor-core dot) and of the
    bit-exact dequant: every E2M1 code x every non-NaN e4m3 block scale, and every fp8 value, is exact in
    bf16 and fp16. Enumerated here by hand, independently of the kernels' decoders."""
    scale_bytes = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.uint8)
    scales = scale_bytes.view(torch.float8_e4m3fn).float()
    products = torch.tensor(K.E2M1_VALUES)[:, None] * scales[None, :]  # exact in fp32 (<= 6 bits)
    fp8 = [
        torch.arange(256, dtype=torch.uint8).view(d).float() for d in (torch.float8_e4m3fn, torch.float8_e5m2)
    ]
    for values in (products.flatten(), *fp8):
        finite = values[values.isfinite()]
        for half in (torch.bfloat16, torch.float16):
            assert torch.equal(finite.to(half).float(), finite), half
    # a scale folded in first would not be: one global scale already breaks it
    assert not torch.equal((products * 0.3).to(torch.bfloat16).float(), products * 0.3)


def test_rounding_oracle_is_tight_at_zero():
    """The shared 1-ulp check must not allow a rounding error around an exact zero (bf16's ulp at 1.0)."""
    zero = torch.zeros(4)
    with pytest.raises(AssertionError, match="ulp"):
        C.assert_rounded_from(torch.full((4,), 1e-3, dtype=torch.bfloat16), zero, allow_ulp=True)
    C.assert_rounded_from(torch.zeros(4, dtype=torch.bfloat16), zero, allow_ulp=True)
    assert C.ulp(zero, torch.bfloat16)[0] == 2.0**-133 and C.ulp(zero, torch.float16)[0] == 2.0**-24
