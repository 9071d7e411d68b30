"""The classifier against each fixture's ground truth (written by the fixture builder, not the classifier)."""

import json

import pytest
import torch

from wan_nvfp4.checkpoint import StateDictSource, classify_checkpoint
from wan_nvfp4.checkpoint.errors import CheckpointError
from wan_nvfp4.checkpoint.layers import FLOAT, NVFP4
from wan_nvfp4.checkpoint.tiny import fixtures as F
from wan_nvfp4.kernels import HIGH_FIRST, LINEAR, LOW_FIRST, SWIZZLED, NVFP4Weight, dequantize

ALL = sorted(F.FIXTURES)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixtures")
    built = {name: F.FIXTURES[name]() for name in ALL}
    return {name: (fx, fx.write(folder)) for name, fx in built.items()}


def _assert_matches_truth(info, fx):
    assert set(info.layers) == set(fx.layers)
    for name, truth in fx.layers.items():
        spec = info.layers[name]
        assert spec.format == truth.format, name
        assert spec.fp8_granularity == truth.fp8_granularity, name
        assert spec.assumed == truth.assumed, (name, spec.evidence)
        assert spec.key == fx.prefix + name
        if not fx.convention.misread:
            assert (spec.nibble_order, spec.scale_layout) == (truth.nibble_order, truth.scale_layout), name
        assert spec.evidence


@pytest.mark.parametrize("name", ALL)
def test_file_classification_matches_ground_truth(written, name):
    fx, path = written[name]
    info = classify_checkpoint(path, scan_block_scales=True)
    _assert_matches_truth(info, fx)
    assert info.prefix == fx.prefix
    assert info.variant.id == fx.variant
    assert info.errors == [], [p.message(path) for p in info.errors]
    assert info.usable


@pytest.mark.parametrize("name", ALL)
def test_in_memory_source_gives_the_same_answer(written, name):
    fx, _ = written[name]
    info = classify_checkpoint(fx.source(), sidecar_config=fx.sidecar_config)
    _assert_matches_truth(info, fx)


def test_misread_fixture_is_reported_as_an_assumption_not_a_fact(written):
    fx, path = written["modelopt_nvfp4_stripped"]
    info = classify_checkpoint(path)
    spec = info.layers["blocks.0.ffn.0"]
    # nothing in the file says low_first + linear: the honest answer is the ComfyUI convention, assumed
    assert (spec.nibble_order, spec.scale_layout, spec.assumed) == (HIGH_FIRST, SWIZZLED, True)
    assert "no metadata" in spec.evidence
    # the caller can override, and then the layer decodes to the bf16 source
    fixed = classify_checkpoint(path, nibble_order=LOW_FIRST, scale_layout=LINEAR)
    spec = fixed.layers["blocks.0.ffn.0"]
    assert "caller override" in spec.evidence and not spec.assumed
    w = dequantize(fixed.weight("blocks.0.ffn.0"))
    ref = fx.reference["blocks.0.ffn.0.weight"].float()
    assert float((w - ref).norm() / ref.norm()) < 0.15
    wrong = dequantize(info.weight("blocks.0.ffn.0"))
    assert float((wrong - ref).norm() / ref.norm()) > 0.5


def test_head_scale_shape_decides_the_layout_for_the_whole_file(written):
    _, path = written["user_replica"]
    info = classify_checkpoint(path)
    head = info.layers["head.head"]
    assert head.scale_layout == SWIZZLED and "this layer's block-scale shape" in head.evidence
    block = info.layers["blocks.1.self_attn.o"]
    assert block.scale_layout == SWIZZLED
    assert "decided for the whole file by the block-scale shape of head.head" in block.evidence
    assert block.nibble_order == HIGH_FIRST and block.assumed  # nibble order still assumed
    assert "ComfyUI's convention" in block.evidence


def test_linear_head_scale_implies_low_first(written):
    _, path = written["nvfp4_linear_no_metadata"]
    spec = classify_checkpoint(path).layers["blocks.0.self_attn.q"]
    assert (spec.nibble_order, spec.scale_layout, spec.assumed) == (LOW_FIRST, LINEAR, True)
    assert "linear-scale producer" in spec.evidence


@pytest.mark.parametrize(
    ("name", "roles"),
    [
        ("lightx2v_nvfp4", {"alpha", "input_global_scale"}),
        ("lightx2v_nvfp4_converter", {"inverse_global_scale"}),
    ],
)
def test_lightx2v_keys_decide_both_conventions(written, name, roles):
    """LightX2V's quantizer (lightx2v_kernel scaled_nvfp4_quant) packs low-first, writes swizzled scales."""
    _, path = written[name]
    spec = classify_checkpoint(path).layers["blocks.0.self_attn.q"]
    assert (spec.nibble_order, spec.scale_layout, spec.assumed) == (LOW_FIRST, SWIZZLED, False)
    assert "LightX2V keys" in spec.evidence and "scaled_nvfp4_quant" in spec.evidence
    assert roles <= spec.tensors.keys()


def test_lightx2v_weight_global_scale_is_the_reciprocal(written):
    """`weight_global_scale` = 2688 / amax: the dequant scale is its reciprocal (hand-checked on the file)."""
    from safetensors import safe_open

    _, path = written["lightx2v_nvfp4_converter"]
    info = classify_checkpoint(path)
    with safe_open(str(path), "pt") as f:
        stored = f.get_tensor("blocks.0.self_attn.q.weight_global_scale").item()
    assert stored > 1.0  # 2688 / amax of a small random weight: the reciprocal convention, not amax / 2688
    assert info.weight("blocks.0.self_attn.q").global_scale.item() == pytest.approx(1.0 / stored, rel=1e-6)


@pytest.mark.parametrize(("order", "layout"), [(LOW_FIRST, None), (None, LINEAR), (LOW_FIRST, LINEAR)])
def test_overrides_win_over_metadata_and_are_recorded(written, order, layout):
    _, path = written["comfy_nvfp4"]
    info = classify_checkpoint(path, nibble_order=order, scale_layout=layout)
    spec = info.layers["blocks.0.ffn.2"]
    assert spec.nibble_order == (order or HIGH_FIRST)
    assert spec.scale_layout == (layout or SWIZZLED)
    assert spec.evidence.count("caller override") == (order is not None) + (layout is not None)
    assert any("caller override" in line for line in info.evidence)


def test_override_contradicting_a_decisive_scale_shape_is_an_error(written):
    _, path = written["user_replica"]
    info = classify_checkpoint(path, scale_layout=LINEAR)
    errors = [p for p in info.errors if p.layer == "head.head"]
    assert errors and "linear layout" in errors[0].problem
    assert "[192, 16]" in errors[0].expected and "[256, 16]" in errors[0].found


def test_unknown_override_is_refused():
    with pytest.raises(CheckpointError, match="unknown nibble order override"):
        classify_checkpoint(F.FIXTURES["bf16"]().source(), nibble_order="sideways")


def test_sidecar_beside_the_file_is_modelopt_evidence(written, tmp_path):
    _, path = written["modelopt_nvfp4_sidecar"]
    spec = classify_checkpoint(path).layers["blocks.0.ffn.0"]
    assert "hf_quant_config.json beside the file" in spec.evidence
    # the same file without its sidecar is undecided
    alone = tmp_path / path.name
    alone.write_bytes(path.read_bytes())
    spec = classify_checkpoint(alone).layers["blocks.0.ffn.0"]
    assert spec.assumed and spec.nibble_order == HIGH_FIRST


def test_stray_sidecar_does_not_override_comfyui_metadata(written, tmp_path):
    _, path = written["comfy_nvfp4"]
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}}))
    info = classify_checkpoint(copy)
    assert info.layers["blocks.0.ffn.0"].nibble_order == HIGH_FIRST
    assert any("hf_quant_config.json beside the file ignored" in p.problem for p in info.warnings)


def test_prefixed_state_dict_names_layers_without_prefix(written):
    fx, _ = written["modelopt_comfy_single_file"]
    info = classify_checkpoint(fx.source())
    assert info.prefix == "model.diffusion_model."
    assert "blocks.0.self_attn.q" in info.layers
    assert (
        info.layers["blocks.0.self_attn.q"].tensors["weight"]
        == "model.diffusion_model.blocks.0.self_attn.q.weight"
    )


def test_layer_order_is_natural_and_weights_build(written):
    _, path = written["mixed"]
    info = classify_checkpoint(path)
    names = list(info.layers)
    assert names.index("blocks.1.ffn.2") < names.index("head.head") or names.index(
        "blocks.0.ffn.0"
    ) < names.index("blocks.1.ffn.0")
    assert isinstance(info.weight("blocks.0.self_attn.q"), NVFP4Weight)
    assert info.weight("blocks.0.ffn.2").dtype == torch.bfloat16
    assert {s.format for s in info.layers.values()} == {NVFP4, "fp8_scaled", FLOAT}


def _meta_state_dict(fx) -> dict[str, torch.Tensor]:
    """The fixture's keys at full WAN 14B size as meta tensors: shapes and dtypes only, nothing to read."""
    scale = {256: 5120, 512: 13824, 64: 64, 1536: 30720, 4096: 4096, 128: 2560, 32: 864}
    out = {}
    for key, t in fx.tensors.items():
        if t.numel() <= 1 or key.endswith(".comfy_quant"):
            out[key] = t  # small tensors stay real: the classifier may read them
        else:
            out[key] = torch.empty([scale.get(d, d) for d in t.shape], dtype=t.dtype, device="meta")
    return out


@pytest.mark.parametrize("name", ["comfy_nvfp4", "modelopt_nvfp4", "kijai_fp8", "mixed"])
def test_classification_reads_no_big_tensor(name):
    fx = F.FIXTURES[name](variant="wan2.1-t2v-14b")
    sd = _meta_state_dict(fx)
    info = classify_checkpoint(StateDictSource(sd, fx.metadata), sidecar_config=fx.sidecar_config)
    # meta tensors have no data: any read of a weight or block scale would fail or give meta values
    assert info.layers["blocks.0.ffn.0"].out_features == 13824
    assert {n: s.format for n, s in info.layers.items()} == {n: t.format for n, t in fx.layers.items()}


def _with_conventions_tensors(fx, conf) -> StateDictSource:
    """The fixture with a `<layer>.wan_nvfp4_conventions` tensor (what ComfyUI saves for a layer the pack
    loaded in a non-native convention) on every nvfp4 layer."""
    blob = torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)
    tensors = dict(fx.tensors)
    for name, truth in fx.layers.items():
        if truth.format == NVFP4:
            tensors[f"{fx.prefix}{name}.wan_nvfp4_conventions"] = blob
    return StateDictSource(tensors, fx.metadata)


def test_per_layer_conventions_tensor_decides_a_file_without_metadata():
    fx = F.FIXTURES["modelopt_nvfp4_stripped"]()  # low_first + linear, nothing in the file says so
    source = _with_conventions_tensors(fx, {"nibble_order": LOW_FIRST, "scale_layout": LINEAR})
    info = classify_checkpoint(source)
    nvfp4 = [s for s in info.layers.values() if s.format == NVFP4]
    assert nvfp4 and not info.problems and "wan_nvfp4_conventions" in info.provenance
    for spec in nvfp4:
        assert (spec.nibble_order, spec.scale_layout, spec.assumed) == (LOW_FIRST, LINEAR, False)
        assert "wan_nvfp4_conventions" in spec.evidence and "conventions" in spec.tensors
    # an override still wins over the tensor
    over = classify_checkpoint(source, nibble_order=HIGH_FIRST)
    assert all(s.nibble_order == HIGH_FIRST for s in over.layers.values() if s.format == NVFP4)


def test_unknown_values_in_the_conventions_tensor_are_not_evidence():
    fx = F.FIXTURES["modelopt_nvfp4_stripped"]()
    info = classify_checkpoint(_with_conventions_tensors(fx, {"nibble_order": "middle", "scale_layout": 3}))
    assert all(s.assumed for s in info.layers.values() if s.format == NVFP4)
