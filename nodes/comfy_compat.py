"""What the pack needs from ComfyUI and comfy-kitchen, found by feature detection (never by version numbers).

This is the one place that knows how ComfyUI versions differ. `missing_features()` checks every API the
pack's nodes use (importable, with the parameters we pass); the entry point loads no node and logs one line
naming what is missing when anything is (`log_missing`), so an older ComfyUI keeps running. The flags below
adapt the pack to behaviour that changed between versions; docs/comfyui.md records the review behind them.

Tested range: ComfyUI 0.29.0 .. 0.33.0 (pyproject `requires-comfyui`), comfy-kitchen 0.2.24 .. 0.2.40.
"""

import importlib
import importlib.util
import inspect
import logging
from dataclasses import dataclass

LOG = logging.getLogger("wan_nvfp4.nodes")


@dataclass(frozen=True)
class Feature:
    """One API the pack uses: `module.attr` (dotted) exists and, if a callable, accepts `params`."""

    what: str
    module: str
    attr: str = ""
    params: tuple[str, ...] = ()


V3_API = "the V3 node API (comfy_api.latest)"
CK = "comfy-kitchen's quantized tensors (comfy_kitchen.tensor)"
LAYOUTS = "quantized layouts (comfy.quant_ops)"
CASTS = "offloadable casts (comfy.ops.cast_bias_weight(offloadable, compute_dtype))"
PATCHER = "ModelPatcher hooks (ON_LOAD callbacks, is_dynamic, set_model_compute_dtype)"
MP = "comfy.model_patcher"
V3_IO = ("ComfyNode", "Schema", "NodeOutput", "Combo.Input", "Boolean.Input", "Int.Input", "String.Input")
V3_IO += ("String.Output", "Model.Output")

FEATURES = (
    Feature(V3_API, "comfy_api.latest", "ComfyExtension"),
    *(Feature(V3_API, "comfy_api.latest", f"io.{name}") for name in V3_IO),
    Feature(V3_API, "comfy_api.latest", "ui.PreviewText"),
    Feature(CK, "comfy_kitchen.tensor.base", "BaseLayoutParams"),
    Feature(LAYOUTS, "comfy.quant_ops", "QuantizedLayout"),
    Feature(LAYOUTS, "comfy.quant_ops", "register_layout_class"),
    Feature(CASTS, "comfy.ops", "cast_bias_weight", ("offloadable", "compute_dtype")),
    Feature(CASTS, "comfy.ops", "uncast_bias_weight"),
    Feature("interrupts inside ops (comfy.ops.run_every_op)", "comfy.ops", "run_every_op"),
    Feature("manual-cast ops (comfy.ops.manual_cast.Linear)", "comfy.ops", "manual_cast.Linear"),
    Feature(
        "NVFP4 stochastic rounding (comfy.float)", "comfy.float", "stochastic_round_quantize_nvfp4_by_block"
    ),
    Feature("prefetched LoRA patches (LowVramPatch.clear_prepared)", MP, "LowVramPatch.clear_prepared"),
    Feature(
        "merged weights on request (patch_weight_to_device(return_weight))",
        MP,
        "ModelPatcher.patch_weight_to_device",
        ("return_weight",),
    ),
    Feature(PATCHER, MP, "ModelPatcher.is_dynamic"),
    Feature(PATCHER, MP, "ModelPatcher.add_callback_with_key"),
    Feature(PATCHER, MP, "ModelPatcher.set_model_compute_dtype"),
    Feature(PATCHER, "comfy.patcher_extension", "CallbacksMP.ON_LOAD"),
    Feature(
        "custom operations without Dynamic VRAM (comfy.sd.load_diffusion_model_state_dict(disable_dynamic))",
        "comfy.sd",
        "load_diffusion_model_state_dict",
        ("model_options", "metadata", "disable_dynamic"),
    ),
    Feature(
        "native loading without Dynamic VRAM (comfy.sd.load_diffusion_model(disable_dynamic))",
        "comfy.sd",
        "load_diffusion_model",
        ("model_options", "disable_dynamic"),
    ),
    Feature(
        "safetensors metadata (load_torch_file(return_metadata))",
        "comfy.utils",
        "load_torch_file",
        ("return_metadata",),
    ),
    Feature(
        "ComfyUI's dtype choice (comfy.model_management.unet_dtype)",
        "comfy.model_management",
        "unet_dtype",
        ("model_params", "supported_dtypes", "weight_dtype"),
    ),
    Feature("WAN models (comfy.supported_models.WAN21_T2V)", "comfy.supported_models", "WAN21_T2V"),
)

# ---- adaptations to behaviour that changed between versions (docs/comfyui.md, "ComfyUI versions") ----------

# WAN's feed-forward down-projection runs through `comfy.ops.linear_input_act` (ComfyUI >= 0.33); newer ones
# compute a float-weight Linear there themselves, bypassing the module's forward, when activations are fp16 on
# CUDA with fp16 accumulation on -- unless the module sets `_full_precision_mm`, which ComfyUI and other packs
# read as "call this module's own forward". The pack's Linear always needs its forward (kernel paths, the path
# log, interrupts), so it sets it. Versions without that shortcut never read it.
LINEAR_CLASS_FLAGS = {"_full_precision_mm": True}

# comfy-kitchen >= 0.2.40 gives layouts optional hooks its callers may use on resident weights. Our layouts
# keep the base class's defaults: `optimize_for_gemv` returns the weight unchanged (foreign-convention NVFP4 /
# FP8 has no other storage form), `linear_input_act` returns NotImplemented (the caller falls back to act +
# our forward).
CK_LAYOUT_HOOKS_KEPT_DEFAULT = ("optimize_for_gemv", "linear_input_act")


def _resolve(feature: Feature):
    obj = importlib.import_module(feature.module)
    for part in filter(None, feature.attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _accepts(fn, params: tuple[str, ...]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True  # a builtin we cannot inspect: trust it
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return True
    return all(name in sig.parameters for name in params)


def missing_features() -> list[str]:
    """What of FEATURES this ComfyUI lacks, as short descriptions (empty when the pack can run)."""
    missing: list[str] = []
    for feature in FEATURES:
        try:
            ok = _accepts(_resolve(feature), feature.params)
        except Exception:  # ImportError, AttributeError, or an import that fails inside ComfyUI
            ok = False
        if not ok and feature.what not in missing:
            missing.append(feature.what)
    return missing


def log_missing(missing: list[str]) -> None:
    """The one line an older ComfyUI logs instead of loading the pack's nodes."""
    LOG.error(
        "WAN NVFP4: nodes not loaded: this ComfyUI lacks %s. The pack is tested with ComfyUI 0.29.0 to "
        "0.33.0; update ComfyUI (and its requirements, comfy-kitchen included).",
        "; ".join(missing),
    )


def warn_without_node_api() -> None:
    """At import inside ComfyUI: a ComfyUI without the V3 node API never calls `comfy_entrypoint`; say so."""
    if importlib.util.find_spec("comfy_api") is None or importlib.util.find_spec("comfy_api.latest") is None:
        log_missing([FEATURES[0].what])
