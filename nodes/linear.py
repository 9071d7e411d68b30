"""The pack's Linear inside ComfyUI's WanModel: quantized weights kept as read, run through `kernels.ops`.

One Linear class is made per load (`make_operations`), bound to that load's `LoadPlan` (file, per-layer specs,
kernel options, LoRA mode, path log): two models loaded at once never share options. The Linear follows
ComfyUI's contract for quantized modules (COMFYUI.md §3.6): `<layer>.weight` stays the key with the logical
shape, weights are `QuantizedTensor`s in our layouts (moved byte-wise by every offload mode), forward goes
through `cast_bias_weight(..., offloadable=True)` / `uncast_bias_weight`, LoRA weight functions see the
dequantized float weight, `convert_weight` / `set_weight` serve ComfyUI's merge.
"""

from dataclasses import dataclass

import comfy.float
import comfy.ops
import torch
import torch.nn.functional as F
from comfy.ops import cast_bias_weight, run_every_op, uncast_bias_weight

from ..checkpoint.errors import CheckpointError
from ..checkpoint.layers import NVFP4, LayerSpec, build_weight, json_marker
from ..checkpoint.writing.repair import comfy_input_scale
from ..kernels import ops as kernel_ops
from ..kernels.dispatch import weight_format
from ..kernels.native_fp4 import COMFYUI, NVFP4Decision, layer_runner
from ..kernels.options import KernelOptions, PathLog
from .comfy_compat import LINEAR_CLASS_FLAGS
from .comfy_layouts import (
    is_ours,
    is_quantized,
    kernel_weight,
    quantized_weight,
    saved_markers,
    with_orig_dtype,
)
from .lora import EXACT, ExactLoraPatch, drop_superseded, lazy_merged_weight
from .native_fp4 import is_native, native_linear, native_weight

LORA_PATH = "dequant+lora"  # what the path log records for a forward with LoRA patches


@dataclass(frozen=True)
class LoadPlan:
    """Everything one load decided: the file, each Linear's spec (by layer name), and how to run them."""

    path: str
    layers: dict[str, LayerSpec]
    kernel_options: KernelOptions
    dequant_path: str
    lora_mode: str
    path_log: PathLog
    nvfp4: NVFP4Decision  # who runs the NVFP4 layers (ComfyUI's FP4 GEMM on converted weights, or ours)


def _layer_tensors(plan: LoadPlan, spec: LayerSpec, state_dict: dict, prefix: str) -> dict[str, torch.Tensor]:
    """Pop every tensor of the layer except the bias (left to torch), keyed by its full name in the file."""
    found = {}
    for role, key in spec.tensors.items():
        if role == "bias":
            continue
        local = prefix + key[len(spec.key) + 1 :]
        if local not in state_dict:
            raise CheckpointError(
                plan.path, f"tensor `{key}` ({role}) is missing", spec.name, f"`{key}`", "no such tensor"
            )
        found[key] = state_dict.pop(local)
    return found


class WanQuantLinear(comfy.ops.manual_cast.Linear):
    """A Linear whose weight is a float Parameter or one of our QuantizedTensors (decided per layer)."""

    def __init__(self, plan: LoadPlan, in_features, out_features, bias=True, device=None, dtype=None):
        # no full-size weight allocation here: the file's tensors are assigned at load
        torch.nn.Module.__init__(self)
        self.plan = plan
        self.in_features = in_features
        self.out_features = out_features
        self.weight = None
        self.bias = None
        if bias:
            self.bias = torch.nn.Parameter(
                torch.empty(out_features, device=device, dtype=dtype), requires_grad=False
            )
        self.model_dtype = dtype
        self.layer_name = ""
        self.wan_nvfp4_lora_mode = plan.lora_mode
        self.wan_nvfp4_full_precision_mm = False  # the file's `full_precision_matrix_mult` for this layer

    # ---- loading -------------------------------------------------------------------------------------------
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        plan = self.plan
        self.layer_name = prefix[:-1]
        spec = plan.layers.get(self.layer_name)
        weight_key = prefix + "weight"
        if spec is not None and spec.is_quantized:
            self.wan_nvfp4_full_precision_mm = spec.full_precision_mm
            found = _layer_tensors(plan, spec, state_dict, prefix)
            weight = build_weight(spec, found.__getitem__, path=plan.path)
            orig_dtype = self.model_dtype or torch.float32
            if layer_runner(plan.nvfp4, spec.format) == COMFYUI:
                qt = native_weight(weight, orig_dtype)  # this layer only: no doubled peak memory
                input_scale = comfy_input_scale(spec, found.__getitem__)
            else:
                qt, input_scale = quantized_weight(weight, orig_dtype, plan.dequant_path), None
            self.weight = torch.nn.Parameter(qt, requires_grad=False)
        elif weight_key in state_dict:
            w = state_dict.pop(weight_key)
            self.weight = torch.nn.Parameter(w.to(dtype=self.model_dtype or w.dtype), requires_grad=False)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.weight is not None and weight_key in missing_keys:
            missing_keys.remove(weight_key)
        if spec is not None and spec.is_quantized and input_scale is not None:
            # ComfyUI's static activation scale for the FP4 GEMM (registered like MixedPrecisionOps does)
            self.input_scale = torch.nn.Parameter(input_scale.to(qt.device), requires_grad=False)

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False, **kwargs):
        """The file's tensor names (`weight`, `weight_scale`, ...) and real sizes for ComfyUI's accounting,
        plus the markers (`comfy_quant`, ...) that make a model saved by ComfyUI read back right."""
        sd = destination if destination is not None else {}
        if self.bias is not None:
            sd[prefix + "bias"] = self.bias
        if is_quantized(self.weight):
            weight_key = prefix + "weight"
            sd.update(lazy_merged_weight(self, weight_key, self.weight.state_dict(weight_key)))
            markers = saved_markers(self.weight, self.wan_nvfp4_full_precision_mm)
            sd.update({prefix + k: json_marker(conf) for k, conf in markers.items()})
            if getattr(self, "input_scale", None) is not None:
                sd[prefix + "input_scale"] = self.input_scale
        elif self.weight is not None:
            sd[prefix + "weight"] = self.weight
        return sd

    def _apply(self, fn, recurse=True):
        """Replace Parameters (QuantizedTensors cannot be swapped in place): `.to()` and compile work."""
        for key, param in self._parameters.items():
            if param is None:
                continue
            p = fn(param)
            if not torch.is_inference_mode_enabled() and p.is_inference():
                p = p.clone()
            self.register_parameter(key, torch.nn.Parameter(p, requires_grad=False))
        for key, buf in self._buffers.items():
            if buf is not None:
                self._buffers[key] = fn(buf)
        return self

    # ---- LoRA merge (ModelPatcher.patch_weight_to_device) -------------------------------------------------
    def convert_weight(self, weight, inplace=False, **kwargs):
        return weight.dequantize() if is_quantized(weight) else weight

    def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
        current = self.weight
        if not is_quantized(current):
            merged = comfy.float.stochastic_rounding(weight, current.dtype, seed=seed or 0)
        elif self.wan_nvfp4_lora_mode == EXACT and not return_weight:
            # the stored weight stays as read; `lora.install_exact_patches` applies the patch per forward
            return None
        else:
            merged = current.requantize_from_float(weight, scale="recalculate", stochastic_rounding=seed or 0)
            merged = with_orig_dtype(merged, current.dtype)
        if return_weight:
            return merged
        self.weight = torch.nn.Parameter(merged, requires_grad=False)
        return None

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, x, *args, **kwargs):
        run_every_op()
        if not is_quantized(self.weight):
            self._record("float", "torch")
            return super().forward(x, *args, **kwargs)
        if any(isinstance(f, ExactLoraPatch) for f in self.weight_function):
            self.weight_function = drop_superseded(self.weight_function)
        lowvram_fn = getattr(self, "weight_lowvram_function", None)
        own_lowvram = lowvram_fn is not None and self.wan_nvfp4_lora_mode == EXACT
        if is_native(self.weight) and not (own_lowvram or self.weight_function or self.bias_function):
            quantized_mm = self.plan.nvfp4.quantized_mm and not self.wan_nvfp4_full_precision_mm
            y, path = native_linear(self, x, quantized_mm)  # ComfyUI honours the layer's flag alike
            self._record(NVFP4, path)
            return y
        if own_lowvram:
            # Dynamic VRAM would requantize the patched weight into its resident copy: apply it here instead.
            self.weight_lowvram_function = None
        try:
            patched = len(self.weight_function) > 0 or own_lowvram
            weight, bias, stream = cast_bias_weight(
                self,
                None,
                dtype=x.dtype if patched else self.weight.dtype,
                device=x.device,
                bias_dtype=x.dtype,
                offloadable=True,
                compute_dtype=x.dtype,
            )
        finally:
            if own_lowvram:
                self.weight_lowvram_function = lowvram_fn
        w = weight
        if own_lowvram:
            w = with_orig_dtype(w, x.dtype).dequantize() if is_quantized(w) else w.to(x.dtype)
            w = lowvram_fn(w)
            # ComfyUI clears patches prefetched into its transient cast buffer after use; we hid the function
            # from it during the cast, so clear here (a later resident step must not read a reused buffer).
            lowvram_fn.clear_prepared()  # a ComfyUI LowVramPatch (comfy_compat requires `clear_prepared`)
        if is_ours(w):
            y = self._kernel_linear(x, w, bias)
        else:
            self._record(
                NVFP4 if is_native(self.weight) else weight_format(kernel_weight(self.weight)), LORA_PATH
            )
            y = F.linear(x, w.to(x.dtype), bias)
        uncast_bias_weight(self, weight, bias, stream)
        return y

    def _kernel_linear(self, x, qt, bias):
        plan = self.plan
        kw = kernel_weight(qt)
        path = kernel_ops.resolve_path(x, kw, options=plan.kernel_options)
        self._record(weight_format(kw), path)
        return kernel_ops.linear(x, kw, bias, path, options=plan.kernel_options)

    def _record(self, fmt: str, path: str) -> None:
        if self.layer_name:
            self.plan.path_log.record(self.layer_name, fmt, path)


def make_operations(plan: LoadPlan):
    """A fresh ComfyUI operations class for one load (subclass of `comfy.ops.manual_cast`)."""

    class Linear(WanQuantLinear):
        def __init__(self, *args, **kwargs):
            super().__init__(plan, *args, **kwargs)

    for flag, value in LINEAR_CLASS_FLAGS.items():  # what newer ComfyUI versions read (comfy_compat)
        setattr(Linear, flag, value)

    class WanNVFP4Operations(comfy.ops.manual_cast):
        pass

    WanNVFP4Operations.Linear = Linear
    return WanNVFP4Operations
