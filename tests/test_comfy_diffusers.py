"""Diffusers-format WAN exports (NVIDIA ModelOpt, sharded) inside a real ComfyUI (COMFYUI_PATH): every variant
x format loads through the pack, picked by one shard in `diffusion_models`, with output equal to its
ComfyUI-named twin (bit for bit; the quantized ones also within oracle tolerance of vanilla ComfyUI on the
oracle-dequantized weights); `repair` makes one file that vanilla ComfyUI loads with the same output; the pair
loader takes the A14B export's `transformer` (high noise) and `transformer_2` (low noise)."""

import pytest
import torch

from wan_nvfp4.checkpoint import CheckpointError
from wan_nvfp4.checkpoint.reading.sharded_source import export_label
from wan_nvfp4.checkpoint.tiny.diffusers_export import (
    EXPORT_FORMATS,
    share_fused_scalars,
    twin_fixture,
    write_diffusers_export,
    write_transformer,
)
from wan_nvfp4.checkpoint.tiny.tiny_wan import TINY_VARIANTS
from wan_nvfp4.checkpoint.writing.repair import repair_checkpoint

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

MAX_REL_ERR = 2e-3


@pytest.fixture(scope="module")
def loader():
    H.comfy()
    from wan_nvfp4.nodes import loader

    return loader


def _relative(folder, path) -> str:
    return path.relative_to(folder).as_posix()


def _holds(module, stored: torch.Tensor) -> bool:
    """The Linear holds `stored`: a quantized layer its bytes as read, a float one its values (ComfyUI keeps
    bf16 weights in fp32 on the CPU)."""
    w = getattr(module.weight, "_qdata", module.weight).detach().cpu()
    if w.dtype == stored.dtype:
        return torch.equal(w.view(torch.uint8), stored.view(torch.uint8))
    return torch.equal(w.to(stored.dtype), stored)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
@pytest.mark.parametrize("variant", list(TINY_VARIANTS))
def test_export_loads_like_its_twin_and_repairs_for_vanilla_comfyui(loader, tmp_path, variant, fmt):
    """Loaded from one shard: the stored bytes of the twin, and its output (bf16: vanilla ComfyUI on the twin,
    bit for bit; fp8/nvfp4: within oracle tolerance). Repaired: vanilla ComfyUI loads it with that output."""
    folder = H.models_folder(tmp_path)
    export = write_diffusers_export(folder / "matrix", variant, fmt)
    listed = set(H.comfy()["folder_paths"].get_filename_list("diffusion_models"))
    inputs = H.forward_inputs(variant)
    sd = H.comfy()["sd"]
    tolerance = 0.0 if fmt == "bf16" else MAX_REL_ERR
    for component, fx in export.twins.items():
        shard = export.shard(component, 1)
        assert _relative(folder, shard) in listed, "a shard inside the export folder is pickable"
        patcher = loader.load_wan_model(shard)
        q = patcher.model.diffusion_model.blocks[1].self_attn.q
        stored = fx.tensors["blocks.1.self_attn.q.weight"]
        assert _holds(q, stored), "the loaded layer must hold the twin's weight as stored"
        ours = H.run(patcher, inputs)
        oracle = H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)  # bf16: the twin in vanilla ComfyUI
        err = H.rel_err(ours, oracle)
        assert err <= tolerance, f"{component}: relative error {err:.3g} vs the twin's oracle"
        out = tmp_path / f"{export_label(shard)}_repaired.safetensors"
        repair_checkpoint(shard, out, save_report=False)
        repaired = H.run(sd.load_diffusion_model(str(out)), inputs)  # vanilla ComfyUI, no pack
        err = H.rel_err(repaired, oracle)
        assert err <= tolerance, f"{component}: repaired file in vanilla ComfyUI: {err:.3g} vs the oracle"
        H.unload()


def test_pair_loader_takes_transformer_and_transformer_2(loader, tmp_path):
    folder = H.models_folder(tmp_path)
    from wan_nvfp4.nodes.loader_nodes import WanNVFP4PairLoader

    # folders registered by earlier tests stay listed: a unique subfolder keeps the relative names this test's
    export = write_diffusers_export(folder / "pair_loader", "wan2.2-t2v-a14b", "nvfp4")
    high = _relative(folder, export.shard("transformer", 0))
    low = _relative(folder, export.shard("transformer_2", 1))
    patchers = WanNVFP4PairLoader.execute(high, low).result
    inputs = H.forward_inputs("wan2.2-t2v-a14b")
    for component, patcher in zip(("transformer", "transformer_2"), patchers, strict=True):
        fx = export.twins[component]
        err = H.rel_err(H.run(patcher, inputs), H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs))
        assert err <= MAX_REL_ERR, f"{component}: relative error {err:.3g} vs its own oracle"
    assert H.rel_err(H.run(patchers[0], inputs), H.run(patchers[1], inputs)) > 0.3, "two different experts"
    H.unload()
    with pytest.raises(CheckpointError, match="low-noise expert, picked as the high-noise expert") as e:
        WanNVFP4PairLoader.execute(low, high)
    assert "transformer_2" in str(e.value) and "boundary_ratio" in str(e.value)


def test_comfyui_native_path_reads_a_bf16_export(loader, tmp_path):
    """kernel_path comfyui-native: ComfyUI's own ops on the renamed state dict (it cannot open shards)."""
    folder = H.models_folder(tmp_path)
    export = write_diffusers_export(folder, "wan2.2-ti2v-5b", "bf16")
    inputs = H.forward_inputs("wan2.2-ti2v-5b")
    options = loader.LoaderOptions(kernel_path="comfyui-native")
    ours = H.run(loader.load_wan_model(export.index(), options), inputs)
    vanilla = H.run(
        H.comfy()["sd"].load_diffusion_model(str(export.twins["transformer"].write(tmp_path))), inputs
    )
    H.unload()
    assert torch.equal(ours, vanilla)


def test_loader_refuses_an_export_with_an_unknown_tensor(loader, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = H.models_folder(tmp_path)
    export = write_diffusers_export(folder, "wan2.2-ti2v-5b", "bf16")
    shard = export.shard("transformer", 0)
    tensors = load_file(str(shard))
    tensors["blocks.0.attn1.to_q.lora_B.weight"] = torch.zeros(4, 4)
    save_file(tensors, str(shard))
    index = export.index()
    index.write_text(
        index.read_text().replace(
            '"weight_map": {', f'"weight_map": {{"blocks.0.attn1.to_q.lora_B.weight": "{shard.name}", ', 1
        )
    )
    with pytest.raises(CheckpointError, match="maps to no ComfyUI WAN name") as e:
        loader.load_wan_model(export.shard("transformer", 1))
    assert "blocks.0.attn1.to_q.lora_B.weight" in str(e.value) and shard.name in str(e.value)


def test_repair_node_turns_a_picked_shard_into_one_native_file(loader, tmp_path):
    """The Repair node on one shard of a ModelOpt NVFP4 A14B export: one file named after the export and the
    expert, next to the shard, that vanilla ComfyUI loads with the oracle's output; shards untouched."""
    import hashlib

    from wan_nvfp4.nodes.repair_node import WanRepairCheckpoint

    folder = H.models_folder(tmp_path)
    export = write_diffusers_export(
        folder / "repair_node", "wan2.2-t2v-a14b", "nvfp4"
    )  # unique relative names
    shard = export.shard("transformer_2", 0)
    shards = sorted(export.components["transformer_2"].glob("*.safetensors"))
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in shards]
    result = WanRepairCheckpoint.execute(source=_relative(folder, shard), target_name="")
    dst = shard.parent / "wan2.2-t2v-a14b-diffusers-nvfp4_transformer_2_low_noise_repaired.safetensors"
    assert dst.exists() and "blocks.0.self_attn.q" in result.args[0]
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in shards] == before
    fx = export.twins["transformer_2"]
    inputs = H.forward_inputs(fx.variant)
    out = H.run(H.comfy()["sd"].load_diffusion_model(str(dst)), inputs)
    oracle = H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)
    H.unload()
    assert H.rel_err(out, oracle) <= MAX_REL_ERR


@pytest.mark.parametrize("fmt", ["nvfp4", "fp8"])
def test_quantized_fused_projections_run_like_their_twin(loader, tmp_path, fmt):
    """An export with fused q/k/v (`to_qkv`, `to_kv`), NVFP4 / FP8: every part holds its own rows; the output
    equals the unfused ComfyUI-named twin's through the pack bit for bit, and the oracle's within tolerance.
    Control: the export with q and k rows exchanged must be far off (the check sees a wrong split)."""
    variant = "wan2.2-ti2v-5b"
    fx = share_fused_scalars(twin_fixture(variant, fmt))
    inputs = H.forward_inputs(variant)
    twin = H.run(loader.load_wan_model(fx.write(tmp_path)), inputs)
    fused = loader.load_wan_model(write_transformer(tmp_path / "fused", fx, fmt, fused=True))
    attn = fused.model.diffusion_model.blocks[1].self_attn
    for part in ("q", "k", "v"):
        assert _holds(getattr(attn, part), fx.tensors[f"blocks.1.self_attn.{part}.weight"]), part
    assert torch.equal(H.run(fused, inputs), twin)
    oracle = H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)
    assert H.rel_err(twin, oracle) <= MAX_REL_ERR
    swapped = share_fused_scalars(twin_fixture(variant, fmt))
    for role in ("weight", "weight_scale"):  # q and k rows exchanged inside the fused tensor
        for block in range(2):
            q, k = (f"blocks.{block}.self_attn.{p}.{role}" for p in ("q", "k"))
            if q in swapped.tensors and swapped.tensors[q].dim() > 0 and swapped.tensors[q].numel() > 1:
                swapped.tensors[q], swapped.tensors[k] = swapped.tensors[k], swapped.tensors[q]
    wrong = H.run(
        loader.load_wan_model(write_transformer(tmp_path / "swapped", swapped, fmt, fused=True)), inputs
    )
    assert H.rel_err(wrong, oracle) > 0.05, "a wrong row split must be visible in the output"
    H.unload()
