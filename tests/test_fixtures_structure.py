"""The fixtures themselves: real WAN key structure, the issue's census facts, and ground truth that holds.

The ground truth of a fixture is checked with comfy-kitchen's dequantizer (not ours): decoding a layer in its
recorded conventions must reproduce the bf16 source within NVFP4 / FP8 error, and decoding it in the other
nibble order must not.
"""

import json
import warnings

import pytest
import torch

from wan_nvfp4.checkpoint.layers import FLOAT, FP8, FP8_SCALED, NVFP4
from wan_nvfp4.checkpoint.reading.safetensors_io import SafetensorsFile
from wan_nvfp4.checkpoint.tiny import fixtures as F
from wan_nvfp4.kernels import HIGH_FIRST, LINEAR, LOW_FIRST

ck = pytest.importorskip("comfy_kitchen")
ck_utils = pytest.importorskip("comfy_kitchen.float_utils")

ALL = sorted(F.FIXTURES)


@pytest.fixture(scope="module")
def built():
    return {name: F.FIXTURES[name]() for name in ALL}


def test_tiny_t2v_has_the_key_structure_of_comfyui_wanmodel():
    # COMFYUI.md §7 / FORMATS.md §7.1: a 2-block T2V WanModel has 69 state-dict keys and 26 Linears
    sd = F.tiny_wan_state_dict("wan2.1-t2v-14b")
    assert len(sd) == 69
    linears = [k for k, v in sd.items() if k.endswith(".weight") and v.dim() == 2]
    assert len(linears) == 26
    d, f = 256, 512
    assert sd["head.modulation"].shape == (1, 2, d)
    assert sd["blocks.1.modulation"].shape == (1, 6, d)
    assert sd["patch_embedding.weight"].shape == (d, 16, 1, 2, 2)
    assert sd["text_embedding.0.weight"].shape == (d, 4096)
    assert sd["time_embedding.0.weight"].shape == (d, 256)
    assert sd["time_projection.1.weight"].shape == (6 * d, d)
    assert sd["blocks.0.ffn.0.weight"].shape == (f, d)
    assert sd["blocks.0.ffn.2.weight"].shape == (d, f)
    assert sd["head.head.weight"].shape == (64, d)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())


@pytest.mark.parametrize(
    ("variant", "extra_keys", "in_dim", "out_dim"),
    [
        (
            "wan2.1-i2v-14b",
            {"img_emb.proj.0.bias", "img_emb.proj.1.weight", "blocks.0.cross_attn.k_img.weight"},
            36,
            16,
        ),
        ("wan2.1-flf2v-14b", {"img_emb.emb_pos"}, 36, 16),
        ("wan2.2-ti2v-5b", set(), 48, 48),
        ("wan2.2-i2v-a14b", set(), 36, 16),
        ("wan2.1-vace-14b", {"vace_patch_embedding.weight", "vace_blocks.0.before_proj.weight"}, 16, 16),
    ],
)
def test_variant_structures(variant, extra_keys, in_dim, out_dim):
    sd = F.tiny_wan_state_dict(variant)
    assert extra_keys <= sd.keys()
    assert sd["patch_embedding.weight"].shape[1] == in_dim
    assert sd["head.head.weight"].shape[0] == 4 * out_dim
    if variant == "wan2.2-i2v-a14b":
        assert not any(k.startswith("img_emb.") for k in sd)  # 2.2 I2V has no CLIP branch
    if variant == "wan2.1-i2v-14b":
        # FORMATS.md §7.1: 12 Linears per I2V block, + 2 img_emb Linears
        assert sum(1 for k, v in sd.items() if k.endswith(".weight") and v.dim() == 2) == 2 * 12 + 6 + 2


def test_seeded_and_deterministic():
    a, b = F.tiny_wan_state_dict(seed=0), F.tiny_wan_state_dict(seed=0)
    c = F.tiny_wan_state_dict(seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.ffn.0.weight"], c["blocks.0.ffn.0.weight"])


def test_user_replica_matches_the_issue_description(built):
    fx = built["user_replica"]
    assert fx.metadata == {}
    census: dict[torch.dtype, int] = {}
    for t in fx.tensors.values():
        census[t.dtype] = census.get(t.dtype, 0) + 1
    # equal counts of uint8, fp8 and fp32 tensors; the rest fp16
    assert census[torch.uint8] == census[torch.float8_e4m3fn] == census[torch.float32]
    assert set(census) == {torch.uint8, torch.float8_e4m3fn, torch.float32, torch.float16}
    assert not any(k.endswith(".input_scale") or k.endswith(".comfy_quant") for k in fx.tensors)
    quantized = {k[: -len(".weight")] for k, t in fx.tensors.items() if t.dtype == torch.uint8}
    blocks = {n for n in fx.layers if n.startswith("blocks.")}
    assert quantized == blocks | {
        "text_embedding.0",
        "text_embedding.2",
        "time_embedding.0",
        "time_embedding.2",
        "time_projection.1",
        "head.head",
    }
    # TI2V head.head N = 192 -> 256 swizzled scale rows
    assert fx.tensors["head.head.weight_scale"].shape == (256, 16)


def test_kijai_replica_matches_the_issue_description(built):
    fx = built["kijai_fp8"]
    assert "scaled_fp8" in fx.tensors
    scaled = [k for k in fx.tensors if k.endswith(".scale_weight")]
    assert scaled
    for k in scaled:
        assert fx.tensors[k].shape == (1,) and fx.tensors[k].dtype == torch.float32
        assert fx.tensors[k[: -len(".scale_weight")] + ".weight"].dtype == torch.float8_e4m3fn
    others = [
        t
        for k, t in fx.tensors.items()
        if t.dtype not in (torch.float8_e4m3fn,) and not k.endswith(".scale_weight")
    ]
    assert all(t.dtype == torch.float32 for t in others)


def test_metadata_of_each_convention(built):
    comfy = json.loads(built["comfy_nvfp4"].metadata["_quantization_metadata"])
    assert comfy["format_version"] == "1.0"
    assert comfy["layers"]["blocks.0.self_attn.q"] == {"format": "nvfp4"}
    mo = json.loads(built["modelopt_nvfp4"].metadata["quantization_config"])
    assert mo["producer"]["name"] == "modelopt" and mo["quantization"]["quant_algo"] == "NVFP4"
    single = built["modelopt_comfy_single_file"]
    assert all(k.startswith("model.diffusion_model.") for k in single.tensors)
    assert (
        "model.diffusion_model.blocks.0.self_attn.q"
        in json.loads(single.metadata["_quantization_metadata"])["layers"]
    )
    lx = built["lightx2v_nvfp4"].tensors
    assert "blocks.0.ffn.0.alpha" in lx and "blocks.0.ffn.0.input_global_scale" in lx
    assert not any(k.endswith(".weight_scale_2") for k in lx)
    assert built["modelopt_nvfp4_sidecar"].metadata == {}
    assert (
        json.loads(built["modelopt_nvfp4_sidecar"].sidecars["hf_quant_config.json"])["producer"]["name"]
        == "modelopt"
    )
    assert built["modelopt_nvfp4_stripped"].metadata == {}
    blob = built["fp8_per_row"].tensors["blocks.0.ffn.0.comfy_quant"]
    assert json.loads(bytes(blob.tolist())) == {"format": "float8_e4m3fn_rowwise"}


def _ck_nvfp4(tensors, stem, n, k, nibble_order, scale_layout):
    if f"{stem}.weight_scale_2" in tensors:
        gs = tensors[f"{stem}.weight_scale_2"].float().reshape(())
    elif f"{stem}.weight_global_scale" in tensors:  # LightX2V converter: 2688 / amax
        gs = (1.0 / tensors[f"{stem}.weight_global_scale"].float()).reshape(())
    else:  # LightX2V
        gs = (tensors[f"{stem}.alpha"].float() * tensors[f"{stem}.input_global_scale"].float()).reshape(())
    scale = tensors[f"{stem}.weight_scale"]
    if scale_layout == LINEAR:
        scale = ck_utils.to_blocked(scale, flatten=False)
    with ck.use_backend("eager"):
        w = ck.dequantize_nvfp4(
            tensors[f"{stem}.weight"],
            gs,
            scale,
            output_type=torch.float32,
            hi_first=nibble_order == HIGH_FIRST,
        )
    return w[:n, :k]


def _ck_fp8(tensors, stem):
    w = tensors[f"{stem}.weight"].float()
    for suffix in ("weight_scale", "scale_weight"):
        if f"{stem}.{suffix}" in tensors:
            s = tensors[f"{stem}.{suffix}"].float()
            return w * (s.reshape(()) if s.numel() == 1 else s.reshape(-1, 1))
    return w


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ALL)
def test_ground_truth_decodes_to_the_bf16_source_with_comfy_kitchen(built, name):
    fx = built[name]
    for layer, truth in fx.layers.items():
        stem = fx.prefix + layer
        ref = fx.reference[f"{layer}.weight"].float()
        n, k = ref.shape
        if truth.format == NVFP4:
            w = _ck_nvfp4(fx.tensors, stem, n, k, truth.nibble_order, truth.scale_layout)
            assert _rel(w, ref) < 0.15, layer
            flipped = LOW_FIRST if truth.nibble_order == HIGH_FIRST else HIGH_FIRST
            assert _rel(_ck_nvfp4(fx.tensors, stem, n, k, flipped, truth.scale_layout), ref) > 0.5, layer
        elif truth.format in (FP8_SCALED, FP8):
            assert fx.tensors[f"{stem}.weight"].dtype == torch.float8_e4m3fn
            assert _rel(_ck_fp8(fx.tensors, stem), ref) < 0.06, layer
        else:
            assert truth.format == FLOAT
            assert _rel(fx.tensors[f"{stem}.weight"].float(), ref) < 1e-3, layer


@pytest.mark.parametrize("name", ["modelopt_nvfp4", "modelopt_nvfp4_sidecar", "nvfp4_linear_no_metadata"])
def test_linear_scale_fixtures_are_not_swizzled(built, name):
    fx = built[name]
    stem = fx.prefix + "blocks.0.ffn.0"
    n, k = fx.reference["blocks.0.ffn.0.weight"].shape
    ref = fx.reference["blocks.0.ffn.0.weight"].float()
    from wan_nvfp4.kernels import SWIZZLED

    assert _rel(_ck_nvfp4(fx.tensors, stem, n, k, LOW_FIRST, SWIZZLED), ref) > 0.5


def test_write_produces_a_readable_file_and_sidecar(tmp_path):
    paths = F.write_fixtures(tmp_path, names=["comfy_nvfp4", "modelopt_nvfp4_sidecar"])
    assert paths["comfy_nvfp4"].parent == tmp_path
    sidecar_dir = paths["modelopt_nvfp4_sidecar"].parent
    assert sidecar_dir == tmp_path / "modelopt_nvfp4_sidecar"  # its sidecar must not touch other files
    assert (sidecar_dir / "hf_quant_config.json").is_file()
    fx = F.FIXTURES["comfy_nvfp4"]()
    with SafetensorsFile(paths["comfy_nvfp4"]) as f:
        assert set(f.keys()) == set(fx.tensors)
        assert f.metadata == fx.metadata
        for key, t in fx.tensors.items():
            assert f.dtype(key) == t.dtype
            assert (
                f.tensor(key).reshape(-1).view(torch.uint8).tolist()
                == t.reshape(-1).view(torch.uint8).tolist()
            )


@pytest.mark.parametrize("variant", sorted(F.TINY_VARIANTS))
def test_every_variant_builds_in_every_nvfp4_plan(variant):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fx = F.FIXTURES["comfy_nvfp4"](variant=variant)
    assert fx.variant == variant
    assert fx.filename.startswith(variant)
    assert {n for n, t in fx.layers.items() if t.format == NVFP4} == {
        n for n in fx.layers if n.startswith("blocks.")
    }
