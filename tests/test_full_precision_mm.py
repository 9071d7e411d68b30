"""ComfyUI's per-layer `full_precision_matrix_mult` (never quantize this layer's activations): read from the
header `_quantization_metadata` or a layer's `.comfy_quant` (the header wins, as in ComfyUI) and from a legacy
two-element `scaled_fp8` marker; shown by `inspect`; kept by `repair` and `convert`, for exactly the layers
that had it. ComfyUI runs a flagged layer with full-precision activations even where it would otherwise use
the W4A4 FP4 GEMM; tests/test_comfy_native_fp4.py checks the loader does the same."""

import json

import pytest
import torch
from safetensors import safe_open

from wan_nvfp4.checkpoint.conventions.classify import classify_checkpoint
from wan_nvfp4.checkpoint.conventions.inspect import inspect_checkpoint
from wan_nvfp4.checkpoint.layers import FULL_PRECISION_MM, json_marker
from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES, with_full_precision_mm
from wan_nvfp4.checkpoint.writing.convert import ConvertOptions, convert_checkpoint
from wan_nvfp4.checkpoint.writing.repair import repair_checkpoint

FLAGGED = ("blocks.0.self_attn.q", "blocks.1.ffn.2")
QUANTIZED_FIXTURES = ["comfy_nvfp4", "comfy_nvfp4_comfy_quant", "mixed", "comfy_fp8"]


def _flagged_fixture(name: str):
    fx = FIXTURES[name]()
    layers = [n for n in FLAGGED if fx.layers[n].format != "float"]
    return with_full_precision_mm(fx, layers), set(layers)


def _header_flags(path) -> dict[str, bool]:
    with safe_open(str(path), "pt") as f:
        layers = json.loads(f.metadata()["_quantization_metadata"])["layers"]
    return {stem: conf.get(FULL_PRECISION_MM, False) for stem, conf in layers.items()}


@pytest.mark.parametrize("name", QUANTIZED_FIXTURES)
def test_flag_is_read_for_exactly_the_flagged_layers(tmp_path, name):
    fx, flagged = _flagged_fixture(name)
    assert flagged, "the fixture must flag at least one quantized layer"
    info = classify_checkpoint(fx.write(tmp_path))
    assert {n for n, spec in info.layers.items() if spec.full_precision_mm} == flagged
    plain = classify_checkpoint(FIXTURES[name]().write(tmp_path / "plain"))
    assert not any(spec.full_precision_mm for spec in plain.layers.values()), "no flag, no full precision"


def test_header_wins_over_comfy_quant(tmp_path):
    """ComfyUI builds its layer configs from the header when there is one; a `.comfy_quant` saying otherwise
    does not count."""
    fx, flagged = _flagged_fixture("comfy_nvfp4")
    stem = fx.prefix + "blocks.1.self_attn.k"
    fx.tensors[stem + ".comfy_quant"] = json_marker({"format": "nvfp4", FULL_PRECISION_MM: True})
    info = classify_checkpoint(fx.write(tmp_path))
    assert {n for n, spec in info.layers.items() if spec.full_precision_mm} == flagged


@pytest.mark.parametrize(("elements", "expected"), [(0, False), (2, True)])
def test_legacy_scaled_fp8_marker_of_two_elements_means_full_precision(tmp_path, elements, expected):
    """comfy/utils.py `convert_old_quants`: a 2-element `scaled_fp8` marker flags each scale_weight layer."""
    fx = FIXTURES["legacy_scaled_fp8"]()
    fx.tensors[fx.prefix + "scaled_fp8"] = torch.zeros(elements, dtype=torch.float8_e4m3fn)
    info = classify_checkpoint(fx.write(tmp_path))
    fp8 = [spec for spec in info.layers.values() if spec.format == "fp8_scaled"]
    assert fp8 and all(spec.full_precision_mm == expected for spec in fp8)
    assert not any(spec.full_precision_mm for spec in info.layers.values() if spec.format == "float")


def test_inspect_names_the_flagged_layers(tmp_path):
    fx, flagged = _flagged_fixture("mixed")
    report = inspect_checkpoint(fx.write(tmp_path))
    text = report.to_text()
    assert f"full-precision matmul requested (full_precision_matrix_mult): {len(flagged)} layer(s)" in text
    layers = report.to_json()["layers"]
    assert {n for n, layer in layers.items() if layer["full_precision_mm"]} == flagged
    plain = inspect_checkpoint(FIXTURES["mixed"]().write(tmp_path / "plain")).to_text()
    assert "full_precision_matrix_mult" not in plain


@pytest.mark.parametrize("name", ["comfy_nvfp4_comfy_quant", "mixed"])
def test_repair_keeps_the_flag_of_exactly_those_layers(tmp_path, name):
    fx, flagged = _flagged_fixture(name)
    out = tmp_path / "repaired.safetensors"
    repair_checkpoint(fx.write(tmp_path), out, save_report=False)
    flags = _header_flags(out)
    assert {stem for stem, on in flags.items() if on} == {fx.prefix + n for n in flagged}
    info = classify_checkpoint(out)
    assert {n for n, spec in info.layers.items() if spec.full_precision_mm} == flagged


def test_repair_of_a_legacy_full_precision_file_states_it_in_comfyui_metadata(tmp_path):
    fx = FIXTURES["legacy_scaled_fp8"]()
    fx.tensors[fx.prefix + "scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    out = tmp_path / "repaired.safetensors"
    repair_checkpoint(fx.write(tmp_path), out, save_report=False)
    flags = _header_flags(out)
    assert flags and all(flags.values()), "every legacy scaled layer keeps full-precision matmul"


@pytest.mark.parametrize("target", ["nvfp4", "fp8"])
def test_convert_keeps_the_flag_of_requantized_and_copied_layers(tmp_path, target):
    """A scaled-FP8 source: re-quantized to NVFP4, or its bytes copied to FP8; the flags go along."""
    fx, flagged = _flagged_fixture("comfy_fp8")
    out = tmp_path / f"converted_{target}.safetensors"
    convert_checkpoint(
        fx.write(tmp_path), out, ConvertOptions(target=target, layout="comfy"), save_report=False
    )
    flags = _header_flags(out)
    assert {stem for stem, on in flags.items() if on} == {fx.prefix + n for n in flagged}
