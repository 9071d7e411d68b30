"""convert: round trips (convert -> classify -> build_weight -> linear) against comfy-kitchen, torchao and the
bf16 source; the report's SQNR predicts the output error; the input is never modified."""

import hashlib
import json
import math

import pytest
import torch

from wan_nvfp4.checkpoint.conventions.classify import classify_checkpoint
from wan_nvfp4.checkpoint.conventions.inspect import inspect_checkpoint
from wan_nvfp4.checkpoint.conventions.verdicts import LOADS_NATIVELY
from wan_nvfp4.checkpoint.errors import CheckpointError
from wan_nvfp4.checkpoint.layers import FLOAT, FP8_SCALED, NVFP4, build_weight
from wan_nvfp4.checkpoint.reading.safetensors_io import SafetensorsFile
from wan_nvfp4.checkpoint.sqnr import sqnr_db
from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES
from wan_nvfp4.checkpoint.writing.convert import ConvertOptions, convert_checkpoint
from wan_nvfp4.checkpoint.writing.presets import PresetOptions
from wan_nvfp4.kernels import HIGH_FIRST, LINEAR, LOW_FIRST, SWIZZLED, dequantize, linear_reference

ck = pytest.importorskip("comfy_kitchen")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    return {name: FIXTURES[name]().write(folder) for name in ("bf16", "kijai_fp8", "comfy_nvfp4")}


@pytest.fixture(scope="module")
def reference():
    return FIXTURES["bf16"]().reference


def _convert(src, tmp_path, name="out.safetensors", **kw):
    dst = tmp_path / name
    report = convert_checkpoint(src, dst, ConvertOptions(**kw))
    return dst, report


def _output_sqnr(w_ref: torch.Tensor, weight) -> float:
    """SQNR of y = x W^T through the reference linear, for a random input independent of the error."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, w_ref.shape[1], generator=g)
    return sqnr_db(x @ w_ref.float().T, linear_reference(x, weight))


def test_comfy_nvfp4_round_trip(sources, reference, tmp_path):
    src = sources["bf16"]
    before = sha256(src)
    dst, report = _convert(src, tmp_path)
    assert sha256(src) == before  # the input's bytes are unchanged
    inspected = inspect_checkpoint(dst)
    info = inspected.info
    assert inspected.usable and not info.errors and info.variant.id == "wan2.2-ti2v-5b"
    assert inspected.comfyui.outcome == LOADS_NATIVELY
    meta = json.loads(SafetensorsFile(dst).metadata["_quantization_metadata"])
    assert meta["format_version"] == "1.0"
    results = {r.name: r for r in report.layers}
    quantized = [n for n, s in info.layers.items() if s.format == NVFP4]
    assert set(quantized) == {n for n in info.layers if n.startswith("blocks.")}
    assert set(meta["layers"]) == set(quantized)
    for name in ("text_embedding.0", "time_projection.1", "head.head"):
        assert info.layers[name].format == FLOAT and info.layers[name].weight_dtype == torch.bfloat16
    f = SafetensorsFile(dst)
    for name in quantized:
        spec = info.layers[name]
        assert (spec.nibble_order, spec.scale_layout, spec.assumed) == (HIGH_FIRST, SWIZZLED, False)
        w_ref = reference[f"{name}.weight"]
        weight = build_weight(spec, f.tensor, dst)
        # the bytes are exactly comfy-kitchen's quantizer output (padding included)
        q, s = ck.quantize_nvfp4(w_ref, weight.global_scale, epsilon=0.0, pad_16x=False)
        assert torch.equal(weight.packed, q)
        assert torch.equal(weight.block_scale.view(torch.uint8), s.view(torch.uint8))
        # comfy-kitchen reads it back (what vanilla ComfyUI does) bit-identically to our dequant
        with ck.use_backend("eager"):
            ck_w = ck.dequantize_nvfp4(weight.packed, weight.global_scale, weight.block_scale, torch.float32)
        assert torch.equal(ck_w, dequantize_nvfp4_scale_first(weight))
        # the report's SQNR is the dequantized weight's, and predicts the output error of the loaded layer
        assert results[name].sqnr_db == pytest.approx(sqnr_db(w_ref, dequantize(weight)), abs=1e-6)
        assert 15.0 < results[name].sqnr_db < 25.0
        assert _output_sqnr(w_ref, weight) == pytest.approx(results[name].sqnr_db, abs=1.5)
    saved = json.loads((tmp_path / "out.convert-report.json").read_text())
    assert saved["layers"]["blocks.0.ffn.0"]["sqnr_db"] == pytest.approx(
        results["blocks.0.ffn.0"].sqnr_db, abs=1e-3
    )
    assert saved["summary"]["layers"] == {
        "quantized": len(quantized),
        "kept": len(info.layers) - len(quantized),
    }


def dequantize_nvfp4_scale_first(weight):
    from wan_nvfp4.kernels import dequantize_nvfp4

    return dequantize_nvfp4(weight, torch.float32, scale_first=True)


def test_modelopt_layout_round_trip_against_torchao(sources, reference, tmp_path):
    nvfp4_tensor = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    dst, _ = _convert(sources["bf16"], tmp_path, layout="modelopt")
    info = classify_checkpoint(dst)
    assert not info.errors
    header = json.loads(SafetensorsFile(dst).metadata["quantization_config"])
    assert header["producer"]["name"] == "modelopt"
    assert "_quantization_metadata" not in SafetensorsFile(dst).metadata
    f = SafetensorsFile(dst)
    for name, spec in info.layers.items():
        if spec.format != NVFP4:
            continue
        assert (spec.nibble_order, spec.scale_layout, spec.assumed) == (LOW_FIRST, LINEAR, False)
        weight = build_weight(spec, f.tensor, dst)
        t = nvfp4_tensor.NVFP4Tensor(
            weight.packed,
            weight.block_scale,
            16,
            torch.float32,
            per_tensor_scale=weight.global_scale.reshape(()),
        )
        assert torch.equal(t.dequantize(torch.float32), dequantize_nvfp4_scale_first(weight))
        assert sqnr_db(reference[f"{name}.weight"], dequantize(weight)) > 15.0


@pytest.mark.parametrize("layout", ["comfy", "modelopt"])
def test_fp8_round_trip(sources, reference, tmp_path, layout):
    dst, report = _convert(sources["bf16"], tmp_path, target="fp8", layout=layout)
    inspected = inspect_checkpoint(dst)
    info = inspected.info
    assert inspected.comfyui.outcome == LOADS_NATIVELY  # fp8 tensors are identical in both layouts
    assert ("quantization_config" in SafetensorsFile(dst).metadata) == (layout == "modelopt")
    meta = json.loads(SafetensorsFile(dst).metadata["_quantization_metadata"])
    f = SafetensorsFile(dst)
    results = {r.name: r for r in report.layers}
    for name, spec in info.layers.items():
        if spec.format != FP8_SCALED:
            continue
        assert meta["layers"][name] == {"format": "float8_e4m3fn"}
        assert spec.weight_dtype == torch.float8_e4m3fn and spec.fp8_granularity == "tensor"
        assert f.shape(spec.tensors["scale"]) == () and f.dtype(spec.tensors["scale"]) == torch.float32
        weight = build_weight(spec, f.tensor, dst)
        w_ref = reference[f"{name}.weight"]
        ck_w = ck.dequantize_per_tensor_fp8(weight.data, weight.scale, output_type=torch.float32)
        assert torch.equal(ck_w, dequantize(weight))
        assert results[name].sqnr_db == pytest.approx(sqnr_db(w_ref, dequantize(weight)), abs=1e-6)
        assert _output_sqnr(w_ref, weight) == pytest.approx(results[name].sqnr_db, abs=1.5)


def test_scaled_fp8_source_is_dequantized_then_requantized(sources, tmp_path):
    src = sources["kijai_fp8"]
    before = sha256(src)
    src_info = classify_checkpoint(src)
    dst, report = _convert(src, tmp_path)
    assert sha256(src) == before
    inspected = inspect_checkpoint(dst)
    info = inspected.info
    assert inspected.comfyui.outcome == LOADS_NATIVELY
    keys = set(SafetensorsFile(dst).keys())
    assert "scaled_fp8" not in keys and not any(k.endswith(".scale_weight") for k in keys)
    s, d = SafetensorsFile(src), SafetensorsFile(dst)
    by_name = {r.name: r for r in report.layers}
    for name, spec in info.layers.items():
        source_w = dequantize(build_weight(src_info.layers[name], s.tensor, src))
        if spec.format == NVFP4:  # SQNR is against the dequantized fp8 source
            got = sqnr_db(source_w, dequantize(build_weight(spec, d.tensor, dst)))
            assert by_name[name].sqnr_db == pytest.approx(got, abs=1e-6)
        elif src_info.layers[name].format == FP8_SCALED:  # kept (head.head): dequantized to bf16
            assert spec.format == FLOAT and spec.weight_dtype == torch.bfloat16
            assert by_name[name].action == "kept" and by_name[name].sqnr_db > 40


def test_fp8_source_to_fp8_copies_bytes(sources, tmp_path):
    src = sources["kijai_fp8"]
    dst, report = _convert(src, tmp_path, target="fp8")
    s_info, d_info = classify_checkpoint(src), classify_checkpoint(dst)
    s, d = SafetensorsFile(src), SafetensorsFile(dst)
    copied = [r for r in report.layers if r.action == "copied"]
    assert copied and all(r.sqnr_db == math.inf for r in copied)
    for r in copied:
        a, b = s_info.layers[r.name], d_info.layers[r.name]
        assert torch.equal(
            s.tensor(a.tensors["weight"]).view(torch.uint8), d.tensor(b.tensors["weight"]).view(torch.uint8)
        )
        assert s.tensor(a.tensors["scale"]).item() == d.tensor(b.tensors["scale"]).item()


def test_prefix_kept_and_keep_options(reference, tmp_path):
    from safetensors.torch import save_file

    prefix = "model.diffusion_model."
    src = tmp_path / "prefixed.safetensors"
    save_file({prefix + k: v for k, v in reference.items()}, str(src))
    options = ConvertOptions(
        preset=PresetOptions(keep_last_blocks=1, keep=(r"\.ffn\.2$",)), keep_dtype=torch.float16
    )
    dst = tmp_path / "o.safetensors"
    report = convert_checkpoint(src, dst, options)
    f = SafetensorsFile(dst)
    assert all(k.startswith(prefix) for k in list(f.keys()))
    meta = json.loads(f.metadata["_quantization_metadata"])
    assert set(meta["layers"]) == {prefix + r.name for r in report.layers if r.action == "quantized"}
    quantized = {r.name for r in report.layers if r.action == "quantized"}
    assert quantized == {
        f"blocks.0.{p}"
        for p in (
            "self_attn.q",
            "self_attn.k",
            "self_attn.v",
            "self_attn.o",
            "cross_attn.q",
            "cross_attn.k",
            "cross_attn.v",
            "cross_attn.o",
            "ffn.0",
        )
    }
    assert f.dtype(prefix + "blocks.1.ffn.0.weight") == torch.float16  # kept and cast
    assert f.dtype(prefix + "blocks.0.self_attn.q.bias") == torch.float16
    assert f.dtype(prefix + "patch_embedding.weight") == torch.float16
    inspected = inspect_checkpoint(dst)
    assert inspected.info.prefix == prefix and inspected.comfyui.outcome == LOADS_NATIVELY


def test_refusals_name_file_and_layer(sources, tmp_path):
    with pytest.raises(CheckpointError) as e:
        _convert(sources["comfy_nvfp4"], tmp_path)
    assert "already NVFP4" in str(e.value) and "repair" in str(e.value)
    assert str(sources["comfy_nvfp4"]) in str(e.value) and "blocks.0." in str(e.value)
    with pytest.raises(CheckpointError, match="same file"):
        convert_checkpoint(sources["bf16"], sources["bf16"], ConvertOptions(overwrite=True))
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="already exists"):
        convert_checkpoint(sources["bf16"], existing)
    assert existing.read_bytes() == b"x"
    assert not list(tmp_path.glob(".*.tmp"))


def test_nan_weight_is_refused_with_layer_name(reference, tmp_path):
    from safetensors.torch import save_file

    bad = dict(reference)
    w = bad["blocks.1.ffn.0.weight"].clone()
    w[3, 5] = float("nan")
    bad["blocks.1.ffn.0.weight"] = w
    src = tmp_path / "nan.safetensors"
    save_file(bad, str(src))
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(src, tmp_path / "o.safetensors")
    assert "blocks.1.ffn.0" in str(e.value) and "NaN" in str(e.value)
    assert not (tmp_path / "o.safetensors").exists()
