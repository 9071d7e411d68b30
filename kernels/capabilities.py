"""What the running machine can do: device kind, compute capability, Triton, the Triton interpreter.

Probing only; nothing here launches a kernel. Results are cached per device, so the dispatch can ask on every
call. Triton is never imported at module import time (it stays an optional dependency).
"""

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass

import torch

# Values of TRITON_INTERPRET that Triton treats as "on" (its knobs use the same spelling).
_TRUE_STRINGS = ("1", "true", "on", "yes")


def interpreter_active() -> bool:
    """True when `TRITON_INTERPRET` is on: Triton kernels decorated from now on run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE_STRINGS


_TRITON_STATE: dict[str, object] = {}


def triton_version() -> str | None:
    """Installed Triton's version, or None when it is not installed. Found without importing Triton (a CPU
    run never pays for it); checked once per process."""
    if "version" not in _TRITON_STATE:
        version = None
        if importlib.util.find_spec("triton") is not None:
            try:
                version = importlib.metadata.version("triton")
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
        _TRITON_STATE["version"] = version
    return _TRITON_STATE["version"]


def triton_available() -> bool:
    return triton_version() is not None


@dataclass(frozen=True)
class DeviceCaps:
    """The facts the path constraints are declared against.

    kind:        `cuda` for NVIDIA, `rocm` for AMD (torch reports both as device type `cuda`), else the
                 torch device type (`cpu`, `mps`, `xpu`, ...)
    capability:  (major, minor) compute capability on NVIDIA, None elsewhere
    triton:      Triton importable; interpreter: `TRITON_INTERPRET` is on (Triton kernels run on CPU tensors)
    """

    kind: str
    capability: tuple[int, int] | None
    name: str
    triton: bool
    interpreter: bool

    @property
    def triton_native(self) -> bool:
        """Compiled Triton kernels run here (an NVIDIA GPU with Triton, interpreter off)."""
        return self.triton and self.kind == "cuda" and not self.interpreter

    @property
    def triton_runs_here(self) -> bool:
        """Our Triton kernels can run on tensors of this device (NVIDIA GPU, or CPU under the interpreter)."""
        if not self.triton:
            return False
        return self.kind == "cuda" or (self.kind == "cpu" and self.interpreter)


_DEVICE_CACHE: dict[tuple[str, int | None], DeviceCaps] = {}


def _constant_under_compile(fn):
    """`torch.compiler.assume_constant_result` without its import of torch._dynamo (1.3 s, and it loads
    Triton) while dynamo is not loaded yet: that decorator only sets this marker (test_kernels_dispatch
    checks the behaviour against the installed torch)."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@_constant_under_compile
def _gpu_facts(index: int | None) -> tuple[str, tuple[int, int] | None, str]:
    """(kind, capability, name) of a torch `cuda` device; torch.compile takes it as a constant."""
    index = torch.cuda.current_device() if index is None else index
    name = torch.cuda.get_device_name(index)
    if torch.version.hip is not None:
        return "rocm", None, name
    major, minor = torch.cuda.get_device_capability(index)
    return "cuda", (major, minor), name


def _probe(device: torch.device) -> DeviceCaps:
    interp = interpreter_active()
    if device.type != "cuda":
        return DeviceCaps(device.type, None, device.type, triton_available(), interp)
    kind, capability, name = _gpu_facts(device.index)
    return DeviceCaps(kind, capability, name, triton_available(), interp)


def device_caps(device: torch.device | str) -> DeviceCaps:
    """Capabilities of `device` (cached; the interpreter flag is re-read so tests can toggle it)."""
    device = torch.device(device)
    key = (device.type, device.index)
    caps = _DEVICE_CACHE.get(key)
    if caps is None:
        caps = _probe(device)
        _DEVICE_CACHE[key] = caps
    interp = interpreter_active()
    if caps.interpreter != interp:
        caps = DeviceCaps(caps.kind, caps.capability, caps.name, caps.triton, interp)
        _DEVICE_CACHE[key] = caps
    return caps


def has_scaled_mm() -> bool:
    """`torch._scaled_mm` exists in this torch build (FP8 tensor-core matmul)."""
    return hasattr(torch, "_scaled_mm")
