"""Who runs NVFP4 layers on simulated machines (capability x torch CUDA x comfy-kitchen backend x convention),
and the load-time conversion into ComfyUI's native layout: lossless, bit-exact against `repair`'s output and
against independent codecs (comfy-kitchen's `to_blocked` and nibble handling)."""

import itertools

import pytest
import torch

from wan_nvfp4.checkpoint.conventions.classify import classify_checkpoint
from wan_nvfp4.checkpoint.layers import NVFP4, build_weight
from wan_nvfp4.checkpoint.reading.safetensors_io import SafetensorsFile
from wan_nvfp4.checkpoint.tiny.fixtures import CONVENTIONS, FIXTURES
from wan_nvfp4.checkpoint.writing.repair import RepairOptions, repair_checkpoint
from wan_nvfp4.kernels import (
    HIGH_FIRST,
    LINEAR,
    LOW_FIRST,
    SWIZZLED,
    dequantize,
    dequantize_nvfp4,
    native_nvfp4,
    quantize_nvfp4,
    unpack_nibbles,
)
from wan_nvfp4.kernels.dispatch import AUTO, FP8, PATHS
from wan_nvfp4.kernels.native_fp4 import (
    COMFYUI,
    NATIVE_FP4,
    NATIVE_FP4_GEMM,
    PACK,
    W4A16,
    FP4GemmFacts,
    decide_nvfp4,
    layer_runner,
    torch_cuda_version,
)

ck = pytest.importorskip("comfy_kitchen")

# (kind, capability): what ComfyUI's supports_nvfp4_compute says for each is NVIDIA and major >= 10
DEVICES = {
    "cpu": ("cpu", None),
    "rocm": ("rocm", None),
    "T4": ("cuda", (7, 5)),
    "A100": ("cuda", (8, 0)),
    "RTX 4090": ("cuda", (8, 9)),
    "H100": ("cuda", (9, 0)),
    "B200": ("cuda", (10, 0)),
    "RTX 5090": ("cuda", (12, 0)),
}
TORCH_CUDA = {"cpu build": None, "cu126": (12, 6), "cu128": (12, 8), "cu130": (13, 0), "cu131": (13, 1)}
BLACKWELL = {"B200", "RTX 5090"}
CUDA_13 = {"cu130", "cu131"}


def facts(device: str, cuda: str, backend: bool) -> FP4GemmFacts:
    kind, cc = DEVICES[device]
    comfy_nvfp4 = kind == "cuda" and cc[0] >= 10
    return FP4GemmFacts(kind, cc, TORCH_CUDA[cuda], backend, comfy_nvfp4, "" if backend else "disabled")


MATRIX = list(itertools.product(DEVICES, TORCH_CUDA, (True, False)))


@pytest.mark.parametrize(("device", "cuda", "backend"), MATRIX)
def test_auto_takes_the_fp4_gemm_exactly_when_comfyui_would_run_it(device, cuda, backend):
    decision = decide_nvfp4(AUTO, facts(device, cuda, backend))
    usable = device in BLACKWELL and cuda in CUDA_13 and backend
    assert decision.native is usable, decision.reason
    assert decision.quantized_mm is usable
    assert decision.kernel_path == AUTO  # every other layer: the pack's own auto
    assert decision.reason.startswith("auto: ")
    if usable:
        assert "FP4 GEMM (W4A4)" in decision.reason
    else:  # the log says why not, naming the first unmet constraint
        assert "W4A16" in decision.reason and "unusable" in decision.reason
        expected = (
            "compute capability" if device not in BLACKWELL else "CUDA" if cuda not in CUDA_13 else "backend"
        )
        if DEVICES[device][0] != "cuda":
            expected = "device"
        assert expected in decision.reason, decision.reason


@pytest.mark.parametrize(("device", "cuda", "backend"), MATRIX)
def test_explicit_choices_are_kept_on_every_machine(device, cuda, backend):
    f = facts(device, cuda, backend)
    w4a16 = decide_nvfp4(W4A16, f)
    assert (w4a16.runner, w4a16.kernel_path, w4a16.quantized_mm) == (PACK, AUTO, False)
    forced = decide_nvfp4(NATIVE_FP4, f)
    assert forced.native and forced.quantized_mm is f.comfy_nvfp4  # ComfyUI's own emulation rule elsewhere
    for path in PATHS:
        d = decide_nvfp4(path, f)
        assert (d.runner, d.kernel_path) == (PACK, path)


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="kernel path must be one of"):
        decide_nvfp4("fp4-please", facts("B200", "cu130", True))


def test_constraint_is_data_and_names_each_unmet_fact():
    assert NATIVE_FP4_GEMM.min_capability == (10, 0) and NATIVE_FP4_GEMM.min_torch_cuda == (13,)
    ok = facts("RTX 5090", "cu130", True)
    assert NATIVE_FP4_GEMM.why_not(ok) is None
    assert "(12, 8)" in NATIVE_FP4_GEMM.why_not(facts("RTX 5090", "cu128", True))
    assert "disabled" in NATIVE_FP4_GEMM.why_not(facts("RTX 5090", "cu130", False))
    assert "(9, 0)" in NATIVE_FP4_GEMM.why_not(facts("H100", "cu130", True))
    # ComfyUI emulating nvfp4 on the device (a future rule beyond capability) also rules the GEMM out
    emulated = FP4GemmFacts("cuda", (12, 0), (13, 0), True, comfy_nvfp4=False)
    assert "emulated" in NATIVE_FP4_GEMM.why_not(emulated)


def test_torch_cuda_version_parsing():
    assert torch_cuda_version("13.0") == (13, 0)
    assert torch_cuda_version("12.8") == (12, 8) < (13,)
    assert torch_cuda_version("") is None
    assert torch_cuda_version() == (
        None if torch.version.cuda is None else torch_cuda_version(torch.version.cuda)
    )


SAMPLE_LAYERS = ("blocks.0.self_attn.q", "blocks.0.ffn.0", "blocks.1.cross_attn.k", "head.head")
NVFP4_FIXTURES = [n for n, c in CONVENTIONS.items() if any(c.plan(x) == NVFP4 for x in SAMPLE_LAYERS)]


@pytest.mark.parametrize("name", NVFP4_FIXTURES)
def test_every_convention_reaches_the_runner_auto_chose(name):
    """Simulated Blackwell with the backend: every NVFP4 layer of every convention runs on ComfyUI's FP4
    GEMM (converted at load); FP8 / float layers stay ours. Without CUDA 13 the whole model stays ours."""
    fx = FIXTURES[name]()
    info = classify_checkpoint(fx.source(), sidecar_config=fx.sidecar_config)
    assert any(spec.format == NVFP4 for spec in info.layers.values())
    for cuda, backend in (("cu130", True), ("cu128", True), ("cu130", False)):
        decision = decide_nvfp4(AUTO, facts("RTX 5090", cuda, backend))
        for spec in info.layers.values():
            want = COMFYUI if cuda == "cu130" and backend and spec.format == NVFP4 else PACK
            got = layer_runner(decision, spec.format)
            assert got == want, (cuda, backend, spec.name, spec.format, spec.nibble_order, spec.scale_layout)
    assert layer_runner(decide_nvfp4(AUTO, facts("B200", "cu130", True)), FP8) == PACK


# ---- the conversion ----------------------------------------------------------------------------------------


def _independent_native(weight):
    """High-first bytes and swizzled scales built with comfy-kitchen's own swizzle and byte arithmetic."""
    from comfy_kitchen.float_utils import to_blocked

    n, k = weight.shape
    codes = unpack_nibbles(weight.packed[:n, : k // 2], weight.nibble_order)
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]
    rows = -(-n // 16) * 16
    packed = torch.cat([packed, packed.new_zeros(rows - n, k // 2)])
    scales = weight.block_scale.view(torch.float8_e4m3fn)
    if weight.scale_layout == SWIZZLED:
        return packed, scales.view(torch.uint8)
    return packed, to_blocked(scales, flatten=False).view(torch.uint8)


SHAPES = [(1, 16), (33, 48), (129, 32), (200, 160), (256, 64)]


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("order", [LOW_FIRST, HIGH_FIRST])
@pytest.mark.parametrize("layout", [LINEAR, SWIZZLED])
def test_native_conversion_is_lossless_on_odd_shapes(n, k, order, layout):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n * k))
    q = quantize_nvfp4(w, nibble_order=order, scale_layout=layout)
    out = native_nvfp4(q)
    packed, scales = _independent_native(q)
    assert (out.nibble_order, out.scale_layout) == (HIGH_FIRST, SWIZZLED)
    assert torch.equal(out.packed, packed)
    assert torch.equal(out.block_scale.view(torch.uint8), scales)
    assert torch.equal(dequantize(out), dequantize(q))
    assert out.packed.data_ptr() != q.packed.data_ptr(), "never shares (or mutates) the input's bytes"
    # comfy-kitchen reads the converted weight like ComfyUI does (high-first, swizzled): same values
    with ck.use_backend("eager"):
        theirs = ck.dequantize_nvfp4(out.packed, out.global_scale, out.block_scale, output_type=torch.float32)
    assert torch.equal(theirs[:n], dequantize_nvfp4(q, torch.float32, scale_first=True))


def test_wrong_convention_is_not_what_comfyui_reads():
    """Negative test: skipping the nibble swap of a low-first weight gives other values."""
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    q = quantize_nvfp4(w, nibble_order=LOW_FIRST, scale_layout=LINEAR)
    out = native_nvfp4(q)
    with ck.use_backend("eager"):
        unswapped = ck.dequantize_nvfp4(
            q.packed, out.global_scale, out.block_scale, output_type=torch.float32
        )
    assert not torch.allclose(
        unswapped, dequantize_nvfp4(q, torch.float32, scale_first=True), rtol=0.1, atol=0.1
    )


@pytest.mark.parametrize("name", NVFP4_FIXTURES)
def test_conversion_is_bit_exact_against_repair(name, tmp_path):
    fx = FIXTURES[name]()
    conv = fx.convention
    src = fx.write(tmp_path / "in")
    options = RepairOptions(
        nibble_order=conv.nibble_order if conv.misread else None,
        scale_layout=conv.scale_layout if conv.misread else None,
    )
    dst = tmp_path / "repaired.safetensors"
    repair_checkpoint(src, dst, options, save_report=False)
    info = classify_checkpoint(src, nibble_order=options.nibble_order, scale_layout=options.scale_layout)
    source, repaired = SafetensorsFile(src), SafetensorsFile(dst)
    checked = 0
    for spec in info.layers.values():
        if spec.format != NVFP4:
            continue
        native = native_nvfp4(build_weight(spec, source.tensor, src))
        stem = spec.key
        assert torch.equal(native.packed, repaired.tensor(stem + ".weight"))
        assert torch.equal(
            native.block_scale.view(torch.uint8), repaired.tensor(stem + ".weight_scale").view(torch.uint8)
        )
        assert torch.equal(
            native.global_scale.reshape(()), repaired.tensor(stem + ".weight_scale_2").reshape(())
        )
        checked += 1
    assert checked > 0


def test_already_native_weights_are_recognised():
    """The loader keeps an already ComfyUI-native layer's tensors as read (no copy); the rest converts."""
    from wan_nvfp4.kernels.nvfp4 import is_native_nvfp4

    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
    assert is_native_nvfp4(quantize_nvfp4(w))  # high_first, swizzled, 64 rows
    assert is_native_nvfp4(native_nvfp4(quantize_nvfp4(w, nibble_order=LOW_FIRST, scale_layout=LINEAR)))
    assert not is_native_nvfp4(quantize_nvfp4(w, nibble_order=LOW_FIRST))
    assert not is_native_nvfp4(quantize_nvfp4(w, scale_layout=LINEAR))
    assert not is_native_nvfp4(quantize_nvfp4(torch.randn(40, 64)))  # rows not padded to 16
    assert is_native_nvfp4(native_nvfp4(quantize_nvfp4(torch.randn(40, 64))))
