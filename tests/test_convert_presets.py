"""WAN preset: which Linears a conversion quantizes (names from FORMATS.md §7.1), with reasons."""

import pytest

from wan_nvfp4.checkpoint.writing.presets import LayerSelector, PresetOptions

BLOCK_LINEARS = [
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "cross_attn.k_img",
    "cross_attn.v_img",
    "ffn.0",
    "ffn.2",
]
KEPT_TOP_LEVEL = [
    "text_embedding.0",
    "text_embedding.2",
    "time_embedding.0",
    "time_embedding.2",
    "time_projection.1",
    "head.head",
    "img_emb.proj.1",
    "img_emb.proj.3",
    "vace_blocks.0.self_attn.q",
    "vace_blocks.0.after_proj",
    "vace_blocks.0.before_proj",
    "control_adapter.proj",
]


def _names(num_blocks=6):
    return [f"blocks.{i}.{n}" for i in range(num_blocks) for n in BLOCK_LINEARS] + KEPT_TOP_LEVEL


@pytest.mark.parametrize("target", ["nvfp4", "fp8"])
def test_wan_preset_quantizes_block_linears_and_keeps_the_rest(target):
    sel = LayerSelector(PresetOptions(), _names())
    for name in _names():
        d = sel.decide(name, (256, 256), target)
        assert d.quantize == name.startswith("blocks."), (name, d)
    assert "text embedding" in sel.decide("text_embedding.0", (256, 4096), target).reason
    assert "VACE" in sel.decide("vace_blocks.0.after_proj", (256, 256), target).reason
    assert "camera" in sel.decide("control_adapter.proj", (256, 256), target).reason


def test_keep_first_and_last_blocks():
    sel = LayerSelector(PresetOptions(keep_first_blocks=2, keep_last_blocks=1), _names(6))
    quantized_blocks = {
        int(n.split(".")[1])
        for n in _names(6)
        if n.startswith("blocks.") and sel.decide(n, (64, 64), "nvfp4").quantize
    }
    assert quantized_blocks == {2, 3, 4}
    assert "first 2" in sel.decide("blocks.1.ffn.0", (64, 64), "nvfp4").reason
    assert "last 1" in sel.decide("blocks.5.ffn.0", (64, 64), "nvfp4").reason


def test_nvfp4_needs_k_multiple_of_16_fp8_does_not():
    sel = LayerSelector(PresetOptions(), _names())
    d = sel.decide("blocks.0.ffn.0", (64, 40), "nvfp4")
    assert not d.quantize and "multiple of 16" in d.reason
    assert sel.decide("blocks.0.ffn.0", (64, 40), "fp8").quantize


def test_non_2d_weights_are_never_quantized_and_user_keep_regex():
    sel = LayerSelector(PresetOptions(preset="all", keep=(r"\.ffn\.2$",)), _names())
    assert not sel.decide("blocks.0.modulation", (1, 6, 64), "nvfp4").quantize
    assert sel.decide("text_embedding.0", (64, 4096), "nvfp4").quantize  # preset "all" keeps nothing
    d = sel.decide("blocks.3.ffn.2", (64, 256), "nvfp4")
    assert not d.quantize and "--keep" in d.reason


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        LayerSelector(PresetOptions(preset="nope"), [])
    with pytest.raises(ValueError, match="target format"):
        LayerSelector(PresetOptions(), []).decide("blocks.0.ffn.0", (16, 16), "int4")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        LayerSelector(PresetOptions(keep=("blocks\\.(",)), [])
