"""Which path runs a quantized linear: declared constraints per path, checked before the call (no try/except).

Each path declares what it needs (weight formats, entry points, device kind, compute capability, Triton,
activation dtypes, shape multiples). `auto` walks `AUTO_ORDER` and takes the first path that can run and
whose regime fits (opt-in paths only when enabled, the fused kernel only at small M, Triton only compiled
on a GPU, never the interpreter). A forced path that
cannot run raises `PathUnavailableError` saying which constraint failed.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .capabilities import DeviceCaps, has_scaled_mm
from .weights import FP8Weight, NVFP4Weight

# Path names (the strings users, nodes and the bench pass around).
AUTO = "auto"
REFERENCE = "reference"  # fp32 oracle: kernels.linear_reference / kernels.dequantize
TORCH = "torch"  # dequantize in torch to the compute dtype + F.linear (CPU / MPS / ROCm fallback)
TRITON_DEQUANT = "triton-dequant"  # Triton dequant into a bf16/fp16 scratch + F.linear (cuBLAS)
TRITON_FUSED = "triton-fused"  # fused Triton dequant-matmul (small M)
FP8_SCALED_MM = "fp8-scaled-mm"  # opt-in: FP8 activations (per row) x FP8 weight, torch._scaled_mm
PATHS = (REFERENCE, TORCH, TRITON_DEQUANT, TRITON_FUSED, FP8_SCALED_MM)

# Weight formats as the kernels see them.
NVFP4 = "nvfp4"
FP8 = "fp8"
FLOAT = "float"
WEIGHT_FORMATS = {NVFP4Weight: NVFP4, FP8Weight: FP8}

# Entry points.
LINEAR = "linear"
DEQUANTIZE = "dequantize"

# Largest M (rows of x) for which `auto` prefers the fused kernel over dequant + cuBLAS.
# PROVISIONAL, not measured: taken from the H200 roofline (FORMATS.md §11), where a W4A16 GEMM stops being
# weight-read-bound at M* ~ 184 / (2 / bytes per weight): ~52 for NVFP4 (0.5625 B), ~92 for FP8 (1 B).
# Measure on the target GPU with `python -m wan_nvfp4.bench.linear --crossover` (it prints the largest M at
# which the fused kernel still beats dequant + cuBLAS per shape) and record the result here.
FUSED_MAX_M = {NVFP4: 52, FP8: 92}

HALF_DTYPES = (torch.bfloat16, torch.float16)


def weight_format(weight) -> str:
    """`nvfp4`, `fp8` or `float` for an NVFP4Weight, FP8Weight or plain tensor."""
    fmt = WEIGHT_FORMATS.get(type(weight))
    if fmt is not None:
        return fmt
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return FLOAT
    dtype = getattr(weight, "dtype", None)
    raise TypeError(f"unsupported weight: {type(weight).__name__} of dtype {dtype}")


@dataclass(frozen=True)
class Request:
    """One call, described by what the constraints look at."""

    entry: str  # LINEAR or DEQUANTIZE
    format: str  # NVFP4, FP8 or FLOAT
    caps: DeviceCaps
    dtype: torch.dtype  # activation dtype (linear) or output dtype (dequantize)
    m: int | None  # rows of x (None for dequantize)
    n: int
    k: int
    weight_dtype: torch.dtype | None = None  # fp8 storage dtype


@dataclass(frozen=True)
class PathConstraint:
    """What a path needs. `why_not(request)` returns the first unmet constraint, or None."""

    path: str
    formats: tuple[str, ...]
    entries: tuple[str, ...] = (LINEAR, DEQUANTIZE)
    needs_triton_device: bool = False  # NVIDIA GPU with Triton, or CPU under TRITON_INTERPRET=1
    device_kinds: tuple[str, ...] | None = None  # None: any device
    min_capability: tuple[int, int] | None = None  # checked on NVIDIA GPUs only
    max_capability: tuple[int, int] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    weight_dtypes: tuple[torch.dtype, ...] | None = None
    nk_multiple: int = 1
    needs_scaled_mm: bool = False
    opt_in: bool = False  # `auto` takes it only when KernelOptions.fp8_fast is set
    small_m_regime: bool = False  # `auto` takes it only when M <= the fused threshold

    def why_not(self, req: Request) -> str | None:
        caps = req.caps
        cc = caps.capability  # None off NVIDIA: capability constraints do not apply
        checks = (
            (req.format in self.formats, f"weight format {req.format} not in {self.formats}"),
            (req.entry in self.entries, f"entry point {req.entry} not offered (only {self.entries})"),
            (not self.needs_triton_device or caps.triton, "Triton is not installed"),
            (
                not self.needs_triton_device or caps.triton_runs_here,
                f"Triton kernels need an NVIDIA GPU (or TRITON_INTERPRET=1 on CPU), found {caps.kind}",
            ),
            (
                self.device_kinds is None or caps.kind in self.device_kinds,
                f"device {caps.kind} not in {self.device_kinds}",
            ),
            (
                self.min_capability is None or cc is None or cc >= self.min_capability,
                f"compute capability {caps.capability} below {self.min_capability}",
            ),
            (
                self.max_capability is None or cc is None or cc <= self.max_capability,
                f"compute capability {caps.capability} above {self.max_capability} (not supported there)",
            ),
            (self.dtypes is None or req.dtype in self.dtypes, f"dtype {req.dtype} not in {self.dtypes}"),
            (
                self.weight_dtypes is None or req.weight_dtype in self.weight_dtypes,
                f"weight dtype {req.weight_dtype} not in {self.weight_dtypes}",
            ),
            (
                req.n % self.nk_multiple == 0 and req.k % self.nk_multiple == 0,
                f"N={req.n} and K={req.k} must be multiples of {self.nk_multiple}",
            ),
            (not self.needs_scaled_mm or has_scaled_mm(), "torch._scaled_mm is missing from this torch"),
        )
        for ok, reason in checks:
            if not ok:
                return reason
        return None


ALL_FORMATS = (NVFP4, FP8, FLOAT)
QUANTIZED = (NVFP4, FP8)

CONSTRAINTS = {
    REFERENCE: PathConstraint(REFERENCE, ALL_FORMATS),
    TORCH: PathConstraint(TORCH, ALL_FORMATS),
    TRITON_DEQUANT: PathConstraint(
        TRITON_DEQUANT,
        QUANTIZED,
        needs_triton_device=True,
        min_capability=(7, 5),
        dtypes=(*HALF_DTYPES, torch.float32),
    ),
    TRITON_FUSED: PathConstraint(
        TRITON_FUSED,
        QUANTIZED,
        entries=(LINEAR,),
        needs_triton_device=True,
        min_capability=(8, 0),  # bf16 tensor cores
        dtypes=HALF_DTYPES,
        small_m_regime=True,
    ),
    FP8_SCALED_MM: PathConstraint(
        FP8_SCALED_MM,
        (FP8,),
        entries=(LINEAR,),
        device_kinds=("cuda",),
        # rowwise-scaled _scaled_mm: sm_90 (CUTLASS), sm_89 since pytorch#144348; cuBLAS has no rowwise
        # scaling on sm_100/sm_120 (pytorch#160693, #192707), so Blackwell is not declared.
        min_capability=(8, 9),
        max_capability=(9, 9),
        dtypes=(torch.bfloat16,),  # rowwise scaling outputs bf16
        weight_dtypes=(torch.float8_e4m3fn,),
        nk_multiple=16,
        needs_scaled_mm=True,
        opt_in=True,
    ),
}

# `auto` preference, best first.
AUTO_ORDER = (FP8_SCALED_MM, TRITON_FUSED, TRITON_DEQUANT, TORCH)
# Paths whose kernels `auto` uses on a device only after a first-use self-check passed there (selfcheck.py).
SELF_CHECKED = (TRITON_FUSED, TRITON_DEQUANT)


class PathUnavailableError(RuntimeError):
    """A forced kernel path cannot run for this call; the message says which constraint failed."""


def check_path(path: str, req: Request) -> str:
    """Return `path` if it can run `req`, else raise PathUnavailableError naming the unmet constraint."""
    if path not in CONSTRAINTS:
        raise ValueError(f"unknown kernel path {path!r}; expected one of {(AUTO, *PATHS)}")
    reason = CONSTRAINTS[path].why_not(req)
    if reason is not None:
        raise PathUnavailableError(f"kernel path {path!r} cannot run this {req.format} {req.entry}: {reason}")
    return path


def choose_path(
    req: Request,
    fp8_fast: bool = False,
    fused_max_m: int | None = None,
    gate: Callable[[str], bool] | None = None,
) -> str:
    """The `auto` choice: the first path of AUTO_ORDER that can run and whose regime fits.

    gate: the self-check verdict (`selfcheck.gate`), asked only for a SELF_CHECKED path that can run `req`;
    a path it refuses is skipped like one that cannot run.
    """
    threshold = FUSED_MAX_M.get(req.format, 0) if fused_max_m is None else fused_max_m
    for path in AUTO_ORDER:
        rule = CONSTRAINTS[path]
        if rule.opt_in and not fp8_fast:
            continue
        if rule.small_m_regime and (req.m is None or req.m > threshold):
            continue
        if rule.needs_triton_device and not req.caps.triton_native:
            continue  # the interpreter runs Triton only when a path is forced (debugging, tests)
        if rule.why_not(req) is None and (gate is None or path not in SELF_CHECKED or gate(path)):
            return path
    raise PathUnavailableError(f"no kernel path can run this {req.format} {req.entry}")  # TORCH always can
