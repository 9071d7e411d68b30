"""Feature detection (nodes/comfy_compat.py) in a real ComfyUI, and the adaptations to newer ComfyUI and
comfy-kitchen it holds, simulated where this environment cannot run them (docs/comfyui.md, "ComfyUI
versions").
"""

import asyncio
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from . import comfy_harness as H

comfyui = pytest.mark.comfyui
PACK_NODES = {
    "WanNVFP4Loader",
    "WanNVFP4LoaderAdvanced",
    "WanNVFP4PairLoader",
    "WanNVFP4Doctor",
    "WanQuantizeCheckpoint",
    "WanRepairCheckpoint",
}


@pytest.fixture(scope="module")
def compat():
    H.comfy()
    from wan_nvfp4.nodes import comfy_compat

    return comfy_compat


def _entry(caplog) -> tuple[list, list[str]]:
    """The node classes the V3 entry point gives, and the pack's log lines while it ran."""
    from wan_nvfp4.nodes import comfy_entrypoint

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wan_nvfp4"):
        extension = asyncio.run(comfy_entrypoint())
        nodes = asyncio.run(extension.get_node_list())
    return nodes, [r.getMessage() for r in caplog.records if r.name.startswith("wan_nvfp4")]


@comfyui
def test_this_comfyui_has_every_api_and_gets_every_node(compat, caplog):
    assert compat.missing_features() == []
    nodes, lines = _entry(caplog)
    assert {n.define_schema().node_id for n in nodes} == PACK_NODES
    assert lines == []


def _no_comfy_kitchen(monkeypatch, comfy):
    monkeypatch.setitem(sys.modules, "comfy_kitchen.tensor.base", None)  # import fails as if not installed


def _loader_without_disable_dynamic(monkeypatch, comfy):
    def load_diffusion_model_state_dict(sd, model_options=None, metadata=None):  # before Dynamic VRAM
        raise AssertionError("never called")

    monkeypatch.setattr(comfy["sd"], "load_diffusion_model_state_dict", load_diffusion_model_state_dict)


def _lowvram_patch_without_prefetch(monkeypatch, comfy):
    monkeypatch.delattr(comfy["model_patcher"].LowVramPatch, "clear_prepared")


OLDER = {
    "comfy-kitchen": (_no_comfy_kitchen, "comfy-kitchen's quantized tensors"),
    "disable_dynamic": (_loader_without_disable_dynamic, "load_diffusion_model_state_dict(disable_dynamic)"),
    "clear_prepared": (_lowvram_patch_without_prefetch, "LowVramPatch.clear_prepared"),
}


@comfyui
@pytest.mark.parametrize("lack", list(OLDER))
def test_an_older_comfyui_gets_one_line_and_no_nodes(compat, caplog, monkeypatch, lack):
    make_older, named = OLDER[lack]
    make_older(monkeypatch, H.comfy())
    nodes, lines = _entry(caplog)
    assert nodes == []
    assert len(lines) == 1, lines
    assert named in lines[0] and "nodes not loaded" in lines[0] and "0.29.0" in lines[0]


def test_a_comfyui_without_the_v3_api_gets_one_line_at_import(tmp_path):
    """Imported as a custom node (`folder_paths` loaded) by a ComfyUI without `comfy_api.latest`: one line."""
    code = (
        "import logging, sys, types; logging.basicConfig(format='%(name)s|%(message)s');"
        "sys.modules['folder_paths'] = types.ModuleType('folder_paths');"
        "sys.modules['comfy_api'] = None; import wan_nvfp4; print('imported')"
    )
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("wan_nvfp4")]
    assert len(lines) == 1 and "V3 node API" in lines[0] and "nodes not loaded" in lines[0], proc.stderr


# ---- newer ComfyUI: linear_input_act may compute a float-weight Linear without its forward -----------------


def _newer_linear_input_act(calls: list):
    """What `comfy.ops.linear_input_act` does in ComfyUI 0.38 (index commit 0271a469) on CUDA with fp16
    accumulation, made to happen here: a float weight is cast and multiplied by ComfyUI itself, bypassing the
    module's forward, unless the module sets `_full_precision_mm`; anything else calls the module."""
    import comfy.ops
    from comfy.quant_ops import QuantizedTensor

    def linear_input_act(linear, x, input_act, *args, **kwargs):
        calls.append(input_act)
        assert input_act == "gelu_tanh", input_act  # the only activation WAN folds
        x = F.gelu(x, approximate="tanh")
        flagged = getattr(linear, "_full_precision_mm", False)
        if not isinstance(linear.weight, QuantizedTensor) and not flagged:
            weight, bias, stream = comfy.ops.cast_bias_weight(linear, x, offloadable=True)
            try:
                return F.linear(x, weight, bias)
            finally:
                comfy.ops.uncast_bias_weight(linear, weight, bias, stream)
        return linear(x)

    return linear_input_act


def _run_mixed(tmp_path, flags) -> tuple[torch.Tensor, object, object]:
    """The mixed fixture (float ffn.2) loaded with `flags` on the pack's Linear: output, path log, block 0."""
    from wan_nvfp4.nodes import loader

    fx = FIXTURES["mixed"]()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("wan_nvfp4.nodes.linear.LINEAR_CLASS_FLAGS", flags)
        patcher = loader.load_wan_model(fx.write(tmp_path))
    out = H.run(patcher, H.forward_inputs(fx.variant))
    block = patcher.model.diffusion_model.blocks[0]
    H.unload()
    return out, block.self_attn.q.plan.path_log, block


@comfyui
def test_every_layer_runs_the_packs_forward_under_newer_linear_input_act(compat, tmp_path, monkeypatch):
    import comfy.ops

    plain, _, _ = _run_mixed(tmp_path / "plain", compat.LINEAR_CLASS_FLAGS)
    calls: list = []
    monkeypatch.setattr(comfy.ops, "linear_input_act", _newer_linear_input_act(calls), raising=False)
    out, log, block = _run_mixed(tmp_path / "newer", compat.LINEAR_CLASS_FLAGS)
    assert block.ffn[2].weight.dtype.is_floating_point and block.ffn[2]._full_precision_mm
    assert len(log._layers) == log.expected_layers, "every Linear of the file went through the pack's forward"
    assert torch.equal(out, plain)

    # control: without the flag, a ComfyUI whose WAN model folds the GELU skips the pack on float ffn.2
    _, unflagged, block = _run_mixed(tmp_path / "control", {})
    if calls:
        missed = {name for name in _float_ffn2(log) if name not in unflagged._layers}
        assert missed == set(_float_ffn2(log)), "the simulated shortcut must bypass the unflagged layers"
    else:  # ComfyUI 0.29: WAN's feed-forward is a plain Sequential, the shortcut cannot happen
        assert type(block.ffn) is torch.nn.Sequential
        assert len(unflagged._layers) == unflagged.expected_layers


def _float_ffn2(log) -> list[str]:
    return [name for name, (fmt, _) in log._layers.items() if name.endswith("ffn.2") and fmt == "float"]


# ---- comfy-kitchen >= 0.2.40: optional layout hooks keep their defaults ------------------------------------


@comfyui
def test_layouts_keep_comfy_kitchens_default_hooks(compat, tmp_path):
    from comfy_kitchen.tensor.base import QuantizedLayout, QuantizedTensor

    from wan_nvfp4.nodes import comfy_layouts, loader

    for layout in comfy_layouts.LAYOUTS.values():
        for hook in compat.CK_LAYOUT_HOOKS_KEPT_DEFAULT:
            overriding = [c for c in layout.__mro__ if c is not QuantizedLayout and hook in vars(c)]
            assert overriding == [], f"{layout.__name__}.{hook} must stay comfy-kitchen's default"

    fx = FIXTURES["mixed"]()
    patcher = loader.load_wan_model(fx.write(tmp_path))
    weights = [patcher.model.diffusion_model.blocks[0].self_attn.q.weight]  # nvfp4
    weights.append(patcher.model.diffusion_model.blocks[0].cross_attn.q.weight)  # fp8
    for qt in weights:
        assert comfy_layouts.is_ours(qt)
        if hasattr(QuantizedTensor, "optimize_for_gemv"):  # comfy-kitchen >= 0.2.40
            storage = torch.arange(4096, dtype=torch.int32).to(torch.uint8)
            before = storage.clone()
            assert qt.optimize_for_gemv(storage) is qt
            assert torch.equal(storage, before), "the caller's buffer must stay untouched"
        else:
            assert not hasattr(QuantizedLayout, "optimize_for_gemv")
        if hasattr(QuantizedTensor, "linear_input_act"):
            x = torch.randn(3, qt.shape[1])
            assert qt.linear_input_act(x, input_act="gelu_tanh") is NotImplemented
        else:
            assert not hasattr(QuantizedLayout, "linear_input_act")
