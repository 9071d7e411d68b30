"""Sampling with ComfyUI's KSampler, plain and through the stock `TorchCompileModel` node (COMFYUI_PATH, CPU),
with and without an exact on-the-fly LoRA; and interrupts reach the pack's Linear."""

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from . import comfy_harness as H
from .test_comfy_lora import _lora

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    c = H.comfy()
    from wan_nvfp4.nodes import loader

    tmp = tmp_path_factory.mktemp("compile")
    fx = FIXTURES["mixed"](variant="wan2.1-t2v-14b")
    loras = tmp / "loras"
    loras.mkdir()
    save_file(_lora(fx), str(loras / "compile_lora.safetensors"))
    c["folder_paths"].add_model_folder_path("loras", str(loras))
    return {"loader": loader, "path": fx.write(tmp), "nodes": c["nodes"]}


def _sample(nodes, model, seed=3):
    g = torch.Generator().manual_seed(0)
    positive = [[torch.randn(1, 7, 4096, generator=g), {}]]
    negative = [[torch.randn(1, 7, 4096, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 16, 2, 8, 8)}
    (out,) = nodes.common_ksampler(model, seed, 2, 3.0, "euler", "simple", positive, negative, latent)
    return out["samples"]


def _compiled(model):
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    return TorchCompileModel.execute(model, "inductor").result[0]


def test_torch_compile_model_matches_eager(env):
    nodes = env["nodes"]
    base = env["loader"].load_wan_model(env["path"])
    eager = _sample(nodes, base)
    compiled = _sample(nodes, _compiled(base))
    assert H.rel_err(compiled, eager) <= 1e-4
    (lora,) = nodes.LoraLoaderModelOnly().load_lora_model_only(base, "compile_lora.safetensors", 1.0)
    eager_lora = _sample(nodes, lora)
    assert H.rel_err(eager_lora, eager) > 1e-3, "the LoRA must change the samples"
    compiled_lora = _sample(nodes, _compiled(lora))
    assert H.rel_err(compiled_lora, eager_lora) <= 1e-4
    H.unload()


def test_interrupt_stops_the_forward(env):
    import comfy.model_management as mm

    base = env["loader"].load_wan_model(env["path"])
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            H.run(base, H.forward_inputs("wan2.1-t2v-14b"))
    finally:
        mm.interrupt_current_processing(False)
    H.unload()
