"""Sharded diffusers-format WAN exports (NVIDIA ModelOpt): the name mapping, reading through the index from
the folder / index / any shard, classification equal to the ComfyUI-named twin, repair and convert, and the
bad exports (missing shard, index naming an absent file, shard and index disagreeing, unknown key,
non-WAN)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from wan_nvfp4.checkpoint import CheckpointError, classify_checkpoint, inspect_checkpoint, open_checkpoint
from wan_nvfp4.checkpoint.reading import diffusers_names as names
from wan_nvfp4.checkpoint.reading.sharded_source import ShardedSource, export_label
from wan_nvfp4.checkpoint.tiny.diffusers_export import (
    EXPORT_FORMATS,
    diffusers_tensors,
    share_fused_scalars,
    twin_fixture,
    write_diffusers_export,
    write_transformer,
)
from wan_nvfp4.checkpoint.tiny.tiny_wan import TINY_VARIANTS, tiny_wan_state_dict
from wan_nvfp4.checkpoint.writing.convert import ConvertOptions, convert_checkpoint
from wan_nvfp4.checkpoint.writing.repair import repair_checkpoint
from wan_nvfp4.cli import main as cli_main

# Literal pairs read from huggingface/diffusers scripts/convert_wan_to_diffusers.py
# (TRANSFORMER_KEYS_RENAME_DICT applied as sequential str.replace, which is what makes norm3 -> norm2 and
# cross_attn.k_img -> add_k_proj)
DIFFUSERS_SPOT_CHECKS = {
    "text_embedding.0.weight": "condition_embedder.text_embedder.linear_1.weight",
    "time_embedding.2.bias": "condition_embedder.time_embedder.linear_2.bias",
    "time_projection.1.weight": "condition_embedder.time_proj.weight",
    "head.head.weight": "proj_out.weight",
    "head.modulation": "scale_shift_table",
    "patch_embedding.weight": "patch_embedding.weight",
    "blocks.7.modulation": "blocks.7.scale_shift_table",
    "blocks.7.norm3.weight": "blocks.7.norm2.weight",
    "blocks.7.norm3.bias": "blocks.7.norm2.bias",
    "blocks.7.self_attn.q.weight": "blocks.7.attn1.to_q.weight",
    "blocks.7.self_attn.o.bias": "blocks.7.attn1.to_out.0.bias",
    "blocks.7.self_attn.norm_k.weight": "blocks.7.attn1.norm_k.weight",
    "blocks.7.cross_attn.v.weight": "blocks.7.attn2.to_v.weight",
    "blocks.7.cross_attn.k_img.weight": "blocks.7.attn2.add_k_proj.weight",
    "blocks.7.cross_attn.v_img.bias": "blocks.7.attn2.add_v_proj.bias",
    "blocks.7.cross_attn.norm_k_img.weight": "blocks.7.attn2.norm_added_k.weight",
    "blocks.7.ffn.0.weight": "blocks.7.ffn.net.0.proj.weight",
    "blocks.7.ffn.2.weight": "blocks.7.ffn.net.2.weight",
    "img_emb.proj.0.weight": "condition_embedder.image_embedder.norm1.weight",
    "img_emb.proj.1.weight": "condition_embedder.image_embedder.ff.net.0.proj.weight",
    "img_emb.proj.3.bias": "condition_embedder.image_embedder.ff.net.2.bias",
    "img_emb.proj.4.weight": "condition_embedder.image_embedder.norm2.weight",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
    "vace_blocks.0.before_proj.weight": "vace_blocks.0.proj_in.weight",
    "vace_blocks.0.after_proj.weight": "vace_blocks.0.proj_out.weight",
    # ModelOpt roles keep their suffix
    "blocks.0.self_attn.q.weight_scale": "blocks.0.attn1.to_q.weight_scale",
    "blocks.0.self_attn.q.weight_scale_2": "blocks.0.attn1.to_q.weight_scale_2",
    "blocks.0.ffn.2.input_scale": "blocks.0.ffn.net.2.input_scale",
}


@pytest.mark.parametrize("comfy", list(DIFFUSERS_SPOT_CHECKS))
def test_mapping_matches_diffusers_conversion(comfy):
    assert names.diffusers_key(comfy) == DIFFUSERS_SPOT_CHECKS[comfy]
    assert names.comfy_key(DIFFUSERS_SPOT_CHECKS[comfy]) == comfy


@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_every_tensor_of_every_variant_round_trips(variant):
    keys = list(tiny_wan_state_dict(variant))
    mapped = [names.diffusers_key(k) for k in keys]
    assert None not in mapped
    assert len(set(mapped)) == len(keys), "two ComfyUI tensors got the same diffusers name"
    assert [names.comfy_key(m) for m in mapped] == keys


@pytest.mark.parametrize(
    "key",
    ["blocks.0.attn1.to_q.lora_A.weight", "blocks.0.attn1.to_q", "foo.weight", "proj_out.weight.extra"],
)
def test_unknown_names_map_to_nothing(key):
    assert names.comfy_key(key) is None


def test_fused_and_ignored_names():
    assert names.fused_parts("blocks.3.attn1.to_qkv.weight") == (
        "blocks.3.self_attn.q.weight",
        "blocks.3.self_attn.k.weight",
        "blocks.3.self_attn.v.weight",
    )
    assert names.fused_parts("blocks.3.attn2.to_added_kv.bias") == (
        "blocks.3.cross_attn.k_img.bias",
        "blocks.3.cross_attn.v_img.bias",
    )
    assert names.fused_parts("blocks.3.attn2.to_q.weight") is None
    assert names.is_ignored("blocks.3.attn2.norm_added_q.weight")
    assert not names.is_ignored("blocks.3.attn2.norm_added_k.weight")


# ---- reading ------


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    out = {fmt: write_diffusers_export(folder, "wan2.2-t2v-a14b", fmt) for fmt in EXPORT_FORMATS}
    out["i2v-fused"] = write_diffusers_export(folder, "wan2.1-flf2v-14b", "bf16", fused=True)
    return out


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
@pytest.mark.parametrize("how", ["folder", "index", "shard1", "shard2"])
def test_export_reads_as_its_twin(exports, fmt, how):
    export = exports[fmt]
    for component, fx in export.twins.items():
        where = {
            "folder": export.components[component],
            "index": export.index(component),
            "shard1": export.shard(component, 0),
            "shard2": export.shard(component, 1),
        }[how]
        source = open_checkpoint(where)
        assert isinstance(source, ShardedSource) and len(source.files) == 2
        assert set(source.keys()) == set(fx.tensors)
        for key, t in fx.tensors.items():
            assert source.shape(key) == tuple(t.shape) and source.dtype(key) == t.dtype
            assert torch.equal(_as_bytes(source.tensor(key)), _as_bytes(t)), key
            assert torch.equal(_as_bytes(source.read_tensor(key)), _as_bytes(t)), key


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_classifies_like_its_twin_and_names_the_expert(exports, fmt):
    export = exports[fmt]
    for component, expert in (("transformer", "high_noise"), ("transformer_2", "low_noise")):
        info = classify_checkpoint(export.shard(component, 1))
        twin = classify_checkpoint(export.twins[component].source())
        assert info.usable and not info.problems
        if fmt != "bf16":
            assert info.provenance == "ModelOpt (config.json quantization_config)"
        assert {
            n: (s.format, s.nibble_order, s.scale_layout, s.fp8_granularity) for n, s in info.layers.items()
        } == {
            n: (s.format, s.nibble_order, s.scale_layout, s.fp8_granularity) for n, s in twin.layers.items()
        }
        assert info.variant.id == "wan2.2-t2v-a14b" and info.variant.expert == expert
        assert info.source.expert == expert and "boundary_ratio 0.875" in info.source.expert_reason
        for name in ("blocks.1.self_attn.q", "head.head"):
            assert torch.equal(
                _as_bytes(_weight_bytes(info.weight(name))), _as_bytes(_weight_bytes(twin.weight(name)))
            )


def _weight_bytes(w):
    from wan_nvfp4.kernels import dequantize

    return dequantize(w, torch.float32)


def test_fused_projections_split_into_their_parts(exports):
    export = exports["i2v-fused"]
    fx = export.twins["transformer"]
    source = open_checkpoint(export.components["transformer"])
    assert "blocks.0.attn1.to_qkv.weight" in source.describe()["fused_split"]
    assert set(source.keys()) == set(fx.tensors)
    for key, t in fx.tensors.items():
        assert torch.equal(source.tensor(key), t), key
        assert torch.equal(source.read_tensor(key), t), key


def test_fused_quantized_projection_splits_rows_and_shares_scalars(tmp_path):
    """NVFP4 fused q/k/v: packed and linear block-scale rows split; weight_scale_2 / input_scale shared."""
    fx = share_fused_scalars(twin_fixture("wan2.2-ti2v-5b", "nvfp4"))
    assert torch.equal(
        fx.tensors["blocks.1.self_attn.v.weight_scale_2"], fx.tensors["blocks.1.self_attn.q.weight_scale_2"]
    )
    assert torch.equal(
        fx.tensors["blocks.0.cross_attn.v.input_scale"], fx.tensors["blocks.0.cross_attn.k.input_scale"]
    )
    folder = write_transformer(tmp_path / "transformer", fx, "nvfp4", fused=True)
    source = open_checkpoint(folder)
    assert source.shape("blocks.0.self_attn.k.weight") == (256, 128)
    for key, t in fx.tensors.items():
        assert torch.equal(_as_bytes(source.tensor(key)), _as_bytes(t)), key


def test_original_wan_named_shards_keep_their_names(tmp_path):
    """Wan-AI's own sharded repos: original WAN names (= ComfyUI's), read through the index unchanged."""
    fx = twin_fixture("wan2.1-t2v-14b", "bf16")
    keys = sorted(fx.tensors)
    folder = tmp_path / "Wan2.1-T2V-14B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", "model_type": "t2v"}))
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-00002.safetensors"
        save_file({k: fx.tensors[k] for k in part}, str(folder / name))
        weight_map |= dict.fromkeys(part, name)
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    source = open_checkpoint(folder / "diffusion_pytorch_model-00002-of-00002.safetensors")
    assert source.naming == "wan" and set(source.keys()) == set(keys)
    assert classify_checkpoint(folder).variant.id == "wan2.1-t2v-14b"


def test_unsharded_diffusers_file_with_its_config(tmp_path):
    fx = twin_fixture("wan2.2-ti2v-5b", "bf16")
    folder = tmp_path / "transformer"
    folder.mkdir()
    save_file(diffusers_tensors(fx), str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    for where in (folder, folder / "diffusion_pytorch_model.safetensors"):
        source = open_checkpoint(where)
        assert source.naming == "diffusers" and set(source.keys()) == set(fx.tensors)


def test_opening_reads_headers_only(exports, monkeypatch):
    """Opening maps nothing: tensors are read one at a time when asked for (memory stays bounded)."""
    from wan_nvfp4.checkpoint.reading.safetensors_io import SafetensorsFile

    reads = []
    original = SafetensorsFile.tensor
    monkeypatch.setattr(SafetensorsFile, "tensor", lambda self, k: reads.append(k) or original(self, k))
    source = open_checkpoint(exports["nvfp4"].components["transformer"])
    assert reads == []
    source.tensor("blocks.0.ffn.0.weight")
    assert reads == ["blocks.0.ffn.net.0.proj.weight"]


def test_single_file_without_index_is_still_a_plain_file(tmp_path):
    path = twin_fixture("wan2.2-ti2v-5b", "bf16").write(tmp_path)
    assert type(open_checkpoint(path)).__name__ == "SafetensorsFile"


# ---- bad exports ------


@pytest.fixture
def bf16_export(tmp_path):
    return write_diffusers_export(tmp_path, "wan2.2-ti2v-5b", "bf16")


def _index(export):
    return json.loads(export.index().read_text())


def _write_index(export, data):
    export.index().write_text(json.dumps(data))


def test_missing_shard(bf16_export):
    gone = bf16_export.shard("transformer", 1)
    gone.unlink()
    with pytest.raises(CheckpointError, match=f"shard {gone.name} named by the index is missing") as e:
        open_checkpoint(bf16_export.shard("transformer", 0))
    assert str(bf16_export.index()) in str(e.value) and "tensor " in str(e.value)


def test_index_naming_an_absent_file(bf16_export):
    data = _index(bf16_export)
    key = sorted(data["weight_map"])[3]
    data["weight_map"][key] = "diffusion_pytorch_model-00003-of-00002.safetensors"
    _write_index(bf16_export, data)
    with pytest.raises(
        CheckpointError, match=r"00003-of-00002.safetensors named by the index is missing"
    ) as e:
        open_checkpoint(bf16_export.components["transformer"])
    assert key in str(e.value)


def test_index_naming_a_file_outside_the_folder(bf16_export):
    data = _index(bf16_export)
    key = sorted(data["weight_map"])[0]
    data["weight_map"][key] = "../elsewhere.safetensors"
    _write_index(bf16_export, data)
    with pytest.raises(CheckpointError, match="names a shard outside its folder") as e:
        open_checkpoint(bf16_export.index())
    assert key in str(e.value)


def test_index_lists_a_tensor_its_shard_lacks(bf16_export):
    data = _index(bf16_export)
    shard = bf16_export.shard("transformer", 0)
    moved = next(k for k, v in sorted(data["weight_map"].items()) if v == shard.name)
    other = bf16_export.shard("transformer", 1).name
    data["weight_map"][moved] = other
    _write_index(bf16_export, data)
    with pytest.raises(CheckpointError, match=r"not where the index says|listed in the index is not in") as e:
        open_checkpoint(bf16_export.components["transformer"])
    assert moved in str(e.value) and ".safetensors" in str(e.value)


def test_shard_holds_a_tensor_the_index_omits(bf16_export):
    data = _index(bf16_export)
    dropped = sorted(data["weight_map"])[5]
    shard = bf16_export.components["transformer"] / data["weight_map"].pop(dropped)
    _write_index(bf16_export, data)
    with pytest.raises(CheckpointError, match="not where the index says") as e:
        open_checkpoint(bf16_export.components["transformer"])
    assert dropped in str(e.value) and str(shard) in str(e.value) and "omits it" in str(e.value)


def _add_tensor(export, key: str, tensor: torch.Tensor):
    shard = export.shard("transformer", 1)
    tensors = load_file(str(shard))
    tensors[key] = tensor
    save_file(tensors, str(shard), metadata={"format": "pt"})
    data = _index(export)
    data["weight_map"][key] = shard.name
    _write_index(export, data)
    return shard


@pytest.mark.parametrize("key", ["blocks.0.attn1.to_q.lora_A.weight", "blocks.0.attn1.extra.weight", "foo"])
def test_unknown_extra_key_is_an_error_naming_shard_and_key(bf16_export, key):
    shard = _add_tensor(bf16_export, key, torch.zeros(4, 4))
    with pytest.raises(CheckpointError, match="maps to no ComfyUI WAN name") as e:
        open_checkpoint(bf16_export.components["transformer"])
    assert key in str(e.value) and shard.name in str(e.value)
    report = inspect_checkpoint(bf16_export.components["transformer"])  # the inspector lists it as a problem
    assert report.exit_code == 1
    assert any(p.layer == key for p in report.info.errors)
    assert report.to_json()["export"]["unmapped"] == [key]


def test_norm_added_q_is_ignored_as_diffusers_ignores_it(bf16_export):
    _add_tensor(bf16_export, "blocks.0.attn2.norm_added_q.weight", torch.ones(256, dtype=torch.bfloat16))
    source = open_checkpoint(bf16_export.components["transformer"])
    assert source.ignored == ["blocks.0.attn2.norm_added_q.weight"]
    info = classify_checkpoint(bf16_export.components["transformer"])
    assert info.usable and [p.severity for p in info.problems] == ["warning"]


def test_non_wan_diffusers_transformer_by_its_config(bf16_export):
    config_path = bf16_export.components["transformer"] / "config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "FluxTransformer2DModel"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a WAN diffusers transformer") as e:
        open_checkpoint(bf16_export.shard("transformer", 0))
    assert (
        str(config_path) in str(e.value)
        and "_class_name" in str(e.value)
        and "FluxTransformer2DModel" in str(e.value)
    )


def test_non_wan_diffusers_transformer_by_its_keys(tmp_path):
    """No config.json: the first key that maps to nothing names the problem."""
    folder = tmp_path / "transformer"
    folder.mkdir()
    t = {"transformer_blocks.0.attn.to_q.weight": torch.zeros(8, 8), "x_embedder.weight": torch.zeros(8, 8)}
    save_file(t, str(folder / "diffusion_pytorch_model-00001-of-00001.safetensors"))
    weight_map = dict.fromkeys(t, "diffusion_pytorch_model-00001-of-00001.safetensors")
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    with pytest.raises(CheckpointError, match="maps to no ComfyUI WAN name") as e:
        open_checkpoint(folder)
    assert "transformer_blocks.0.attn.to_q.weight" in str(e.value)
    info = classify_checkpoint(folder)
    assert not info.usable and not info.variant.is_wan


def test_lone_shard_without_its_index(bf16_export, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shard = shutil.copy(bf16_export.shard("transformer", 0), lone)
    with pytest.raises(CheckpointError, match="one shard of a sharded model"):
        open_checkpoint(shard)


# ---- tools ------


def test_inspect_cli_reports_the_mapping(exports, capsys):
    code = cli_main(["inspect", str(exports["nvfp4"].components["transformer_2"]), "--json", "--no-scan"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["variant"] == "wan2.2-t2v-a14b"
    export = data["export"]
    assert export["naming"] == "diffusers" and len(export["shards"]) == 2 and export["expert"] == "low_noise"
    assert export["mapping"]["head.head.weight"].endswith(": proj_out.weight")
    assert export["mapping"]["blocks.1.norm3.weight"].endswith(": blocks.1.norm2.weight")
    assert data["verdicts"]["comfyui"]["outcome"] == "not_detected"
    assert data["layers"]["blocks.0.self_attn.q"]["nibble_order"] == "low_first"


def _tensors_of(path):
    return load_file(str(path))


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_repair_writes_what_repairing_the_twin_writes(exports, tmp_path, fmt):
    export = exports[fmt]
    out = tmp_path / f"{export_label(export.shard('transformer', 0))}_repaired.safetensors"
    ours = repair_checkpoint(export.shard("transformer", 0), out, save_report=False)
    twin = export.twins["transformer"].write(tmp_path / "twin")
    repair_checkpoint(twin, tmp_path / "twin.safetensors", save_report=False)
    a, b = _tensors_of(out), _tensors_of(tmp_path / "twin.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(_as_bytes(a[key]), _as_bytes(b[key])), key
    assert ours.layers and all(r.sqnr_db is None or r.sqnr_db == float("inf") for r in ours.layers)
    for shard in export.components["transformer"].glob("*.safetensors"):  # never touched
        assert shard.stat().st_size > 0
    info = classify_checkpoint(out)  # named `<pipeline>_transformer_repaired`: the variant hints survive
    assert info.usable and info.variant.id == "wan2.2-t2v-a14b" and info.variant.expert == "high_noise"


def test_convert_accepts_a_diffusers_bf16_export(exports, tmp_path):
    export = exports["bf16"]
    convert_checkpoint(export.components["transformer"], tmp_path / "export.safetensors", save_report=False)
    twin = export.twins["transformer"].write(tmp_path / "twin")
    convert_checkpoint(twin, tmp_path / "twin.safetensors", ConvertOptions(), save_report=False)
    a, b = _tensors_of(tmp_path / "export.safetensors"), _tensors_of(tmp_path / "twin.safetensors")
    assert set(a) == set(b) and "blocks.0.self_attn.q.weight_scale" in a
    for key in a:
        assert torch.equal(_as_bytes(a[key]), _as_bytes(b[key])), key


def test_diffusers_tensors_refuses_unshared_fused_scales():
    with pytest.raises(ValueError, match="one shared scale"):
        diffusers_tensors(twin_fixture("wan2.2-ti2v-5b", "nvfp4"), fused=True)
