"""NVFP4 / FP8 dequantization against comfy-kitchen eager (fp32 output) and torchao, in every convention.

Bit-exact where the maths is exact (FORMATS.md §1.1, §8): our `scale_first=True` association is the oracles'
`code * (global * block)`; the default `(code * block) * global` is within one fp32 ulp. Negative tests: the
wrong nibble order or scale layout must give a large error.
"""

import warnings

import pytest
import torch

from wan_nvfp4 import kernels as K

ck = pytest.importorskip("comfy_kitchen")
ck_utils = pytest.importorskip("comfy_kitchen.float_utils")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ao_nvfp4 = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")

CONVENTIONS = [(o, s) for o in K.NIBBLE_ORDERS for s in K.SCALE_LAYOUTS]
# (N, K): odd rows, a row count past one swizzle tile, K/16 not a multiple of 4, WAN head-like, WAN-like
SHAPES = [(1, 16), (33, 48), (129, 80), (200, 96), (64, 256), (192, 256), (320, 864), (256, 512)]


def _weight(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.exp(torch.randn(n, 1, generator=g))
    return torch.randn(n, k, generator=g) * rows


def _hand_swap(p: torch.Tensor) -> torch.Tensor:
    return ((p & 0x0F) << 4) | (p >> 4)


def ck_dequant(w: K.NVFP4Weight) -> torch.Tensor:
    """comfy-kitchen eager, fp32 output; linear scales are swizzled with comfy-kitchen's own to_blocked."""
    scale = w.block_scale
    if w.scale_layout == K.LINEAR:
        scale = ck_utils.to_blocked(scale, flatten=False)
    with ck.use_backend("eager"):
        out = ck.dequantize_nvfp4(
            w.packed,
            w.global_scale,
            scale,
            output_type=torch.float32,
            hi_first=w.nibble_order == K.HIGH_FIRST,
        )
    return out[: w.out_features, : w.in_features]


def ao_dequant(w: K.NVFP4Weight) -> torch.Tensor:
    """torchao NVFP4Tensor (low-first packing; swizzled scales flagged)."""
    qdata = w.packed if w.nibble_order == K.LOW_FIRST else _hand_swap(w.packed)
    t = ao_nvfp4.NVFP4Tensor(
        qdata,
        w.block_scale.view(torch.float8_e4m3fn),
        16,
        torch.float32,
        per_tensor_scale=w.global_scale.reshape(()),
        is_swizzled_scales=w.scale_layout == K.SWIZZLED,
    )
    return t.dequantize(torch.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("order", "layout"), CONVENTIONS)
def test_dequantize_is_bit_exact_with_comfy_kitchen_and_torchao(shape, order, layout):
    w = K.quantize_nvfp4(_weight(*shape), nibble_order=order, scale_layout=layout)
    ours = K.dequantize_nvfp4(w, torch.float32, scale_first=True)
    assert torch.equal(ours, ck_dequant(w))
    assert torch.equal(ours, ao_dequant(w))
    rounded_once = K.dequantize_nvfp4(w, torch.float32)  # (code * block) * global: within 1 ulp
    torch.testing.assert_close(rounded_once, ours, rtol=2.4e-7, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reads_bytes_written_by_comfy_kitchen(shape):
    """comfy-kitchen's own quantizer (high-first, swizzled): our reader must give its dequantized values."""
    x = _weight(*shape, seed=3)
    gs = (x.abs().amax() / 2688.0).float()
    with ck.use_backend("eager"):
        packed, scales = ck.quantize_nvfp4(x, gs)
    w = K.NVFP4Weight(packed, scales, gs, shape[0], shape[1], K.HIGH_FIRST, K.SWIZZLED).validate()
    assert torch.equal(K.dequantize_nvfp4(w, torch.float32, scale_first=True), ck_dequant(w))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reads_bytes_written_by_torchao(shape):
    """torchao's quantizer (low-first, linear scales)."""
    x = _weight(*shape, seed=4)
    gs = (x.abs().amax() / 2688.0).float()
    scales, packed = ao_nvfp4.nvfp4_quantize(x, 16, per_tensor_scale=gs)
    w = K.NVFP4Weight(packed, scales.reshape(shape[0], -1), gs, shape[0], shape[1], K.LOW_FIRST, K.LINEAR)
    assert torch.equal(K.dequantize_nvfp4(w.validate(), torch.float32, scale_first=True), ao_dequant(w))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_quantizer_bytes_equal_comfy_kitchen(shape):
    x = _weight(*shape, seed=5)
    ours = K.quantize_nvfp4(x)
    with ck.use_backend("eager"):
        packed, scales = ck.quantize_nvfp4(x, ours.global_scale, epsilon=0.0)
    assert torch.equal(ours.packed, packed)
    assert torch.equal(ours.block_scale.view(torch.uint8), scales.view(torch.uint8))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("order", "layout"), CONVENTIONS)
def test_wrong_nibble_order_gives_a_large_error(order, layout):
    w = K.quantize_nvfp4(_weight(256, 512, seed=6), nibble_order=order, scale_layout=layout)
    truth = ck_dequant(w)
    wrong = K.NVFP4Weight(
        **{**w.__dict__, "nibble_order": K.HIGH_FIRST if order == K.LOW_FIRST else K.LOW_FIRST}
    )
    assert _rel(K.dequantize_nvfp4(w), truth) < 1e-6
    assert _rel(K.dequantize_nvfp4(wrong), truth) > 0.5


@pytest.mark.parametrize("order", K.NIBBLE_ORDERS)
def test_wrong_scale_layout_gives_a_large_error(order):
    # 256 x 512: 256 x 32 scales, the same shape in both layouts (like every WAN Linear but head.head)
    w = K.quantize_nvfp4(_weight(256, 512, seed=7), nibble_order=order, scale_layout=K.SWIZZLED)
    truth = ck_dequant(w)
    wrong = K.NVFP4Weight(**{**w.__dict__, "scale_layout": K.LINEAR}).validate()
    assert _rel(K.dequantize_nvfp4(wrong), truth) > 0.5
    lin = K.quantize_nvfp4(_weight(256, 512, seed=7), nibble_order=order, scale_layout=K.LINEAR)
    wrong = K.NVFP4Weight(**{**lin.__dict__, "scale_layout": K.SWIZZLED}).validate()
    assert _rel(K.dequantize_nvfp4(wrong), truth) > 0.5


def test_wrong_scale_layout_on_a_head_shape_is_refused():
    # N = 64 (WAN head.head): a linear [64, 16] scale cannot be read as swizzled [128, 16]
    w = K.quantize_nvfp4(_weight(64, 256), scale_layout=K.LINEAR)
    with pytest.raises(K.WeightFormatError, match=r"expected \[128, 16\], found \[64, 16\]"):
        K.NVFP4Weight(**{**w.__dict__, "scale_layout": K.SWIZZLED}).validate()


# ---------------------------------------------------------------------------------------------- FP8


@pytest.mark.parametrize("shape", [(1, 16), (33, 48), (320, 864)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scale_shape", [(), (1,)])
def test_fp8_per_tensor_matches_comfy_kitchen(shape, scale_shape):
    w = K.quantize_fp8(_weight(*shape, seed=8), "tensor")
    w = K.FP8Weight(w.data, w.scale.reshape(scale_shape)).validate()
    with ck.use_backend("eager"):
        oracle = ck.dequantize_per_tensor_fp8(w.data, w.scale.reshape(()), output_type=torch.float32)
    assert torch.equal(K.dequantize_fp8(w, torch.float32), oracle)


@pytest.mark.parametrize("shape", [(2, 16), (33, 48), (320, 864)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("row_shape", ["n", "n1"])
def test_fp8_per_row_matches_hand_computation(shape, row_shape):
    w = K.quantize_fp8(_weight(*shape, seed=9), "row")
    scale = w.scale.reshape(-1, 1) if row_shape == "n1" else w.scale.reshape(-1)
    w = K.FP8Weight(w.data, scale).validate()
    assert w.granularity == "row"
    by_hand = w.data.float() * w.scale.float().reshape(-1, 1)
    assert torch.equal(K.dequantize_fp8(w, torch.float32), by_hand)
    # negative: treating the per-row scale as one per-tensor scale is wrong
    assert _rel(w.data.float() * w.scale.float().reshape(-1)[0], by_hand) > 0.1


def test_plain_fp8_is_a_value_cast():
    data = _weight(8, 32).to(torch.float8_e4m3fn)
    w = K.FP8Weight(data).validate()
    assert w.granularity == "none"
    assert torch.equal(K.dequantize(w, torch.float32), data.float())


def test_linear_reference_matches_a_float_linear_on_the_comfy_kitchen_weight():
    w = K.quantize_nvfp4(_weight(96, 160, seed=10))
    x = torch.randn(5, 160, generator=torch.Generator().manual_seed(11))
    bias = torch.randn(96, generator=torch.Generator().manual_seed(12))
    expected = torch.nn.functional.linear(x, ck_dequant(w), bias)
    torch.testing.assert_close(K.linear_reference(x, w, bias), expected, rtol=1e-5, atol=1e-5)
