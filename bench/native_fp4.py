"""The benchmark's native FP4 column: what ComfyUI runs for NVFP4 layers on Blackwell (W4A4).

Per call the activations are quantized to NVFP4 (comfy-kitchen, dynamic per-tensor scale) and `F.linear` on
two `QuantizedTensor`s runs comfy-kitchen's `scaled_mm_nvfp4` (cuBLASLt block-scaled FP4 GEMM); the weight is
converted once beforehand with `kernels.native_nvfp4`, as the loader does. Whether it can run is the loader's
declared constraint (`kernels.native_fp4.NATIVE_FP4_GEMM`), with comfy-kitchen's backend gated the way
ComfyUI gates it (no ComfyUI import here).
"""

import torch
import torch.nn.functional as F

from ..kernels import NVFP4Weight, native_nvfp4
from ..kernels.capabilities import device_caps
from ..kernels.native_fp4 import NATIVE_FP4_GEMM, FP4GemmFacts, torch_cuda_version

COLUMN = "native-fp4"  # the column's key among the bench's path names
LABEL = "native FP4 W4A4 (ComfyUI)"
LAYOUT = "TensorCoreNVFP4Layout"
NO_MEASUREMENT = "No Blackwell measurement of this pack exists yet"


def facts(device: torch.device) -> FP4GemmFacts:
    """The constraint's facts for `device`, with comfy-kitchen's `cuda` backend as ComfyUI would leave it."""
    caps = device_caps(device)
    cuda = torch_cuda_version()
    try:
        import comfy_kitchen as ck

        info = ck.list_backends().get("cuda") or {}
        note = None if info.get("available") else info.get("unavailable_reason") or "not available"
    except ImportError:
        note = "comfy-kitchen is not installed"
    if note is None and (cuda is None or cuda < NATIVE_FP4_GEMM.min_torch_cuda):
        note = "ComfyUI disables it for torch built for CUDA < 13"
    comfy_nvfp4 = caps.kind == "cuda" and caps.capability is not None and caps.capability[0] >= 10
    return FP4GemmFacts(caps.kind, caps.capability, cuda, note is None, comfy_nvfp4, note or "")


def unavailable(device: torch.device) -> str | None:
    """None when the native FP4 GEMM runs on `device`, else why not."""
    return NATIVE_FP4_GEMM.why_not(facts(device))


def status_line(device: torch.device) -> str:
    why = unavailable(device)
    if why is None:
        return f"Blackwell native FP4 GEMM (W4A4): measured below ({facts(device).describe()})"
    return f"Blackwell native FP4 GEMM (W4A4): not available on this machine ({why}). {NO_MEASUREMENT}."


def prepare(weight: NVFP4Weight, dtype: torch.dtype = torch.bfloat16):
    """The weight as comfy-kitchen's NVFP4 QuantizedTensor (ComfyUI-native layout), converted once."""
    from comfy_kitchen.tensor import QuantizedTensor, TensorCoreNVFP4Layout

    native = native_nvfp4(weight)
    params = TensorCoreNVFP4Layout.Params(
        scale=native.global_scale,
        orig_dtype=dtype,
        orig_shape=native.shape,
        block_scale=native.block_scale.view(torch.float8_e4m3fn),
    )
    return QuantizedTensor(native.packed, LAYOUT, params)


def linear(x: torch.Tensor, qweight, bias: torch.Tensor | None) -> torch.Tensor:
    """ComfyUI's W4A4 forward: quantize x per call, then the FP4 GEMM (bias in its epilogue)."""
    from comfy_kitchen.tensor import QuantizedTensor

    return F.linear(QuantizedTensor.from_float(x, LAYOUT), qweight, bias)
