"""ComfyUI's own NVFP4 ops inside this pack's Linear: the facts that decide them, the load-time conversion
into ComfyUI's native layout, and the forward that ComfyUI's `MixedPrecisionOps.Linear` runs for such a layer.

The decision itself is data in `kernels.native_fp4` (simulated in tests); this module only probes ComfyUI for
its facts. A converted layer holds ComfyUI's own `QuantizedTensor` (`TensorCoreNVFP4Layout`, from
`QUANT_ALGOS["nvfp4"]`), so F.linear on it dispatches to comfy-kitchen's `scaled_mm_nvfp4` (cuBLASLt FP4 on
Blackwell with the CUDA backend) exactly as for a file ComfyUI loads itself; offloading moves it like
ComfyUI's own weights, LoRA sees its dequantized weight and a merge requantizes it through ComfyUI's layout.
"""

import comfy.model_management
import comfy.quant_ops  # importing it applies ComfyUI's gating of comfy-kitchen's backends (CUDA >= 13)
import torch
import torch.nn.functional as F
from comfy.ops import cast_bias_weight, uncast_bias_weight
from comfy.quant_ops import QUANT_ALGOS, QuantizedTensor, get_layout_class

from ..kernels import NVFP4Weight, native_nvfp4
from ..kernels.capabilities import device_caps
from ..kernels.native_fp4 import NATIVE_DEQUANT, NATIVE_GEMM, FP4GemmFacts, torch_cuda_version
from ..kernels.nvfp4 import is_native_nvfp4

NVFP4_FORMAT = "nvfp4"
NATIVE_LAYOUT = QUANT_ALGOS[NVFP4_FORMAT]["comfy_tensor_layout"]  # "TensorCoreNVFP4Layout"
CK_BACKEND = "cuda"  # comfy-kitchen's backend with the cuBLASLt FP4 GEMM


def backend_state() -> tuple[bool, str]:
    """(enabled, why not): comfy-kitchen's `cuda` backend as ComfyUI left it (registered and not disabled)."""
    try:
        import comfy_kitchen as ck
    except ImportError:
        return False, "comfy-kitchen is not installed"
    info = ck.list_backends().get(CK_BACKEND)
    if info is None:
        return False, "comfy-kitchen has no cuda backend"
    if info.get("disabled"):
        return False, "disabled in ComfyUI (it needs torch built for CUDA >= 13)"
    if not info.get("available"):
        return False, info.get("unavailable_reason") or "not available"
    return True, ""


def probe(device: torch.device | str | None = None) -> FP4GemmFacts:
    """The facts of ComfyUI's load device (or `device`) that decide the native FP4 GEMM."""
    device = torch.device(comfy.model_management.get_torch_device() if device is None else device)
    caps = device_caps(device)
    enabled, note = backend_state()
    comfy_nvfp4 = caps.kind == "cuda" and bool(comfy.model_management.supports_nvfp4_compute(device))
    return FP4GemmFacts(caps.kind, caps.capability, torch_cuda_version(), enabled, comfy_nvfp4, note)


def native_weight(weight: NVFP4Weight, orig_dtype: torch.dtype) -> QuantizedTensor:
    """`weight` (any convention) as ComfyUI's own NVFP4 QuantizedTensor: converted once, on its device, with
    `kernels.native_nvfp4` (the rewrite `repair` writes; lossless), only this layer's tensors at a time. A
    layer already stored natively keeps its tensors as read (no copy)."""
    native = weight if is_native_nvfp4(weight) else native_nvfp4(weight)
    params = get_layout_class(NATIVE_LAYOUT).Params(
        scale=native.global_scale,
        orig_dtype=orig_dtype,
        orig_shape=native.shape,
        block_scale=native.block_scale.view(torch.float8_e4m3fn),
    )
    return QuantizedTensor(native.packed, NATIVE_LAYOUT, params)


def is_native(weight) -> bool:
    """A weight in ComfyUI's own NVFP4 layout (a converted layer)."""
    return isinstance(weight, QuantizedTensor) and weight._layout_cls == NATIVE_LAYOUT


def native_linear(module, x: torch.Tensor, quantized_mm: bool) -> tuple[torch.Tensor, str]:
    """(output, path) of `module` (weight in NATIVE_LAYOUT, no LoRA patches) as ComfyUI's
    `MixedPrecisionOps.Linear.forward` computes it: with `quantized_mm` (nvfp4 not disabled for the device),
    x is quantized per 16-block (with the layer's static `input_scale` if any) and F.linear runs on the two
    QuantizedTensors (comfy-kitchen's scaled_mm_nvfp4); otherwise the weight is dequantized, then F.linear."""
    quantize = quantized_mm and x.ndim >= 2 and not getattr(module, "comfy_force_cast_weights", False)
    if not quantize:
        weight, bias, stream = cast_bias_weight(module, x, offloadable=True, compute_dtype=x.dtype)
        y = F.linear(x, weight, bias)
        uncast_bias_weight(module, weight, bias, stream)
        return y, NATIVE_DEQUANT
    shape = x.shape
    scale = getattr(module, "input_scale", None)
    if scale is not None:
        scale = comfy.model_management.cast_to_device(scale, x.device, None)
    qx = QuantizedTensor.from_float(x.reshape(-1, shape[-1]), NATIVE_LAYOUT, scale=scale)
    weight, bias, stream = cast_bias_weight(
        module, qx, offloadable=True, compute_dtype=x.dtype, want_requant=True
    )
    y = F.linear(qx, weight, bias)
    uncast_bias_weight(module, weight, bias, stream)
    return y.reshape(*shape[:-1], y.shape[-1]), NATIVE_GEMM
