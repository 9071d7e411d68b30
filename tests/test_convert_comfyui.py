"""Converted and repaired files in a real, vanilla ComfyUI (COMFYUI_PATH, CPU): they load natively, each
quantized Linear has the error the convert report states, repaired files give the original weights' output,
and the "WAN Quantize Checkpoint" node writes into diffusion_models and drives the progress bar."""

import pytest
import torch

from wan_nvfp4.checkpoint.conventions.classify import classify_checkpoint
from wan_nvfp4.checkpoint.layers import FLOAT
from wan_nvfp4.checkpoint.sqnr import sqnr_db
from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES
from wan_nvfp4.checkpoint.writing.convert import ConvertOptions, convert_checkpoint
from wan_nvfp4.checkpoint.writing.repair import RepairOptions, repair_checkpoint
from wan_nvfp4.kernels import dequantize

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

CORRECT = 2e-3  # vanilla ComfyUI vs the oracle model: same weights, different kernels


def _load_vanilla(path):
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(path))


def _dequantized_state_dict(path) -> dict:
    """The written file as floats: every quantized layer dequantized by our reference (checked against
    comfy-kitchen in the CPU tests), everything else as stored; no prefix."""
    info = classify_checkpoint(path)
    sd = {}
    for name, spec in info.layers.items():
        sd[f"{name}.weight"] = dequantize(info.weight(name)).float()
        if "bias" in spec.tensors:
            sd[f"{name}.bias"] = info.source.tensor(spec.tensors["bias"])
    consumed = {k for s in info.layers.values() for k in s.tensors.values()}
    for key in list(info.source.keys()):
        if key not in consumed:
            sd[key[len(info.prefix) :]] = info.source.tensor(key)
    return sd


@pytest.mark.parametrize("target", ["nvfp4", "fp8"])
def test_converted_file_loads_in_vanilla_comfyui_with_the_reported_error(tmp_path, target):
    H.comfy()
    fx = FIXTURES["bf16"]()
    src = fx.write(tmp_path / "src")
    dst = tmp_path / "converted.safetensors"
    report = convert_checkpoint(src, dst, ConvertOptions(target=target))
    patcher = _load_vanilla(dst)
    inputs = H.forward_inputs(fx.variant)
    out = H.run(patcher, inputs)
    dm = patcher.model.diffusion_model
    dtype = patcher.model.get_dtype_inference()
    g = torch.Generator().manual_seed(0)
    quantized = [r for r in report.layers if r.action == "quantized"]
    assert len(quantized) == 20
    for r in quantized:  # ComfyUI's own Linear (QuantizedTensor, emulated on CPU) vs the bf16 source
        module = dm.get_submodule(r.name)
        assert type(module.weight).__name__ == "QuantizedTensor", r.name
        w_src = fx.reference[f"{r.name}.weight"].float()
        x = torch.randn(256, w_src.shape[1], generator=g)
        with torch.inference_mode():
            y = module(x.to(dtype)).float() - module.bias.float()
        assert sqnr_db(x @ w_src.T, y) == pytest.approx(r.sqnr_db, abs=1.5), r.name
    # whole model: exactly the model of the dequantized weights (vanilla float load of the same values)
    oracle = H.run(H.vanilla_model(_dequantized_state_dict(dst)), inputs)
    assert H.rel_err(out, oracle) <= CORRECT
    H.unload()


REPAIRABLE = [
    "modelopt_nvfp4",
    "modelopt_comfy_single_file",
    "lightx2v_nvfp4",
    "lightx2v_nvfp4_converter",
    "user_replica",
    "modelopt_nvfp4_stripped",
    "kijai_fp8",
    "fp8_scale_weight_no_marker",
    "mixed",
]


@pytest.mark.parametrize("name", REPAIRABLE)
def test_repaired_file_gives_the_original_weights_output_in_vanilla_comfyui(tmp_path, name):
    H.comfy()
    fx = FIXTURES[name]()
    src = fx.write(tmp_path / "src")
    conv = fx.convention
    options = RepairOptions(
        nibble_order=conv.nibble_order if conv.misread else None,
        scale_layout=conv.scale_layout if conv.misread else None,
    )
    dst = tmp_path / "repaired.safetensors"
    repair_checkpoint(src, dst, options)
    inputs = H.forward_inputs(fx.variant)
    out = H.run(_load_vanilla(dst), inputs)
    # the oracle: the ORIGINAL file's weights dequantized by comfy-kitchen in their true conventions
    oracle = H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)
    assert H.rel_err(out, oracle) <= CORRECT
    H.unload()


def test_quantize_node_writes_into_diffusion_models_with_progress(tmp_path):
    c = H.comfy()
    folder = H.models_folder(tmp_path)
    src = FIXTURES["bf16"]().write(folder)
    calls = []
    c["utils"].set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: calls.append((value, total))
    )
    try:
        from wan_nvfp4.nodes.quantize_node import WanQuantizeCheckpoint

        schema = WanQuantizeCheckpoint.define_schema()
        assert schema.display_name == "WAN Quantize Checkpoint"
        assert src.name in next(i for i in schema.inputs if i.id == "source").options
        result = WanQuantizeCheckpoint.execute(
            source=src.name,
            target_name="node_out",
            format="nvfp4",
            layout="comfy",
            preset="wan",
            keep_first_blocks=0,
            keep_last_blocks=1,
            keep_dtype="source",
            overwrite=False,
        )
    finally:
        c["utils"].set_progress_bar_global_hook(None)
    dst = folder / "node_out.safetensors"
    assert dst.exists() and (folder / "node_out.convert-report.json").exists()
    text = result.args[0]
    assert "blocks.0.ffn.0" in text and "SQNR" in text and "loads natively" in text
    assert calls and calls[-1] == (1000, 1000)
    info = classify_checkpoint(dst)
    kept_block = [n for n, s in info.layers.items() if n.startswith("blocks.1.") and s.format == FLOAT]
    assert len(kept_block) == 10  # keep_last_blocks=1
    with pytest.raises(ValueError, match="plain file name"):
        WanQuantizeCheckpoint.execute(src.name, "../escape", "nvfp4", "comfy", "wan", 0, 0, "source", False)


def test_repair_node_with_a_reference_makes_a_file_vanilla_comfyui_reads(tmp_path):
    """The stripped ModelOpt file states nothing; the node's reference decides, vanilla ComfyUI then loads the
    repaired file right. An unrelated reference is refused and writes nothing; the source is never touched."""
    import hashlib

    from wan_nvfp4.checkpoint import CheckpointError

    c = H.comfy()
    folder = H.models_folder(tmp_path)
    fx = FIXTURES["modelopt_nvfp4_stripped"]()
    src = fx.write(folder)
    reference = FIXTURES["bf16"](variant=fx.variant).write(tmp_path / "ref")
    reference = reference.rename(folder / "reference_bf16.safetensors")
    unrelated = FIXTURES["bf16"](variant=fx.variant, seed=7).write(tmp_path / "other")
    unrelated = unrelated.rename(folder / "unrelated_bf16.safetensors")
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    from wan_nvfp4.nodes.repair_node import WanRepairCheckpoint

    schema = WanRepairCheckpoint.define_schema()
    assert schema.display_name == "WAN NVFP4 Repair Checkpoint"
    with pytest.raises(CheckpointError, match="reference could not decide"):
        WanRepairCheckpoint.execute(source=src.name, target_name="refused", reference_name=unrelated.name)
    assert not (folder / "refused.safetensors").exists()
    calls = []
    c["utils"].set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: calls.append((value, total))
    )
    try:
        result = WanRepairCheckpoint.execute(source=src.name, target_name="", reference_name=reference.name)
    finally:
        c["utils"].set_progress_bar_global_hook(None)
    dst = folder / f"{src.stem}_repaired.safetensors"
    assert dst.exists() and calls and calls[-1] == (1000, 1000)
    assert "blocks.0.self_attn.q" in result.args[0]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before, "the source must never be modified"
    inputs = H.forward_inputs(fx.variant)
    out = H.run(_load_vanilla(dst), inputs)
    oracle = H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs)
    assert H.rel_err(out, oracle) <= CORRECT
    H.unload()
    with pytest.raises(ValueError, match="plain file name"):
        WanRepairCheckpoint.execute(source=src.name, target_name="../escape")
