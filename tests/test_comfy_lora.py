"""LoRA through ComfyUI's stock `LoraLoaderModelOnly` on quantized weights (COMFYUI_PATH, CPU).

Oracle: vanilla ComfyUI with the oracle-dequantized float weights and the same LoRA (an exact fp32 merge).
Exact mode must match it; merge mode requantizes (like ComfyUI) and must not; unloading restores the stored
bytes exactly; ComfyUI's lowvram (offloaded, weight-function) path gives the same result. ComfyUI's bypass
LoRA (`Load LoRA (Bypass)`, also used by its training nodes) wraps the Linear's forward instead of patching
the weight, and must match the same oracle.
"""

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

MAX_REL_ERR = 2e-3
RANK = 4
LORA_LAYERS = ("blocks.0.self_attn.q", "blocks.0.self_attn.o", "blocks.1.cross_attn.k", "blocks.1.ffn.0")


def _lora(fx) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    sd = {}
    for name in LORA_LAYERS:
        n, k = fx.reference[f"{name}.weight"].shape
        sd[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(RANK, k, generator=g) * 0.2
        sd[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(n, RANK, generator=g) * 0.2
        sd[f"diffusion_model.{name}.alpha"] = torch.tensor(float(RANK))
    return sd


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    c = H.comfy()
    from wan_nvfp4.nodes import loader

    tmp = tmp_path_factory.mktemp("lora")
    fx = FIXTURES["comfy_nvfp4"](variant="wan2.1-t2v-14b")
    loras = tmp / "loras"
    loras.mkdir()
    save_file(_lora(fx), str(loras / "tiny_lora.safetensors"))
    c["folder_paths"].add_model_folder_path("loras", str(loras))
    return {
        "loader": loader,
        "fx": fx,
        "path": fx.write(tmp),
        "nodes": c["nodes"],
        "lora": loras / "tiny_lora.safetensors",
    }


def _with_lora(env, patcher, strength=1.0):
    (model,) = (
        env["nodes"].LoraLoaderModelOnly().load_lora_model_only(patcher, "tiny_lora.safetensors", strength)
    )
    return model


def _oracle(env, inputs, lora: bool):
    base = H.vanilla_model(H.oracle_state_dict(env["fx"]))
    return H.run(_with_lora(env, base) if lora else base, inputs)


def test_exact_lora_matches_the_oracle_and_unload_restores(env):
    inputs = H.forward_inputs(env["fx"].variant)
    base = env["loader"].load_wan_model(env["path"])
    q = base.model.diffusion_model.blocks[0].self_attn.q
    stored = q.weight._qdata.clone()
    y_base = H.run(base, inputs)
    y_lora = H.run(_with_lora(env, base), inputs)
    assert any(f.key.endswith("self_attn.q.weight") for f in q.weight_function)
    oracle_lora = _oracle(env, inputs, lora=True)
    assert H.rel_err(y_lora, y_base) > 0.05, "the LoRA must change the output (else the test proves nothing)"
    assert H.rel_err(y_lora, oracle_lora) <= MAX_REL_ERR
    # unloading the LoRA model and running the base again restores it exactly
    y_again = H.run(base, inputs)
    assert torch.equal(y_again, y_base)
    assert torch.equal(q.weight._qdata, stored) and q.weight_function == []
    H.unload()


def test_merge_mode_requantizes_like_comfyui(env):
    inputs = H.forward_inputs(env["fx"].variant)
    oracle_lora = _oracle(env, inputs, lora=True)
    exact = _with_lora(env, env["loader"].load_wan_model(env["path"]))
    exact_err = H.rel_err(H.run(exact, inputs), oracle_lora)
    H.unload()
    merged_base = env["loader"].load_wan_model(env["path"], env["loader"].LoaderOptions(lora_mode="merge"))
    q = merged_base.model.diffusion_model.blocks[0].self_attn.q
    stored = q.weight._qdata.clone()
    merged = _with_lora(env, merged_base)
    merge_err = H.rel_err(H.run(merged, inputs), oracle_lora)
    assert q.weight_function == [] and not torch.equal(q.weight._qdata, stored), "merged = new packed bytes"
    assert merge_err > 10 * exact_err, f"merge {merge_err:.3g} vs exact {exact_err:.3g}"
    assert merge_err < 0.2, "the merge still applies the LoRA"
    H.unload()
    assert torch.equal(q.weight._qdata, stored), "unpatching restores the stored weight"


def test_lowvram_offload_with_and_without_lora(env):
    inputs = H.forward_inputs(env["fx"].variant)
    base = env["loader"].load_wan_model(env["path"])
    y_full = H.run(base, inputs)
    H.unload()
    y_low = H.run(base, inputs, lowvram_bytes=64 * 1024)
    assert base.model.model_lowvram, "the patcher must really have offloaded modules"
    base.unpatch_model(torch.device("cpu"))
    assert H.rel_err(y_low, y_full) <= 1e-6
    lora = _with_lora(env, base)
    y_low_lora = H.run(lora, inputs, lowvram_bytes=64 * 1024)
    lora.unpatch_model(torch.device("cpu"))
    assert H.rel_err(y_low_lora, _oracle(env, inputs, lora=True)) <= MAX_REL_ERR
    H.unload()


def test_partial_unload_does_not_apply_the_lora_twice(env):
    """ComfyUI's partially_unload adds its own LowVramPatch next to ours: only one may run."""
    inputs = H.forward_inputs(env["fx"].variant)
    model = _with_lora(env, env["loader"].load_wan_model(env["path"]))
    y_full = H.run(model, inputs)
    assert model.partially_unload(torch.device("cpu"), memory_to_free=10**12) > 0
    q = model.model.diffusion_model.blocks[0].self_attn.q
    assert [type(f).__name__ for f in q.weight_function] == ["ExactLoraPatch", "LowVramPatch"]
    with torch.inference_mode():
        y_offloaded = model.model.diffusion_model(**inputs).float()
    assert H.rel_err(y_offloaded, y_full) <= 1e-6
    assert H.rel_err(y_full, _oracle(env, inputs, lora=True)) <= MAX_REL_ERR
    H.unload()


def test_bypass_lora_matches_the_oracle_and_never_touches_the_weight(env):
    """`comfy.sd.load_bypass_lora_for_models` (the `LoraLoaderBypass*` nodes): output = our forward + the
    adapter's path; the packed bytes untouched, no weight function, the base model unchanged after."""
    c = H.comfy()
    inputs = H.forward_inputs(env["fx"].variant)
    base = env["loader"].load_wan_model(env["path"])
    q = base.model.diffusion_model.blocks[0].self_attn.q
    stored = q.weight._qdata.clone()
    y_base = H.run(base, inputs)
    lora_sd = c["utils"].load_torch_file(str(env["lora"]), safe_load=True)
    bypass, _ = c["sd"].load_bypass_lora_for_models(base, None, lora_sd, 1.0, 0.0)
    y_bypass = H.run(bypass, inputs)
    assert q.weight_function == [], "bypass must not patch the weight"
    assert torch.equal(q.weight._qdata, stored)
    assert H.rel_err(y_bypass, y_base) > 0.05, (
        "the LoRA must change the output (else the test proves nothing)"
    )
    assert H.rel_err(y_bypass, _oracle(env, inputs, lora=True)) <= MAX_REL_ERR
    assert torch.equal(H.run(base, inputs), y_base), "the bypass must not leak into the base model"
    H.unload()
