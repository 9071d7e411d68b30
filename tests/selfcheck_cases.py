"""Scenarios of the first-use kernel self-check, run in the Triton-interpreter worker (kernel_cases).

The worker's CPU is made to look like an NVIDIA GPU to the dispatch (`ops.device_caps` answers a simulated
sm_90 with compiled Triton), so `auto` picks the Triton paths and the kernels run under the interpreter on
CPU tensors. Faults are injected into the real kernel modules: a kernel that reads the wrong nibble order /
fp8 format (wrong values), kernels that raise a Triton CompilationError, kernels that raise a CUDA error at
launch. A small model of several quantized layers then runs through `kernels.ops.linear`.
"""

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F

from wan_nvfp4.kernels import gpu_info, ops, selfcheck
from wan_nvfp4.kernels.capabilities import DeviceCaps
from wan_nvfp4.kernels.options import KernelOptions, PathLog
from wan_nvfp4.tests import kernel_cases as C

SIMULATED = DeviceCaps("cuda", (9, 0), "Simulated H100 (CPU under the Triton interpreter)", True, False)
KERNELS = {  # module -> its Triton kernels (autotuned), replaced by the launch-fault stand-ins
    "triton_dequant": ("_nvfp4_dequant_kernel", "_fp8_dequant_kernel"),
    "triton_fused": ("_nvfp4_fused_kernel", "_fp8_fused_kernel"),
}
SMALL_M, LARGE_M = 3, 100  # fused regime for both formats, and above both thresholds (dequant + matmul)


class TinyModel:
    """Four quantized layers in four variants (both NVFP4 conventions pairs, FP8 per row and per tensor)."""

    def __init__(self, options: KernelOptions):
        self.options = options
        self.layers = [
            (C.make_nvfp4(96, 64, "high_first", "swizzled", seed=1), torch.randn(96, generator=C.seeded(1))),
            (C.make_fp8(80, 96, "row", torch.float8_e4m3fn, seed=2), None),
            (C.make_nvfp4(64, 80, "low_first", "linear", seed=3), torch.randn(64, generator=C.seeded(3))),
            (C.make_fp8(48, 64, "tensor", torch.float8_e4m3fn, seed=4), None),
        ]

    def paths(self, x: torch.Tensor) -> list[str]:
        """The path `auto` takes in each layer for an input like `x` (shapes follow the layers)."""
        chosen = []
        for w, _ in self.layers:
            probe = x.new_empty((*x.shape[:-1], w.shape[1]))
            chosen.append(ops.resolve_path(probe, w, options=self.options))
        return chosen

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(self.layers):
            x = ops.linear(x, w, b, options=self.options)
            if i < len(self.layers) - 1:
                x = F.gelu(x, approximate="tanh")
        return x


# ---- faults ----------------------------------------------------------------------------------------------


def _wrong_values(monkey) -> None:
    """The kernels decode the other nibble order and the other fp8 format: plausible numbers, all wrong."""
    from wan_nvfp4.kernels import triton_dequant, triton_fused

    for module in (triton_dequant, triton_fused):
        nvfp4_args, fp8_args = module.nvfp4_args, module.fp8_args
        monkey(
            module,
            "nvfp4_args",
            lambda w, d, f=nvfp4_args: replace(f(w, d), high_first=not f(w, d).high_first),
        )
        monkey(module, "fp8_args", lambda w, d, f=fp8_args: replace(f(w, d), e5m2=not f(w, d).e5m2))


class _Failing:
    """Stands in for an autotuned Triton kernel: `kernel[grid](...)` and `kernel.fn[grid](...)` raise."""

    def __init__(self, make_error):
        self.make_error = make_error
        self.fn = self

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise self.make_error()

        return launch


def _compile_error():
    from triton.compiler.errors import CompilationError

    return CompilationError(
        "def _kernel(...):", None, "injected: tcc.exe: cuda_utils.c: error: include file 'Python.h' not found"
    )


def _launch_error():
    return RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered (injected at launch)")


def _failing_kernels(make_error, modules=tuple(KERNELS)):
    def inject(monkey) -> None:
        import importlib

        for name in modules:
            module = importlib.import_module(f"wan_nvfp4.kernels.{name}")
            for kernel in KERNELS[name]:
                monkey(module, kernel, _Failing(make_error))

    return inject


FAULTS = {
    None: lambda monkey: None,
    "wrong_values": _wrong_values,
    "compile_error": _failing_kernels(_compile_error),
    "launch_error": _failing_kernels(_launch_error),
    "fused_launch_error": _failing_kernels(_launch_error, ("triton_fused",)),
}


# ---- one scenario ----------------------------------------------------------------------------------------


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def run_scenario(fault: str | None, compiled: bool = False, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Run the tiny model with `auto` on the simulated GPU with `fault` injected (small and large M, twice),
    and with the torch path forced; report outputs, paths, log records and self-check results."""
    selfcheck.reset()
    saved = []

    def monkey(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    handler = _Warnings()
    logger = logging.getLogger("wan_nvfp4.kernels")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        simulated = lambda device: SIMULATED if torch.device(device).type == "cpu" else None  # noqa: E731
        monkey(ops, "device_caps", simulated)
        monkey(gpu_info, "device_caps", simulated)
        FAULTS[fault](monkey)
        model = TinyModel(KernelOptions(compute_dtype=dtype))
        inputs = {m: C.make_x(m, 64, dtype, seed=m) for m in (SMALL_M, LARGE_M)}
        forward = model
        if compiled:
            torch._dynamo.reset()
            forward = torch.compile(model.__call__, backend="eager", fullgraph=True)
        outputs = {m: forward(x) for m, x in inputs.items()}
        runs = len(selfcheck.results())
        again = {m: forward(x) for m, x in inputs.items()}  # nothing is checked twice
        paths = {m: model.paths(x) for m, x in inputs.items()}
        log = PathLog("tiny", expected_layers=len(model.layers), logger=logger)
        for m in inputs:
            for i, path in enumerate(paths[m]):
                log.record(f"layer{i}", "q", path)
        log.flush()
        torch_model = TinyModel(KernelOptions(path="torch", compute_dtype=dtype))
        return {
            "outputs": outputs,
            "again": again,
            "torch": {m: torch_model(x) for m, x in inputs.items()},
            "paths": paths,
            "checks_after_first_calls": runs,
            "results": [r.to_json() for r in selfcheck.results()],
            "warnings": [r.getMessage() for r in handler.records if r.levelno == logging.WARNING],
            "path_lines": log.lines,
        }
    finally:
        logger.removeHandler(handler)
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        selfcheck.reset()


def check_all_scenario(fault: str | None) -> list[dict]:
    """`selfcheck.check_all` (what `wan-nvfp4 gpu` shows) on the simulated GPU with `fault` injected."""
    selfcheck.reset()
    saved = []

    def monkey(obj, name, value):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    try:
        monkey(gpu_info, "device_caps", lambda device: SIMULATED)
        FAULTS[fault](monkey)
        return selfcheck.check_all("cpu", torch.bfloat16, caps=SIMULATED)
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
        selfcheck.reset()
