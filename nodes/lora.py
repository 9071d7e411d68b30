"""Exact on-the-fly LoRA for quantized weights: patches applied to the dequantized weight on every forward.

ComfyUI applies LoRA per forward only to offloaded ("lowvram") modules; a fully loaded module gets its patches
merged once and, for quantized weights, requantized (lossy on NVFP4). In `exact` mode our Linear's
`set_weight` keeps the stored quantized weight, and an `ON_LOAD` callback (registered on the patcher by the
loader, copied to every clone, so also to `LoraLoaderModelOnly`'s) gives each fully loaded quantized module a
`LowVramPatch`, the same object ComfyUI uses for lowvram modules. Unpatching ComfyUI-style restores the
original: nothing of the weight was changed, and the next load rebuilds the functions from that patcher's
patches. In `merge` mode nothing here runs and `set_weight` requantizes like ComfyUI does.

Saving (ModelSave / CheckpointSave): ComfyUI writes a fully loaded module's `state_dict()` as it is, which in
exact mode is the stored weight without the LoRA. `lazy_merged_weight` gives `state_dict()` pieces that merge
the LoRA when the file is written, exactly as `merge` mode would have (ComfyUI's lazy-caster protocol:
safetensors moves each tensor to the CPU with `.to()`).
"""

import collections
import weakref

import torch
from comfy.model_patcher import LowVramPatch
from comfy.patcher_extension import CallbacksMP

from .comfy_layouts import is_quantized

EXACT = "exact"
MERGE = "merge"
LORA_MODES = (EXACT, MERGE)
CALLBACK_KEY = "wan_nvfp4_exact_lora"


class ExactLoraPatch(LowVramPatch):
    """A LowVramPatch installed by this pack on a fully loaded module (ComfyUI's own ones take precedence).
    Keeps a weak reference to its patcher, which computes the merged weight when the model is saved."""

    def __init__(self, key: str, patcher):
        super().__init__(key, patcher.patches)
        self.patcher = weakref.ref(patcher)


def drop_superseded(functions: list) -> list:
    """Our patch, minus duplicates: if ComfyUI later put its own LowVramPatch for the key, ours goes."""
    theirs = {f.key for f in functions if isinstance(f, LowVramPatch) and not isinstance(f, ExactLoraPatch)}
    return [f for f in functions if not (isinstance(f, ExactLoraPatch) and f.key in theirs)]


def exact_patch(functions: list) -> "ExactLoraPatch | None":
    """Our patch among a module's weight functions, unless ComfyUI's own one for the key supersedes it."""
    return next((f for f in drop_superseded(functions) if isinstance(f, ExactLoraPatch)), None)


LAZY_MERGE_DEVICE = collections.namedtuple("LazyMergeDevice", ["type", "index"])("wan-nvfp4-lazy-merge", 0)


class _LoraMerge:
    """The merged, requantized weight of one module, computed once on first use by the patcher's own
    `patch_weight_to_device(return_weight=True)`: what merge mode computes, through our `set_weight`."""

    def __init__(self, patch: ExactLoraPatch, weight_key: str):
        self.patch, self.weight_key = patch, weight_key
        self.tensors: dict[str, torch.Tensor] | None = None

    def tensor(self, key: str) -> torch.Tensor:
        if self.tensors is None:
            patcher = self.patch.patcher()
            if patcher is None:
                raise RuntimeError(
                    f"{self.patch.key}: the model that holds this LoRA is gone; cannot save it"
                )
            merged = patcher.patch_weight_to_device(
                self.patch.key, device_to=patcher.load_device, return_weight=True
            )
            self.tensors = {k: v.to("cpu") for k, v in merged.state_dict(self.weight_key).items()}
        return self.tensors[key]


class LazyMergedPiece(torch.nn.Parameter):
    """One tensor of a LoRA-merged weight, standing in the state dict with the stored tensor's dtype and shape
    until safetensors moves it to the CPU."""

    def __new__(cls, merge: _LoraMerge, key: str, stored: torch.Tensor):
        return super().__new__(cls, stored, requires_grad=False)

    def __init__(self, merge: _LoraMerge, key: str, stored: torch.Tensor):
        self.merge, self.key = merge, key

    @property
    def device(self):
        return LAZY_MERGE_DEVICE

    def to(self, *args, **kwargs):
        return self.merge.tensor(self.key)


def lazy_merged_weight(module, weight_key: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` (the stored weight's state-dict entries) as lazily merged pieces when an exact-mode LoRA
    patch is installed on `module`, else unchanged."""
    patch = exact_patch(module.weight_function)
    if patch is None:
        return tensors
    merge = _LoraMerge(patch, weight_key)
    return {k: LazyMergedPiece(merge, k, v) for k, v in tensors.items()}


def install_exact_patches(
    patcher, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False
):
    """ON_LOAD callback: per-forward LoRA for every exact-mode quantized module whose weight has patches."""
    if patcher.is_dynamic():
        return  # Dynamic VRAM attaches `weight_lowvram_function`; our Linear applies it exactly itself
    for name, module in patcher.model.named_modules():
        if getattr(module, "wan_nvfp4_lora_mode", None) != EXACT or not is_quantized(module.weight):
            continue
        key = f"{name}.weight"
        if key not in patcher.patches:
            continue
        functions = list(module.weight_function)
        if any(isinstance(f, LowVramPatch) and f.key == key for f in functions):
            continue  # offloaded module: ComfyUI already applies the patch per forward
        module.weight_function = [ExactLoraPatch(key, patcher), *functions]


def register(patcher) -> None:
    """Attach the callback to a freshly loaded patcher (clones inherit it)."""
    patcher.remove_callbacks_with_key(CallbacksMP.ON_LOAD, CALLBACK_KEY)
    patcher.add_callback_with_key(CallbacksMP.ON_LOAD, CALLBACK_KEY, install_exact_patches)
