"""ComfyUI as a library for the `test_comfy_*` integration tests (needs COMFYUI_PATH; CPU only).

Independent oracle: every quantized layer of a fixture is dequantized with comfy-kitchen's eager reference
(NVFP4, fp32 output, nibble order and scale layout from the fixture's ground truth) or by hand (FP8:
`data * scale` in fp32), and the resulting float state dict is loaded by *vanilla* ComfyUI. The pack's model
must give the same forward as that oracle model.
"""

import importlib
import os
import sys
from pathlib import Path

import torch

from wan_nvfp4.checkpoint.tiny.fixtures import TINY_VARIANTS
from wan_nvfp4.kernels import HIGH_FIRST, LINEAR

_COMFY: dict = {}


def comfy():
    """Import ComfyUI once (CPU mode) and return a namespace dict of the modules tests use."""
    if not _COMFY:
        root = os.environ["COMFYUI_PATH"]
        if root not in sys.path:
            sys.path.insert(0, root)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        for name in (
            "comfy.model_management",
            "comfy.ops",
            "comfy.sd",
            "comfy.utils",
            "comfy.lora",
            "comfy.model_patcher",
            "folder_paths",
            "nodes",
        ):
            _COMFY[name.split(".")[-1]] = importlib.import_module(name)
    return _COMFY


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ---- the oracle --------------------------------------------------------------------------------------------


def _ck_nvfp4(parts: dict, truth) -> torch.Tensor:
    import comfy_kitchen as ck
    from comfy_kitchen.float_utils import to_blocked

    if "weight_scale_2" in parts:
        gs = parts["weight_scale_2"].float()
    elif "weight_global_scale" in parts:  # LightX2V converter: 2688 / amax, the reciprocal
        gs = (1.0 / parts["weight_global_scale"].float()).reshape(())
    else:  # LightX2V: weight_scale_2 = alpha * input_global_scale (FORMATS.md §1)
        gs = (parts["alpha"].float() * parts["input_global_scale"].float()).reshape(())
    block = parts["weight_scale"].view(torch.float8_e4m3fn)
    if truth.scale_layout == LINEAR:
        block = to_blocked(block, flatten=False)
    with ck.use_backend("eager"):
        return ck.dequantize_nvfp4(
            parts["weight"], gs, block, output_type=torch.float32, hi_first=truth.nibble_order == HIGH_FIRST
        )


def _hand_fp8(parts: dict, truth) -> torch.Tensor:
    scale = parts.get("weight_scale", parts.get("scale_weight"))
    data = parts["weight"].float()
    if scale is None:
        return data
    scale = scale.float()
    return data * (scale.reshape(-1, 1) if scale.numel() > 1 else scale.reshape(()))


ORACLES = {"nvfp4": _ck_nvfp4, "fp8_scaled": _hand_fp8, "fp8": _hand_fp8}


def oracle_state_dict(fx) -> dict[str, torch.Tensor]:
    """The fixture as a plain float state dict (no prefix), quantized layers dequantized by the oracle."""
    tensors = {k[len(fx.prefix) :]: v for k, v in fx.tensors.items()}
    out = {}
    for name, truth in fx.layers.items():
        parts = {k[len(name) + 1 :]: tensors.pop(k) for k in list(tensors) if k.startswith(name + ".")}
        if truth.format in ORACLES:
            n = fx.reference[f"{name}.weight"].shape[0]
            out[f"{name}.weight"] = ORACLES[truth.format](parts, truth)[:n].float()
        else:
            out[f"{name}.weight"] = parts["weight"].float()
        out[f"{name}.bias"] = parts["bias"]
    tensors.pop("scaled_fp8", None)
    return out | tensors


def vanilla_model(state_dict: dict):
    """Vanilla ComfyUI's ModelPatcher for a float state dict."""
    return comfy()["sd"].load_diffusion_model_state_dict(dict(state_dict))


# ---- inputs and forward ------------------------------------------------------------------------------------


def forward_inputs(variant: str, seed: int = 0) -> dict:
    """Small inputs for the tiny model of `variant` (x, timestep, context, + clip / VACE inputs)."""
    c = TINY_VARIANTS[variant]
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "x": torch.randn(1, c.in_dim, 2, 8, 8, generator=g),
        "timestep": torch.tensor([500.0]),
        "context": torch.randn(1, 7, 4096, generator=g),
    }
    if c.img_emb:
        inputs["clip_fea"] = torch.randn(1, c.emb_pos_tokens or 257, 1280, generator=g)
    if c.vace_layers:
        inputs["vace_context"] = torch.randn(1, 1, c.vace_in_dim, 2, 8, 8, generator=g)
        inputs["vace_strength"] = [1.0]
    return inputs


def run(patcher, inputs: dict, lowvram_bytes: int | None = None) -> torch.Tensor:
    """Load `patcher` on the CPU like ComfyUI (fully, or lowvram with `lowvram_bytes`); run one forward.

    The model stays loaded (with its patches) until the next `run` of another patcher or `unload`.
    """
    mm = comfy()["model_management"]
    if lowvram_bytes is None:
        mm.load_models_gpu([patcher], force_full_load=True)
    else:
        mm.unload_all_models()
        patcher.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=lowvram_bytes)
    model = patcher.model
    with torch.inference_mode():
        dtype = model.get_dtype_inference()
        kwargs = {
            k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in inputs.items()
        }
        return model.diffusion_model(**kwargs).float()


def unload():
    mm = comfy()["model_management"]
    mm.unload_all_models()
    mm.soft_empty_cache()


def models_folder(tmp: Path) -> Path:
    """`tmp/diffusion_models`, created and registered as a ComfyUI `diffusion_models` folder."""
    folder = tmp / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    comfy()["folder_paths"].add_model_folder_path("diffusion_models", str(folder))
    return folder
