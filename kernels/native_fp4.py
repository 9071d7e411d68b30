"""Who runs a model's NVFP4 layers: ComfyUI's native FP4 GEMM (W4A4) or this pack's kernels (W4A16).

A load-time decision, made once per model from declared constraints (data, like the per-call paths in
`dispatch`). The facts are plain values so tests can simulate any machine: compute capability, the CUDA
version torch was built for, and whether comfy-kitchen's CUDA backend is enabled in ComfyUI (the probing
of ComfyUI lives in `nodes.native_fp4`; this module never imports ComfyUI).

ComfyUI runs an `nvfp4` layer on the FP4 tensor cores when all of these hold (0.29.0 and 0.33.0 trees):
`comfy.ops.pick_operations` leaves `nvfp4` enabled (`supports_nvfp4_compute`: NVIDIA, major >= 10), and
comfy-kitchen's `scaled_mm_nvfp4` resolves to its `cuda` backend (cuBLASLt; registered, declared for
capability >= 10.0, and not disabled: `comfy/quant_ops.py` disables it unless torch is built for CUDA >= 13).
Otherwise ComfyUI dequantizes the whole weight per call, and our Triton W4A16 path is the faster one.
"""

from dataclasses import dataclass

import torch

from .dispatch import AUTO, NVFP4, PATHS

# Load-time choices for NVFP4 layers (the Advanced loader's kernel_path values besides the per-call paths).
NATIVE_FP4 = "native-fp4"  # ComfyUI's quantized ops on converted native weights (W4A4 where usable)
W4A16 = "w4a16"  # this pack's kernels only (`auto` among them): exact weights, activations never quantized

# What the path log records per NVFP4 layer on the native path.
NATIVE_GEMM = "comfyui-fp4-gemm"  # activations quantized per 16-block, comfy-kitchen scaled_mm_nvfp4
NATIVE_DEQUANT = "comfyui-dequantize"  # ComfyUI's fallback: whole weight dequantized, then F.linear

# Runners.
COMFYUI = "comfyui"
PACK = "pack"


def torch_cuda_version(text: str | None = None) -> tuple[int, ...] | None:
    """`torch.version.cuda` as a tuple ((13, 0)); None for a CPU / ROCm build."""
    text = torch.version.cuda if text is None else text
    if not text:
        return None
    return tuple(int(part) for part in str(text).split(".") if part.isdigit())


@dataclass(frozen=True)
class FP4GemmFacts:
    """What the constraints look at (probed by `nodes.native_fp4.probe`, or simulated in tests).

    kind / capability: as `capabilities.DeviceCaps` (capability None off NVIDIA)
    torch_cuda:        the CUDA version torch was built for, None without CUDA
    backend_enabled:   comfy-kitchen's `cuda` backend is registered and not disabled (by ComfyUI)
    comfy_nvfp4:       ComfyUI runs `nvfp4` layers quantized on this device (`supports_nvfp4_compute`)
    backend_note:      why the backend is not enabled, when it is not (for the log)
    """

    kind: str
    capability: tuple[int, int] | None
    torch_cuda: tuple[int, ...] | None
    backend_enabled: bool
    comfy_nvfp4: bool
    backend_note: str = ""

    def describe(self) -> str:
        cc = "sm_{}{}".format(*self.capability) if self.capability else self.kind
        cuda = ".".join(map(str, self.torch_cuda)) if self.torch_cuda else "none"
        backend = "enabled" if self.backend_enabled else f"disabled ({self.backend_note or 'not available'})"
        return f"{cc}, torch CUDA {cuda}, comfy-kitchen cuda backend {backend}"


@dataclass(frozen=True)
class FP4GemmConstraint:
    """What the native FP4 GEMM needs. `why_not(facts)` returns the first unmet constraint, or None."""

    device_kinds: tuple[str, ...] = ("cuda",)
    min_capability: tuple[int, int] = (10, 0)
    min_torch_cuda: tuple[int, ...] = (13,)
    needs_backend: bool = True
    needs_comfy_nvfp4: bool = True

    def why_not(self, facts: FP4GemmFacts) -> str | None:
        checks = (
            (facts.kind in self.device_kinds, f"device {facts.kind} not in {self.device_kinds}"),
            (
                facts.capability is not None and facts.capability >= self.min_capability,
                f"compute capability {facts.capability} below {self.min_capability} (no FP4 tensor cores)",
            ),
            (
                facts.torch_cuda is not None and facts.torch_cuda >= self.min_torch_cuda,
                f"torch built for CUDA {facts.torch_cuda}, ComfyUI enables comfy-kitchen's CUDA backend only "
                f"from CUDA {self.min_torch_cuda}",
            ),
            (
                not self.needs_backend or facts.backend_enabled,
                f"comfy-kitchen cuda backend not enabled ({facts.backend_note or 'not available'})",
            ),
            (
                not self.needs_comfy_nvfp4 or facts.comfy_nvfp4,
                "ComfyUI runs nvfp4 emulated on this device (supports_nvfp4_compute is False)",
            ),
        )
        return next((reason for ok, reason in checks if not ok), None)


NATIVE_FP4_GEMM = FP4GemmConstraint()


@dataclass(frozen=True)
class NVFP4Decision:
    """How one model's NVFP4 layers run.

    runner:       COMFYUI (layers converted to native at load, ComfyUI's quantized ops) or PACK
    kernel_path:  the per-call path of the pack's kernels (`auto` or a forced one) for every other layer
    quantized_mm: on COMFYUI, whether the layers run quantized (W4A4) or in ComfyUI's dequantizing fallback
    reason:       one line for the log: which ran and why
    """

    runner: str
    kernel_path: str
    quantized_mm: bool
    reason: str

    @property
    def native(self) -> bool:
        return self.runner == COMFYUI


def _auto(facts: FP4GemmFacts) -> NVFP4Decision:
    why = NATIVE_FP4_GEMM.why_not(facts)
    if why is None:
        return NVFP4Decision(COMFYUI, AUTO, True, f"auto: ComfyUI's FP4 GEMM (W4A4): {facts.describe()}")
    return NVFP4Decision(
        PACK, AUTO, False, f"auto: this pack's W4A16 kernels (native FP4 GEMM unusable: {why})"
    )


def _forced_native(facts: FP4GemmFacts) -> NVFP4Decision:
    why = NATIVE_FP4_GEMM.why_not(facts)
    how = "FP4 GEMM (W4A4)" if facts.comfy_nvfp4 else "dequantizing fallback (nvfp4 emulated on this device)"
    note = "" if why is None else f"; FP4 GEMM unusable: {why}"
    return NVFP4Decision(COMFYUI, AUTO, facts.comfy_nvfp4, f"native-fp4 (forced): ComfyUI's {how}{note}")


# kernel_path choice -> decision (anything else is a forced per-call path of the pack's kernels)
_CHOICES = {
    AUTO: _auto,
    NATIVE_FP4: _forced_native,
    W4A16: lambda facts: NVFP4Decision(PACK, AUTO, False, "w4a16 (chosen): this pack's exact W4A16 kernels"),
}
CHOICES = tuple(_CHOICES)


def decide_nvfp4(kernel_path: str, facts: FP4GemmFacts) -> NVFP4Decision:
    """The runner for a model's NVFP4 layers, from the loader's kernel_path choice and the machine's facts."""
    rule = _CHOICES.get(kernel_path)
    if rule is not None:
        return rule(facts)
    if kernel_path not in PATHS:
        raise ValueError(f"kernel path must be one of {(*CHOICES, *PATHS)}, got {kernel_path!r}")
    return NVFP4Decision(PACK, kernel_path, False, f"{kernel_path} (forced): this pack's kernels")


def layer_runner(decision: NVFP4Decision, layer_format: str) -> str:
    """Who runs one layer: COMFYUI for every NVFP4 layer of a model decided native, whatever its convention
    (the loader converts it to the native layout), PACK for every other layer (FP8, float, or not native)."""
    return COMFYUI if decision.native and layer_format == NVFP4 else PACK
