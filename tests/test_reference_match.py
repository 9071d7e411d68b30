"""Reference matching decides every NVFP4 fixture's conventions (ground truth from how it was built) against
a bf16 or scaled-FP8 copy of the same model, and says "inconclusive" for an unrelated reference."""

import json

import pytest
import torch

from wan_nvfp4.checkpoint.conventions.reference_match import (
    INCONCLUSIVE,
    compare_with_reference,
    decide_conventions,
)
from wan_nvfp4.checkpoint.layers import NVFP4
from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

NVFP4_FIXTURES = sorted(
    name for name, build in FIXTURES.items() if any(t.format == NVFP4 for t in build().layers.values())
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("ref")


@pytest.fixture(scope="module")
def references(folder):
    return {
        "bf16": FIXTURES["bf16"]().write(folder / "bf16"),
        "fp8": FIXTURES["comfy_fp8"]().write(folder / "fp8"),
        "unrelated": FIXTURES["bf16"](seed=1).write(folder / "unrelated"),
    }


def _truth(fx) -> tuple[str, str]:
    convs = {(t.nibble_order, t.scale_layout) for t in fx.layers.values() if t.format == NVFP4}
    assert len(convs) == 1
    return convs.pop()


def test_every_nvfp4_fixture_is_covered():
    assert len(NVFP4_FIXTURES) >= 8 and "modelopt_nvfp4_stripped" in NVFP4_FIXTURES


@pytest.mark.parametrize("name", NVFP4_FIXTURES)
@pytest.mark.parametrize("ref", ["bf16", "fp8"])
def test_reference_decides_the_true_convention(name, ref, folder, references):
    fx = FIXTURES[name]()
    path = fx.write(folder / name)
    match = compare_with_reference(path, references[ref])
    assert match.decided, match.to_text()
    assert (match.nibble_order, match.scale_layout) == _truth(fx)
    assert all(m.decided and m.margin_db >= match.margin_db for m in match.layers)
    assert len(match.layers) == min(8, sum(t.format == NVFP4 for t in fx.layers.values()))
    if fx.convention.misread:  # the file's own (assumed) convention is wrong and the check says so
        assert match.agrees_with_file() is False and "CONTRADICTS" in match.to_text()
    else:
        assert match.agrees_with_file() is True


def test_unrelated_reference_is_inconclusive(folder, references):
    path = FIXTURES["modelopt_nvfp4"]().write(folder / "modelopt_unrelated")
    match = compare_with_reference(path, references["unrelated"])
    assert not match.decided
    assert (match.nibble_order, match.scale_layout) == (INCONCLUSIVE, INCONCLUSIVE)
    assert "does not look like the same model" in match.reason
    best = max(v for m in match.layers for v in m.sqnr.values() if v is not None)
    assert best < 3.0  # every candidate is noise


def test_file_without_nvfp4_layers_is_inconclusive(references):
    match = compare_with_reference(references["fp8"], references["bf16"])
    assert not match.decided and "no NVFP4 layers" in match.reason


def test_report_json_and_text(folder, references):
    path = FIXTURES["lightx2v_nvfp4"]().write(folder / "lx")
    match = compare_with_reference(path, references["bf16"], max_layers=3, max_rows=32)
    data = json.loads(json.dumps(match.to_json()))
    assert data["decided"] and data["nibble_order"] == "low_first" and data["scale_layout"] == "swizzled"
    assert len(data["layers"]) == 3
    layer = next(iter(data["layers"].values()))
    assert set(layer["sqnr_db"]) == {
        "low_first+linear",
        "low_first+swizzled",
        "high_first+linear",
        "high_first+swizzled",
    }
    assert layer["rows_compared"] == 32
    text = match.to_text()
    assert "low_first+swizzled" in text and "decided low_first + swizzled" in text


def test_decide_conventions_on_in_memory_sources():
    fx = FIXTURES["modelopt_nvfp4_stripped"]()
    ref = FIXTURES["bf16"]()
    match = decide_conventions(fx.source(), ref.source())
    assert match.decided and (match.nibble_order, match.scale_layout) == ("low_first", "linear")
    assert len(match.layers) == 4 and all(m.rows == 64 for m in match.layers)


def _with_nvfp4(fx, change):
    """The fixture's tensors with `change(name, tensors)` applied to every NVFP4 layer."""
    tensors = dict(fx.tensors)
    for name, truth in fx.layers.items():
        if truth.format == NVFP4:
            change(fx.prefix + name, tensors)
    return tensors


def test_nan_block_scales_never_decide(references):
    """NaN block scales make every candidate's SQNR NaN: that is no evidence for any convention."""
    from wan_nvfp4.checkpoint.reading.safetensors_io import StateDictSource

    fx = FIXTURES["modelopt_nvfp4"]()

    def nan_scales(stem, tensors):
        key = stem + ".weight_scale"
        tensors[key] = torch.full_like(tensors[key].view(torch.uint8), 0x7F).view(torch.float8_e4m3fn)

    source = StateDictSource(_with_nvfp4(fx, nan_scales), fx.metadata)
    match = compare_with_reference(source, references["bf16"])
    assert not match.decided and (match.nibble_order, match.scale_layout) == (INCONCLUSIVE, INCONCLUSIVE)


def test_all_candidates_exact_is_a_tie_not_a_decision():
    """Zero weights in both files: every candidate reproduces the reference exactly (inf dB): a tie."""
    from wan_nvfp4.checkpoint.reading.safetensors_io import StateDictSource

    fx, ref = FIXTURES["modelopt_nvfp4"](), FIXTURES["bf16"]()

    def zero(stem, tensors):
        tensors[stem + ".weight"] = torch.zeros_like(tensors[stem + ".weight"])

    ref_tensors = {k: (torch.zeros_like(v) if k.endswith(".weight") else v) for k, v in ref.tensors.items()}
    match = compare_with_reference(
        StateDictSource(_with_nvfp4(fx, zero), fx.metadata), StateDictSource(ref_tensors)
    )
    assert all(v == float("inf") for m in match.layers for v in m.sqnr.values())
    assert not match.decided and "less than" in match.reason
