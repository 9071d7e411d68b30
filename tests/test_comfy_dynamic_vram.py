"""The parts of ComfyUI's Dynamic VRAM contract that run on a CPU (COMFYUI_PATH).

Dynamic VRAM itself needs CUDA (comfy-aimdo's VBAR); what it does to a module's tensors does not:
`cast_to_gathered` / `interpret_gathered_like` move a weight byte-wise through a flat uint8 buffer (packed
bytes must survive unchanged, never value-cast), `post_cast` turns it into the compute dtype with
`.to(dtype)` + `.dequantize()`, and a `weight_lowvram_function` (a `LowVramPatch`, possibly prepared into a
transient cast buffer) is applied by our Linear itself in exact LoRA mode and then cleared.
"""

import pytest
import torch
import torch.nn.functional as F

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

CASES = ["comfy_nvfp4", "modelopt_nvfp4", "lightx2v_nvfp4", "kijai_fp8", "fp8_per_row", "mixed"]


@pytest.fixture(scope="module")
def loader():
    H.comfy()
    from wan_nvfp4.nodes import loader

    return loader


def _quantized_linears(patcher):
    from wan_nvfp4.nodes.comfy_layouts import is_ours

    return [
        (n, m)
        for n, m in patcher.model.diffusion_model.named_modules()
        if is_ours(getattr(m, "weight", None))
    ]


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def _inner(qt) -> dict[str, torch.Tensor]:
    names, _ = qt.__tensor_flatten__()
    return {name: getattr(qt, name) for name in names}


@pytest.mark.parametrize("name", CASES)
def test_weights_travel_bytewise_through_a_gathered_buffer(loader, tmp_path, name):
    from comfy.memory_management import interpret_gathered_like, vram_aligned_size
    from comfy.model_management import cast_to_gathered

    from wan_nvfp4.nodes.comfy_layouts import is_ours

    patcher = loader.load_wan_model(FIXTURES[name]().write(tmp_path))
    layers = _quantized_linears(patcher)
    assert layers, "the fixture must have quantized layers"
    for layer, m in layers:
        w, b = m.weight, m.bias
        buffer = torch.full((vram_aligned_size([w, b]),), 0xA5, dtype=torch.uint8)
        cast_to_gathered([w, b], buffer)
        w2, b2 = interpret_gathered_like([w, b], buffer)
        assert is_ours(w2), layer
        for key, t in _inner(w).items():
            t2 = _inner(w2)[key]
            assert t2.dtype == t.dtype and t2.shape == t.shape, (layer, key)
            assert torch.equal(_bytes(t2), _bytes(t)), (layer, key)
        assert torch.equal(w2.dequantize(), w.dequantize()), layer
        assert torch.equal(b2, b), layer


@pytest.mark.parametrize("name", ["comfy_nvfp4", "modelopt_nvfp4", "fp8_per_row"])
def test_post_cast_dtype_change_keeps_bytes_and_dequantizes_exactly(loader, tmp_path, name):
    from wan_nvfp4.kernels import dequantize
    from wan_nvfp4.nodes.comfy_layouts import is_ours, kernel_weight

    patcher = loader.load_wan_model(FIXTURES[name]().write(tmp_path))
    for layer, m in _quantized_linears(patcher):
        w = m.weight
        for dtype in (torch.bfloat16, torch.float16):
            cast = w.to(dtype=dtype)  # what ComfyUI's post_cast does before .dequantize()
            assert is_ours(cast) and cast.dtype == dtype, layer
            assert torch.equal(_bytes(cast._qdata), _bytes(w._qdata)), layer
            want = dequantize(kernel_weight(w), dtype)
            assert torch.equal(cast.dequantize(), want), (layer, dtype)


def test_lowvram_function_applied_once_to_the_dequantized_weight_and_cleared(loader, tmp_path):
    """A prepared LowVramPatch on our Linear: applied exactly (on the float weight), then cleared."""
    import comfy.lora
    from comfy.model_patcher import LowVramPatch

    from wan_nvfp4.kernels import dequantize
    from wan_nvfp4.nodes.comfy_layouts import kernel_weight

    patcher = loader.load_wan_model(FIXTURES["modelopt_nvfp4"]().write(tmp_path))
    name, m = _quantized_linears(patcher)[0]
    key = f"diffusion_model.{name}.weight"
    n, k = m.out_features, m.in_features
    g = torch.Generator().manual_seed(3)
    up, down = torch.randn(n, 4, generator=g) * 0.1, torch.randn(4, k, generator=g) * 0.1
    lora = {
        f"diffusion_model.{name}.lora_up.weight": up,
        f"diffusion_model.{name}.lora_down.weight": down,
        f"diffusion_model.{name}.alpha": torch.tensor(4.0),
    }
    patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(patcher.model, {}))
    assert key in patcher.add_patches(patches, 1.0)
    fn = LowVramPatch(key, patcher.patches)
    fn.prepare(torch.empty(fn.memory_required(), dtype=torch.uint8), None, copy=True, commit=True)
    assert fn.prepared_patches is not None
    m.weight_lowvram_function = fn
    x = torch.randn(3, k, generator=g)
    with torch.inference_mode():
        y = m(x)
    w = dequantize(kernel_weight(m.weight), torch.float32)
    want = F.linear(x, comfy.lora.calculate_weight(patcher.patches[key], w.clone(), key), m.bias)
    assert H.rel_err(y, want) < 1e-5
    assert H.rel_err(y, F.linear(x, w, m.bias)) > 1e-3, "the LoRA must change the output (negative check)"
    assert fn.prepared_patches is None, "a patch prepared into a transient cast buffer must be cleared"
    assert m.weight_lowvram_function is fn
