"""Exact on-the-fly LoRA for quantized weights: patches applied to the dequantized weight on every forward.

ComfyUI applies LoRA per forward only to offloaded ("lowvram") modules; a fully loaded module gets its patches
merged once and, for quantized weights, requantized (lossy on NVFP4). In `exact` mode our Linear's
`set_weight` keeps the stored quantized weight, and an `ON_LOAD` callback (registered on the patcher by the
loader, copied to every clone, so also to `LoraLoaderModelOnly`'s) gives each fully loaded quantized module a
`LowVramPatch`, the same object ComfyUI uses for lowvram modules. Unpatching ComfyUI-style restores the
original: nothing of the weight was changed, and the next load rebuilds the functions from that patcher's
patches. In `merge` mode nothing here runs and `set_weight` requantizes like ComfyUI does.
"""

from comfy.model_patcher import LowVramPatch
from comfy.patcher_extension import CallbacksMP

from .comfy_layouts import is_ours

EXACT = "exact"
MERGE = "merge"
LORA_MODES = (EXACT, MERGE)
CALLBACK_KEY = "wan_nvfp4_exact_lora"


class ExactLoraPatch(LowVramPatch):
    """A LowVramPatch installed by this pack on a fully loaded module (ComfyUI's own ones take precedence)."""


def drop_superseded(functions: list) -> list:
    """Our patch, minus duplicates: if ComfyUI later put its own LowVramPatch for the key, ours goes."""
    theirs = {f.key for f in functions if isinstance(f, LowVramPatch) and not isinstance(f, ExactLoraPatch)}
    return [f for f in functions if not (isinstance(f, ExactLoraPatch) and f.key in theirs)]


def install_exact_patches(
    patcher, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False
):
    """ON_LOAD callback: per-forward LoRA for every exact-mode quantized module whose weight has patches."""
    if patcher.is_dynamic():
        return  # Dynamic VRAM attaches `weight_lowvram_function`; our Linear applies it exactly itself
    for name, module in patcher.model.named_modules():
        if getattr(module, "wan_nvfp4_lora_mode", None) != EXACT or not is_ours(module.weight):
            continue
        key = f"{name}.weight"
        if key not in patcher.patches:
            continue
        functions = list(module.weight_function)
        if any(isinstance(f, LowVramPatch) and f.key == key for f in functions):
            continue  # offloaded module: ComfyUI already applies the patch per forward
        module.weight_function = [ExactLoraPatch(key, patcher.patches), *functions]


def register(patcher) -> None:
    """Attach the callback to a freshly loaded patcher (clones inherit it)."""
    patcher.remove_callbacks_with_key(CallbacksMP.ON_LOAD, CALLBACK_KEY)
    patcher.add_callback_with_key(CallbacksMP.ON_LOAD, CALLBACK_KEY, install_exact_patches)
