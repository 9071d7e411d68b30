"""repair: every foreign-convention fixture becomes ComfyUI-native with bit-identical dequantized weights,
read back by comfy-kitchen the way vanilla ComfyUI reads it; the input is never modified."""

import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.conventions.classify import classify_checkpoint
from wan_nvfp4.checkpoint.conventions.inspect import inspect_checkpoint
from wan_nvfp4.checkpoint.conventions.verdicts import LOADS_NATIVELY, REFUSES_ERROR
from wan_nvfp4.checkpoint.errors import CheckpointError
from wan_nvfp4.checkpoint.layers import FP8_SCALED, NVFP4, build_weight
from wan_nvfp4.checkpoint.reading.safetensors_io import SafetensorsFile
from wan_nvfp4.checkpoint.sqnr import sqnr_db
from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES
from wan_nvfp4.checkpoint.writing.repair import RepairOptions, repair_checkpoint
from wan_nvfp4.kernels import HIGH_FIRST, SWIZZLED, dequantize, dequantize_nvfp4

ck = pytest.importorskip("comfy_kitchen")

FOREIGN = [
    "comfy_nvfp4_comfy_quant",
    "modelopt_nvfp4",
    "modelopt_nvfp4_sidecar",
    "modelopt_comfy_single_file",
    "lightx2v_nvfp4",
    "lightx2v_nvfp4_converter",
    "user_replica",
    "nvfp4_linear_no_metadata",
    "modelopt_nvfp4_stripped",
    "comfy_fp8",
    "legacy_scaled_fp8",
    "kijai_fp8",
    "fp8_scale_weight_no_marker",
    "mixed",
]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _truth_weight(fx, spec, source, path):
    """The source layer read in the conventions it was really written in (fixture ground truth)."""
    truth = fx.layers[spec.name]
    if spec.format == NVFP4:
        spec = dataclasses.replace(spec, nibble_order=truth.nibble_order, scale_layout=truth.scale_layout)
    return build_weight(spec, source.tensor, path)


def _bit_equal(a, b):
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("name", FOREIGN)
def test_repair_is_lossless_and_comfyui_native(name, tmp_path):
    fx = FIXTURES[name]()
    src = fx.write(tmp_path / "in")
    before_hash = sha256(src)
    conv = fx.convention
    # a file whose conventions nothing states and the assumption gets wrong must be told (or use --reference)
    options = RepairOptions(
        nibble_order=conv.nibble_order if conv.misread else None,
        scale_layout=conv.scale_layout if conv.misread else None,
        verify="full",
    )
    dst = tmp_path / "out.safetensors"
    report = repair_checkpoint(src, dst, options)
    assert sha256(src) == before_hash
    inspected = inspect_checkpoint(dst)
    assert inspected.comfyui.outcome == LOADS_NATIVELY, inspected.comfyui.reasons[:3]
    assert report.verdicts == {"comfyui": LOADS_NATIVELY, "wan_nvfp4": inspected.pack.outcome}
    out_info = inspected.info
    assert out_info.prefix == fx.prefix
    src_info = classify_checkpoint(src)
    s, d = SafetensorsFile(src), SafetensorsFile(dst)
    keys = set(d.keys())
    assert not any(
        k.endswith(
            (
                ".scale_weight",
                ".scale_input",
                ".alpha",
                ".input_global_scale",
                ".weight_global_scale",
                ".input_absmax",
            )
        )
        for k in keys
    )
    assert fx.prefix + "scaled_fp8" not in keys
    listed = json.loads(d.metadata["_quantization_metadata"])["layers"]
    for lname, truth in fx.layers.items():
        after_spec = out_info.layers[lname]
        before = _truth_weight(fx, src_info.layers[lname], s, src)
        after = build_weight(after_spec, d.tensor, dst)
        assert _bit_equal(dequantize(before), dequantize(after)), lname
        if truth.format == NVFP4:
            assert (after_spec.nibble_order, after_spec.scale_layout, after_spec.assumed) == (
                HIGH_FIRST,
                SWIZZLED,
                False,
            )
            assert listed[fx.prefix + lname] == {"format": "nvfp4"}
            # vanilla ComfyUI's reader (comfy-kitchen, hi_first + swizzled defaults) sees the original weight
            with ck.use_backend("eager"):
                ck_w = ck.dequantize_nvfp4(after.packed, after.global_scale, after.block_scale, torch.float32)
            assert torch.equal(ck_w, dequantize_nvfp4(before, torch.float32, scale_first=True))
            assert sqnr_db(fx.reference[f"{lname}.weight"], ck_w) > 15.0
        elif truth.format == FP8_SCALED:
            assert listed[fx.prefix + lname] == {"format": "float8_e4m3fn"}
            assert d.shape(after_spec.tensors["scale"]) == ()
            ck_w = ck.dequantize_per_tensor_fp8(after.data, after.scale, output_type=torch.float32)
            assert torch.equal(ck_w, dequantize(before))
    assert "rewritten" in report.checks["lossless"]


# LightX2V file style -> (ComfyUI weight_scale_2, input_scale) by hand from the stored tensors
LIGHTX2V_SCALES = {
    "lightx2v_nvfp4": lambda t: (t["alpha"] * t["input_global_scale"], 1 / t["input_global_scale"]),
    "lightx2v_nvfp4_converter": lambda t: (1 / t["weight_global_scale"], t["input_absmax"] / 2688),
}


@pytest.mark.parametrize("name", list(LIGHTX2V_SCALES))
def test_lightx2v_scales_map_to_comfy_names(tmp_path, name):
    """alpha * input_global_scale, or 1 / weight_global_scale (2688 / amax), becomes weight_scale_2."""
    fx = FIXTURES[name]()
    src = fx.write(tmp_path)
    dst = tmp_path / "out.safetensors"
    repair_checkpoint(src, dst)
    s, d = SafetensorsFile(src), SafetensorsFile(dst)
    stem = "blocks.0.self_attn.q"
    keys = set(s.keys())
    suffixes = ("alpha", "input_global_scale", "weight_global_scale", "input_absmax")
    stored = {x: s.tensor(f"{stem}.{x}").float().item() for x in suffixes if f"{stem}.{x}" in keys}
    global_scale, input_scale = LIGHTX2V_SCALES[name](stored)
    assert d.tensor(f"{stem}.weight_scale_2").item() == pytest.approx(global_scale, rel=1e-7)
    assert d.tensor(f"{stem}.input_scale").item() == pytest.approx(input_scale, rel=1e-7)


def test_stripped_modelopt_needs_a_decision(tmp_path):
    """Negative: read by the assumption (ComfyUI convention) the output is noise; --reference fixes it."""
    fx = FIXTURES["modelopt_nvfp4_stripped"]()
    src = fx.write(tmp_path / "in")
    ref = FIXTURES["bf16"]().write(tmp_path / "ref")
    wrong = tmp_path / "assumed.safetensors"
    repair_checkpoint(src, wrong)
    info = classify_checkpoint(wrong)
    w = dequantize(info.weight("blocks.0.ffn.0"))
    assert sqnr_db(fx.reference["blocks.0.ffn.0.weight"], w) < 3.0
    right = tmp_path / "decided.safetensors"
    report = repair_checkpoint(src, right, reference=ref)
    assert any("decided low_first + linear" in n for n in report.notes)
    w = dequantize(classify_checkpoint(right).weight("blocks.0.ffn.0"))
    assert sqnr_db(fx.reference["blocks.0.ffn.0.weight"], w) > 15.0


def test_unrelated_reference_refuses_to_guess(tmp_path):
    src = FIXTURES["modelopt_nvfp4_stripped"]().write(tmp_path / "in")
    other = FIXTURES["bf16"](seed=1).write(tmp_path / "other")
    dst = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match="did not decide") as e:
        repair_checkpoint(src, dst, reference=other)
    assert str(src) in str(e.value)
    assert not dst.exists()


@pytest.mark.parametrize(
    ("mode", "outcome", "action"),
    [
        ("keep", REFUSES_ERROR, "copied"),
        ("requantize", LOADS_NATIVELY, "quantized"),
        ("bf16", LOADS_NATIVELY, "kept"),
    ],
)
def test_per_row_fp8_modes(mode, outcome, action, tmp_path):
    fx = FIXTURES["fp8_per_row"]()
    src = fx.write(tmp_path / "in")
    dst = tmp_path / "out.safetensors"
    report = repair_checkpoint(src, dst, RepairOptions(per_row_fp8=mode))
    assert inspect_checkpoint(dst).comfyui.outcome == outcome
    rows = [r for r in report.layers if r.source_format == FP8_SCALED]
    assert rows and all(r.action == action for r in rows)
    assert any("per-row" in n for n in report.notes)
    s_info, d_info = classify_checkpoint(src), classify_checkpoint(dst)
    s, d = SafetensorsFile(src), SafetensorsFile(dst)
    for r in rows:
        before = dequantize(build_weight(s_info.layers[r.name], s.tensor, src))
        after = dequantize(build_weight(d_info.layers[r.name], d.tensor, dst))
        if mode == "keep":  # untouched bytes, and the unknown-format marker that makes ComfyUI refuse stays
            assert _bit_equal(before, after)
        else:
            assert r.sqnr_db == pytest.approx(sqnr_db(before, after), abs=1e-6)
            assert r.sqnr_db > (40.0 if mode == "bf16" else 25.0)


def test_repair_refuses_destination_equal_to_source(tmp_path):
    src = FIXTURES["modelopt_nvfp4"]().write(tmp_path)
    before = sha256(src)
    with pytest.raises(CheckpointError, match="same file"):
        repair_checkpoint(src, src, RepairOptions(overwrite=True))
    assert sha256(src) == before


def test_legacy_scale_input_placeholder_is_dropped_like_comfyui(tmp_path):
    """ComfyUI's legacy conversion drops `scale_input == 1.0` (a placeholder) and keeps other values as
    `input_scale`; a kept 1.0 would be a static activation scale on fp8-capable GPUs."""
    fx = FIXTURES["legacy_scaled_fp8"]()
    placeholder, calibrated = "blocks.0.ffn.0", "blocks.0.ffn.2"
    tensors = dict(fx.tensors)
    tensors[f"{placeholder}.scale_input"] = torch.tensor([1.0])
    tensors[f"{calibrated}.scale_input"] = torch.tensor(0.02)
    src = tmp_path / "legacy.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(src), metadata=fx.metadata)
    dst = tmp_path / "out.safetensors"
    repair_checkpoint(src, dst)
    d = SafetensorsFile(dst)
    assert f"{placeholder}.input_scale" not in d
    assert d.tensor(f"{calibrated}.input_scale").item() == pytest.approx(0.02)
    assert not any(k.endswith(".scale_input") for k in d.entries)


def test_file_saved_with_conventions_markers_repairs_to_native(tmp_path):
    """What ComfyUI saves for a ModelOpt model the pack loaded: stored bytes + `wan_nvfp4_conventions`.
    Repair reads the markers (no assumption) and writes a file vanilla ComfyUI reads natively."""
    fx = FIXTURES["modelopt_nvfp4_stripped"]()  # low_first + linear, no metadata: only the markers tell
    marker = torch.tensor(list(b'{"nibble_order": "low_first", "scale_layout": "linear"}'), dtype=torch.uint8)
    tensors = dict(fx.tensors)
    for name, truth in fx.layers.items():
        if truth.format == NVFP4:
            tensors[f"{name}.wan_nvfp4_conventions"] = marker.clone()
    src = tmp_path / "saved_by_comfyui.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(src))
    dst = tmp_path / "out.safetensors"
    report = repair_checkpoint(src, dst)
    assert not any("assumed" in n for n in report.notes)
    inspected = inspect_checkpoint(dst)
    assert inspected.comfyui.outcome == LOADS_NATIVELY
    assert not any(k.endswith(".wan_nvfp4_conventions") for k in SafetensorsFile(dst).entries)
    s, d = SafetensorsFile(src), SafetensorsFile(dst)
    src_info = classify_checkpoint(src)
    for name, truth in fx.layers.items():
        if truth.format == NVFP4:
            before = _truth_weight(fx, src_info.layers[name], s, src)
            after = build_weight(inspected.info.layers[name], d.tensor, dst)
            assert _bit_equal(dequantize(before), dequantize(after)), name


def test_reference_with_a_file_without_nvfp4_layers_is_not_an_error(tmp_path):
    src = FIXTURES["kijai_fp8"]().write(tmp_path / "in")
    reference = FIXTURES["bf16"]().write(tmp_path / "ref")
    report = repair_checkpoint(src, tmp_path / "out.safetensors", reference=reference)
    assert report.verdicts["comfyui"] == LOADS_NATIVELY
    assert any("no NVFP4 layers" in n for n in report.notes)
