"""WAN variant detection on full-size key sets (meta tensors: shapes only), packed and unpacked, and fixtures.

The full-size structures are written here from the published configs (FORMATS.md §7, COMFYUI.md §2.2-§2.3),
independently of the detector's tables.
"""

import pytest
import torch

from wan_nvfp4.checkpoint import StateDictSource, classify_checkpoint, detect_variant
from wan_nvfp4.checkpoint.tiny import fixtures as F


def _meta(*shape, dtype=torch.bfloat16):
    return torch.empty(shape, dtype=dtype, device="meta")


def _linear(sd, name, n, k, packed):
    sd[f"{name}.weight"] = _meta(n, k // 2, dtype=torch.uint8) if packed else _meta(n, k)
    sd[f"{name}.bias"] = _meta(n)


def full_size(dim, ffn, layers, in_dim, out_dim, *, i2v=False, emb_pos=False, vace=0, extra=(), packed=False):
    """A WAN state dict with real shapes (meta tensors): what ComfyUI's detection reads."""
    sd = {
        "patch_embedding.weight": _meta(dim, in_dim, 1, 2, 2, dtype=torch.float32),
        "head.modulation": _meta(1, 2, dim),
    }
    _linear(sd, "head.head", 4 * out_dim, dim, packed)
    _linear(sd, "text_embedding.0", dim, 4096, packed)
    _linear(sd, "time_embedding.0", dim, 256, packed)
    _linear(sd, "time_projection.1", 6 * dim, dim, packed)
    groups = [f"blocks.{i}" for i in range(layers)] + [f"vace_blocks.{i}" for i in range(vace)]
    for b in groups:
        for p in ("self_attn.q", "self_attn.o", "cross_attn.q", "cross_attn.k"):
            _linear(sd, f"{b}.{p}", dim, dim, packed)
        if i2v and b.startswith("blocks."):
            _linear(sd, f"{b}.cross_attn.k_img", dim, dim, packed)
        _linear(sd, f"{b}.ffn.0", ffn, dim, packed)
        _linear(sd, f"{b}.ffn.2", dim, ffn, packed)
        sd[f"{b}.modulation"] = _meta(1, 6, dim)
    if i2v:
        sd["img_emb.proj.0.bias"] = _meta(1280)
        _linear(sd, "img_emb.proj.1", 1280, 1280, False)
    if emb_pos:
        sd["img_emb.emb_pos"] = _meta(1, 514, 1280)
    if vace:
        sd["vace_patch_embedding.weight"] = _meta(dim, 96, 1, 2, 2)
    for key in extra:
        sd[key] = _meta(4)
    return sd


T2V_1_3B = {"dim": 1536, "ffn": 8960, "layers": 30, "in_dim": 16, "out_dim": 16}
T2V_14B = {"dim": 5120, "ffn": 13824, "layers": 40, "in_dim": 16, "out_dim": 16}
TI2V_5B = {"dim": 3072, "ffn": 14336, "layers": 30, "in_dim": 48, "out_dim": 48}

CASES = [
    # (id, structure, expected variant, ComfyUI config, ambiguous)
    ("t2v-1.3b", T2V_1_3B, {}, "wan2.1-t2v-1.3b", "WAN21_T2V", False),
    ("t2v-14b", T2V_14B, {}, "wan2.1-t2v-14b", "WAN21_T2V", True),
    ("i2v-14b", {**T2V_14B, "in_dim": 36}, {"i2v": True}, "wan2.1-i2v-14b", "WAN21_I2V", False),
    (
        "flf2v-14b",
        {**T2V_14B, "in_dim": 36},
        {"i2v": True, "emb_pos": True},
        "wan2.1-flf2v-14b",
        "WAN21_I2V",
        False,
    ),
    ("ti2v-5b", TI2V_5B, {}, "wan2.2-ti2v-5b", "WAN22_T2V", False),
    ("i2v-a14b", {**T2V_14B, "in_dim": 36}, {}, "wan2.2-i2v-a14b", "WAN21_T2V", False),
    ("vace-14b", T2V_14B, {"vace": 8}, "wan2.1-vace-14b", "WAN21_Vace", False),
    ("vace-1.3b", T2V_1_3B, {"vace": 15}, "wan2.1-vace-1.3b", "WAN21_Vace", False),
    (
        "fun-control-14b",
        {**T2V_14B, "in_dim": 48},
        {"i2v": True},
        "wan2.1-fun-control-14b",
        "WAN21_FunControl2V",
        False,
    ),
    (
        "camera-14b",
        {**T2V_14B, "in_dim": 32},
        {"i2v": True, "extra": ["control_adapter.conv.weight"]},
        "wan2.1-fun-camera-14b",
        "WAN21_Camera",
        False,
    ),
    (
        "camera-2.2",
        {**T2V_14B, "in_dim": 36},
        {"extra": ["control_adapter.conv.weight"]},
        "wan2.2-fun-camera-a14b",
        "WAN22_Camera",
        False,
    ),
    (
        "s2v",
        T2V_14B,
        {"extra": ["casual_audio_encoder.encoder.final_linear.weight"]},
        "wan2.2-s2v-14b",
        "WAN22_S2V",
        False,
    ),
    (
        "animate",
        {**T2V_14B, "in_dim": 36},
        {"extra": ["face_adapter.fuser_blocks.0.k_norm.weight"]},
        "wan2.2-animate-14b",
        "WAN22_Animate",
        False,
    ),
    (
        "humo",
        T2V_14B,
        {"extra": ["audio_proj.audio_proj_glob_1.layer.bias"]},
        "wan2.1-humo-17b",
        "WAN21_HuMo",
        False,
    ),
    (
        "wandancer",
        {**T2V_14B, "in_dim": 36},
        {"extra": ["patch_embedding_global.weight"]},
        "wan2.2-wandancer-14b",
        "WAN22_WanDancer",
        False,
    ),
]


@pytest.mark.parametrize("packed", [False, True], ids=["bf16", "nvfp4-packed"])
@pytest.mark.parametrize(
    ("case", "dims", "extras", "want", "config", "ambiguous"), CASES, ids=[c[0] for c in CASES]
)
def test_released_variants(case, dims, extras, want, config, ambiguous, packed):
    sd = full_size(**dims, **extras, packed=packed)
    v = detect_variant(StateDictSource(sd))
    assert v.is_wan and v.id == want
    assert v.comfyui_config == config
    assert v.ambiguous == ambiguous
    assert v.standard_dims
    assert v.dims.dim == dims["dim"] and v.dims.ffn_dim == dims["ffn"] and v.dims.num_layers == dims["layers"]
    assert (v.dims.in_dim, v.dims.out_dim) == (dims["in_dim"], dims["out_dim"])
    assert v.dims.num_heads == dims["dim"] // 128
    assert v.dims.text_dim == 4096 and v.dims.freq_dim == 256  # packing undone for in-dims


def test_t2v_14b_and_a14b_are_honestly_ambiguous_without_a_name_hint():
    v = detect_variant(StateDictSource(full_size(**T2V_14B)))
    assert set(v.candidates) == {"wan2.1-t2v-14b", "wan2.2-t2v-a14b"}
    assert any("identical tensors" in n for n in v.notes)


@pytest.mark.parametrize(
    ("filename", "want", "expert"),
    [
        ("wan2.2_t2v_high_noise_14B_fp16.safetensors", "wan2.2-t2v-a14b", "high_noise"),
        ("wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "wan2.2-t2v-a14b", "low_noise"),
        ("Wan2_2-T2V-A14B-LOW_fp8_e4m3fn_scaled_KJ.safetensors", "wan2.2-t2v-a14b", "low_noise"),
        ("wan2.1_t2v_14B_fp16.safetensors", "wan2.1-t2v-14b", None),
        ("some_finetune.safetensors", "wan2.1-t2v-14b", None),
    ],
)
def test_filename_hints_resolve_identical_tensors(filename, want, expert):
    v = detect_variant(StateDictSource(full_size(**T2V_14B)), filename=filename)
    assert v.id == want and v.expert == expert
    assert v.ambiguous == (want == "wan2.1-t2v-14b" and "2.1" not in filename)


def test_filename_never_overrides_the_tensors():
    v = detect_variant(StateDictSource(full_size(**TI2V_5B)), filename="wan2.1_t2v_1.3B.safetensors")
    assert v.id == "wan2.2-ti2v-5b"
    assert any("tensors win" in n for n in v.notes)


def test_i2v_a14b_notes_the_stripped_2_1_lookalike():
    v = detect_variant(StateDictSource(full_size(**{**T2V_14B, "in_dim": 36})))
    assert v.id == "wan2.2-i2v-a14b"
    assert any("stripped of its CLIP branch" in n for n in v.notes)


def test_prefixed_checkpoint():
    sd = {f"model.diffusion_model.{k}": t for k, t in full_size(**TI2V_5B).items()}
    sd["first_stage_model.decoder.conv.weight"] = _meta(4)
    info = classify_checkpoint(StateDictSource(sd))
    assert info.prefix == "model.diffusion_model." and info.variant.id == "wan2.2-ti2v-5b"


def test_not_wan():
    v = detect_variant(StateDictSource({"double_blocks.0.img_attn.qkv.weight": _meta(9, 3)}))
    assert not v.is_wan and v.id == "unknown" and "head.modulation" in v.evidence


@pytest.mark.parametrize("variant", sorted(F.TINY_VARIANTS))
def test_tiny_fixtures_get_their_structural_variant_and_a_flag(variant):
    fx = F.FIXTURES["comfy_nvfp4"](variant=variant)
    v = detect_variant(fx.source(), filename=fx.filename)
    assert v.id == variant
    assert not v.standard_dims
    assert any("non-standard dims" in n for n in v.notes)
    if "a14b" in variant:
        assert v.expert == F.TINY_VARIANTS[variant].filename_tag


@pytest.mark.parametrize(
    ("variant", "unique"),
    [
        ("wan2.2-ti2v-5b", True),
        ("wan2.1-i2v-14b", True),
        ("wan2.1-flf2v-14b", True),
        ("wan2.2-i2v-a14b", True),
        ("wan2.1-t2v-14b", False),
        ("wan2.1-vace-14b", False),
    ],
)
def test_tiny_fixtures_without_a_name(variant, unique):
    fx = F.FIXTURES["bf16"](variant=variant)
    v = detect_variant(F.StateDictSource(fx.tensors))
    assert variant in v.candidates
    assert v.ambiguous == (not unique)
    if unique:
        assert v.id == variant
