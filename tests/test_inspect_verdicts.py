"""Inspector report and verdicts on every fixture, against the fixture's ground truth (COMFYUI.md §1.5)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint import inspect_checkpoint
from wan_nvfp4.checkpoint.conventions.verdicts import (
    LOADS_NATIVELY,
    LOADS_SILENTLY_WRONG,
    PACK_LOADS,
    PACK_LOADS_ASSUMED,
    REFUSES_ERROR,
    REFUSES_SIZE_MISMATCH,
)
from wan_nvfp4.checkpoint.tiny import fixtures as F

ALL = sorted(F.FIXTURES)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixtures")
    out = {}
    for name in ALL:
        fx = F.FIXTURES[name]()
        out[name] = (fx, inspect_checkpoint(fx.write(folder)))
    return out


def test_ground_truth_covers_every_comfyui_outcome_of_the_tested_table():
    # COMFYUI.md §1.5: cases A/B/B2 natively, C refuses, D and F load silently wrong
    outcomes = {F.FIXTURES[n]().comfyui for n in ALL}
    assert {LOADS_NATIVELY, LOADS_SILENTLY_WRONG, REFUSES_SIZE_MISMATCH, REFUSES_ERROR} <= outcomes


@pytest.mark.parametrize("name", ALL)
def test_comfyui_verdict_matches_the_fixture(reports, name):
    fx, report = reports[name]
    assert report.comfyui.outcome == fx.comfyui, report.comfyui.reasons[:3]
    if fx.comfyui != LOADS_NATIVELY:
        assert report.comfyui.reasons  # says which layers and why


@pytest.mark.parametrize("name", ALL)
def test_pack_verdict_and_exit_code(reports, name):
    fx, report = reports[name]
    assumed = any(t.assumed for t in fx.layers.values())
    assert report.pack.outcome == (PACK_LOADS_ASSUMED if assumed else PACK_LOADS)
    assert report.usable and report.exit_code == 0
    if assumed:
        assert "--reference" in report.pack.summary


@pytest.mark.parametrize("name", ALL)
def test_json_report_keeps_the_issue_names(reports, name):
    fx, report = reports[name]
    data = json.loads(json.dumps(report.to_json()))  # JSON-serialisable
    assert data["variant"] == fx.variant
    assert set(data["layers"]) == set(fx.layers)
    for layer, truth in fx.layers.items():
        entry = data["layers"][layer]
        assert {"format", "nibble_order", "scale_layout", "evidence", "assumed"} <= entry.keys()
        assert entry["format"] == truth.format
        assert entry["assumed"] is truth.assumed
        assert isinstance(entry["evidence"], str) and entry["evidence"]
        if not fx.convention.misread:
            assert (entry["nibble_order"], entry["scale_layout"]) == (truth.nibble_order, truth.scale_layout)
    assert data["verdicts"]["comfyui"]["outcome"] == fx.comfyui
    assert data["exit_code"] == 0
    assert sum(e["tensors"] for e in data["census"].values()) == len(fx.tensors)


def test_text_report_of_the_users_file(reports):
    _, report = reports["user_replica"]
    text = report.to_text()
    assert "WAN variant: wan2.2-ti2v-5b" in text
    assert "uint8" in text and "float8_e4m3fn" in text and "float16" in text
    assert "Linear layers: 26 (nvfp4: 26)" in text
    assert (
        "nvfp4 high_first + swizzled: 25 layer(s) [ASSUMED]" in text
    )  # + head.head, decided by its own shape
    assert "decided for the whole file by the block-scale shape of head.head" in text
    assert "refuses to load: size mismatch" in text
    assert "non-standard dims" in text
    assert text.rstrip().endswith("(exit code 0)")


def test_text_report_census_counts(reports):
    fx, report = reports["user_replica"]
    counts = {dtype: e["tensors"] for dtype, e in report.info.census.items()}
    assert counts["uint8"] == counts["float8_e4m3fn"] == counts["float32"] == 26
    assert counts["float16"] == len(fx.tensors) - 3 * 26


def _variant_of(name, **changes):
    fx = F.FIXTURES[name]()
    tensors = dict(fx.tensors)
    for k, v in changes.items():
        if v is None:
            tensors.pop(k)
        else:
            tensors[k] = v
    return fx, tensors


def _report(tmp_path, tensors, metadata):
    path = tmp_path / "case.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return inspect_checkpoint(path)


def test_packed_layer_missing_from_comfyui_metadata_is_a_size_mismatch(tmp_path):
    fx, tensors = _variant_of("comfy_nvfp4")
    meta = json.loads(fx.metadata["_quantization_metadata"])
    del meta["layers"]["blocks.1.ffn.2"]
    report = _report(tmp_path, tensors, {"_quantization_metadata": json.dumps(meta)})
    assert report.comfyui.outcome == REFUSES_SIZE_MISMATCH
    assert any(r.startswith("blocks.1.ffn.2:") for r in report.comfyui.reasons)
    assert any("missing from the ComfyUI metadata" in p.problem for p in report.info.warnings)
    assert report.exit_code == 0  # this pack still reads it (file-level ComfyUI evidence)


def test_legacy_marker_is_ignored_when_quantization_metadata_exists(tmp_path):
    _, tensors = _variant_of("legacy_scaled_fp8")
    report = _report(tmp_path, tensors, {"_quantization_metadata": json.dumps({"layers": {}})})
    assert report.comfyui.outcome == LOADS_SILENTLY_WRONG


def test_marker_with_weight_scale_names_is_not_converted_by_comfyui(tmp_path):
    _, tensors = _variant_of("legacy_scaled_fp8")
    renamed = {
        (k[: -len("scale_weight")] + "weight_scale" if k.endswith(".scale_weight") else k): v
        for k, v in tensors.items()
    }
    report = _report(tmp_path, renamed, {})
    assert report.comfyui.outcome == LOADS_SILENTLY_WRONG
    assert report.pack.outcome == PACK_LOADS


def test_comfy_metadata_on_a_linear_head_scale_fails_in_comfyui(tmp_path):
    fx, tensors = _variant_of("nvfp4_linear_no_metadata")
    layers = {n: {"format": "nvfp4"} for n, t in fx.layers.items() if t.format == "nvfp4"}
    report = _report(tmp_path, tensors, {"_quantization_metadata": json.dumps({"layers": layers})})
    assert report.comfyui.outcome == REFUSES_ERROR
    assert any(r.startswith("head.head:") for r in report.comfyui.reasons)
    assert any("contradict the metadata" in p.problem for p in report.info.warnings)


def test_unquantized_fp8_marked_by_metadata_is_an_error_for_comfyui(tmp_path):
    _, tensors = _variant_of("fp8_plain")
    layers = {"blocks.0.ffn.0": {"format": "float8_e4m3fn"}}
    report = _report(tmp_path, tensors, {"_quantization_metadata": json.dumps({"layers": layers})})
    assert report.comfyui.outcome == REFUSES_ERROR


def test_a_bad_layer_makes_the_file_unusable_for_the_pack(tmp_path):
    fx, tensors = _variant_of(
        "comfy_nvfp4", **{"blocks.0.self_attn.q.weight_scale_2": torch.tensor(float("nan"))}
    )
    report = _report(tmp_path, tensors, fx.metadata)
    assert report.pack.outcome == "refuses" and report.exit_code == 1
    assert "blocks.0.self_attn.q" in report.pack.reasons[0]
    assert "NOT usable (exit code 1)" in report.to_text()
