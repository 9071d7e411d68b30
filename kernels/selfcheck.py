"""First-use self-check of the Triton paths, per device: a path that is wrong or fails here is never used.

Before `auto` first takes a self-checked path (`dispatch.SELF_CHECKED`: `triton-dequant`, `triton-fused`) for
a weight variant (NVFP4 nibble order + scale layout, FP8 granularity + fp8 dtype) in a compute dtype on a
device, `allows` runs that path's kernel once, pinned to one tile config (one compile, no autotuning), on a
small seeded weight of `CHECK_N x CHECK_K` (150 x 272: no multiple of any tile; K/16 = 17 scale columns, not
a multiple of the swizzle tile's 4) and compares it with the exact torch path:

- `triton-dequant`: every value within 1 ulp of the output dtype of the exact value, NaNs where the exact
  value has them (a GPU gives it bit for bit; the Triton interpreter truncates instead of rounding);
- `triton-fused` (`CHECK_M` = 5 rows, with bias): `|y - y_exact| <= 2^-p * (|x| @ |W|^T + |bias|)` per
  element, p the mantissa bits of the compute dtype (7 bf16, 10 fp16), `y_exact` in float64 on the CPU from
  the exactly dequantized weight: twice the worst rounding of a half-precision weight and output. A wrong
  nibble order, scale layout or scale is off by the size of `y` itself.

A mismatch, or any exception while compiling or launching, disables the path on that device for the rest of
the process (every variant and dtype), logs one WARNING naming the GPU, its capability, the driver, CUDA,
torch and Triton versions, the path and the error or the measured difference; `auto` then takes the next
path (`triton-dequant`, in the end `torch`). Passed checks are remembered per (device, path, variant, dtype):
nothing is checked twice, and nothing runs at import. Under torch.compile `allows` is a constant for dynamo:
dynamo calls it for real while tracing (eagerly, on real tensors, outside the graph) and the graph holds the
decision.
"""

import importlib
import logging
import threading
import time
from dataclasses import dataclass

import torch

from . import gpu_info, torch_paths
from .capabilities import _constant_under_compile, device_caps
from .dispatch import (
    CONSTRAINTS,
    DEQUANTIZE,
    FP8,
    LINEAR,
    NVFP4,
    SELF_CHECKED,
    TRITON_DEQUANT,
    TRITON_FUSED,
    Request,
)
from .fp8 import quantize_fp8
from .nvfp4 import quantize_nvfp4
from .packing import NIBBLE_ORDERS
from .swizzle import SCALE_LAYOUTS
from .weights import FP8Weight, NVFP4Weight

LOG = logging.getLogger("wan_nvfp4.kernels")

CHECK_N, CHECK_K, CHECK_M = 150, 272, 5
CHECK_SEED = 20261206
FP8_DTYPE_NAMES = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
_FP8_NAME = {dtype: name for name, dtype in FP8_DTYPE_NAMES.items()}
DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_DTYPE_NAME = {dtype: name for name, dtype in DTYPE_NAMES.items()}
_MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}

# Every variant `wan-nvfp4 gpu` checks: NVFP4 in both nibble orders x both scale layouts, FP8 per tensor and
# per row (e4m3fn, the format of released WAN FP8 files). Models check the variants they hold, on first use.
ALL_VARIANTS = tuple((NVFP4, o, s) for o in NIBBLE_ORDERS for s in SCALE_LAYOUTS) + tuple(
    (FP8, g, "e4m3fn") for g in ("tensor", "row")
)


@dataclass(frozen=True)
class CheckResult:
    """One check of one path for one weight variant in one dtype on one device."""

    device: str  # `cuda:0`
    path: str
    variant: tuple[str, ...]
    dtype: str
    passed: bool
    detail: str  # the measured difference, or the exception
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.path} {variant_label(self.variant)} {self.dtype}"

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "path": self.path,
            "variant": variant_label(self.variant),
            "dtype": self.dtype,
            "passed": self.passed,
            "detail": self.detail,
            "seconds": round(self.seconds, 4),
        }


def variant_of(weight) -> tuple[str, ...]:
    """What the kernels specialise on: `(nvfp4, nibble order, scale layout)`, `(fp8, granularity, dtype)`."""
    if isinstance(weight, NVFP4Weight):
        return (NVFP4, weight.nibble_order, weight.scale_layout)
    if isinstance(weight, FP8Weight):
        return (FP8, weight.granularity, _FP8_NAME[weight.data.dtype])
    raise TypeError(f"no self-check for {type(weight).__name__}")


def variant_label(variant: tuple[str, ...]) -> str:
    """`nvfp4 high_first/swizzled`, `fp8 per-row e4m3fn`."""
    if variant[0] == NVFP4:
        return f"nvfp4 {variant[1]}/{variant[2]}"
    return f"fp8 per-{variant[1]} {variant[2]}" if variant[1] != "none" else f"fp8 unscaled {variant[2]}"


# ---- the checks -------------------------------------------------------------------------------------------


def check_weight(variant: tuple[str, ...]):
    """The seeded `[CHECK_N, CHECK_K]` weight of `variant`, on the CPU."""
    g = torch.Generator().manual_seed(CHECK_SEED)
    w = torch.randn(CHECK_N, CHECK_K, generator=g) * torch.rand(CHECK_N, 1, generator=g).add(0.05)
    if variant[0] == NVFP4:
        return quantize_nvfp4(w, nibble_order=variant[1], scale_layout=variant[2])
    fp8_dtype = FP8_DTYPE_NAMES[variant[2]]
    if variant[1] == "none":
        return FP8Weight(w.to(fp8_dtype))
    return quantize_fp8(w, variant[1], fp8_dtype)


def _ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of `dtype` at each fp32 value (its smallest subnormal spacing near zero)."""
    finfo = torch.finfo(dtype)
    _, exponent = torch.frexp(values.abs())
    spacing = torch.ldexp(torch.ones_like(values), exponent - 1 - _MANTISSA_BITS[dtype])
    return spacing.clamp(min=finfo.smallest_normal * finfo.eps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # launch errors surface here, inside the check


def _triton(name: str):
    return importlib.import_module(f"{__package__}.{name}")


def _compare(out: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, what: str) -> tuple[bool, str]:
    """Within `bound` everywhere (NaN where `exact` is NaN): (passed, the measured difference)."""
    out = out.double()
    nan_exact = exact.isnan()
    if not torch.equal(out.isnan(), nan_exact):
        wrong = int((out.isnan() != nan_exact).sum())
        return False, f"{wrong} of {out.numel()} values NaN where the exact {what} is not (or the reverse)"
    ratio = ((out - exact).abs() / bound)[~nan_exact]
    worst = ratio.max().item() if ratio.numel() else 0.0
    over = int((ratio > 1).sum())
    if over == 0:
        return True, f"max error {worst:.3g} of the tolerance"
    return False, f"{over} of {out.numel()} values off the exact {what}: max error {worst:.3g}x the tolerance"


def _check_dequant(weight, dtype: torch.dtype, device: torch.device) -> tuple[bool, str]:
    module = _triton("triton_dequant")
    out = module.dequantize(weight.to(device), dtype, config=module.CHECK_CONFIG)
    _sync(device)
    exact = torch_paths.dequantize(weight, torch.float32).double()
    return _compare(out.cpu(), exact, _ulp(exact.float(), dtype).double(), "dequantization (1 ulp)")


def _check_fused(weight, dtype: torch.dtype, device: torch.device) -> tuple[bool, str]:
    module = _triton("triton_fused")
    g = torch.Generator().manual_seed(CHECK_SEED + 1)
    x = torch.randn(CHECK_M, CHECK_K, generator=g).to(dtype)
    bias = torch.randn(CHECK_N, generator=g).to(dtype)
    config = module.check_config(CHECK_M)
    out = module.linear(x.to(device), weight.to(device), bias.to(device), config=config)
    _sync(device)
    w64 = torch_paths.dequantize(weight, torch.float32).double()
    x64, b64 = x.double(), bias.double()
    exact = x64 @ w64.T + b64
    bound = 2.0 ** -_MANTISSA_BITS[dtype] * (x64.abs() @ w64.abs().T + b64.abs()) + torch.finfo(dtype).tiny
    return _compare(out.cpu(), exact, bound, f"linear (2^-{_MANTISSA_BITS[dtype]} of |x||W|+|b|)")


CHECKS = {TRITON_DEQUANT: _check_dequant, TRITON_FUSED: _check_fused}
assert set(CHECKS) == set(SELF_CHECKED)


# ---- state: per process ------------------------------------------------------------------------------------

_LOCK = threading.RLock()
_PASSED: dict[tuple, CheckResult] = {}  # (device, path, variant, dtype) -> its passing check
_DISABLED: dict[tuple[str, str], CheckResult] = {}  # (device, path) -> the check that failed
_RESULTS: list[CheckResult] = []  # every check run, in order
_OK: set[tuple] = set()  # (device type, index, path, variant, dtype) as `allows` is called, once passed
_NO: set[tuple] = set()  # (device type, index, path) as `allows` is called, once disabled


def run_check(device: torch.device, path: str, variant: tuple[str, ...], dtype: torch.dtype) -> CheckResult:
    """Run one check now (no caching, no logging): compare, or catch what compiling or launching raised."""
    start = time.perf_counter()
    try:
        passed, detail = CHECKS[path](check_weight(variant), dtype, device)
    except Exception as e:  # a compile error, a launch error, anything: the path must not run here
        passed, detail = False, f"{type(e).__name__}: {str(e).strip()[-600:]}"
    seconds = time.perf_counter() - start
    return CheckResult(str(device), path, variant, _DTYPE_NAME[dtype], passed, detail, seconds)


def _warn(result: CheckResult, device: torch.device) -> None:
    try:
        where = gpu_info.one_line(gpu_info.describe(device))
    except Exception as e:  # describing the GPU must never hide the warning itself
        where = f"{result.device} (could not describe it: {type(e).__name__}: {e})"
    LOG.warning(
        "WAN NVFP4 kernel self-check FAILED on %s: path %s for %s in %s: %s. The %s path is disabled on "
        "this device for this process; the next path (in the end the exact torch path) runs instead. "
        "Please report this with the output of `wan-nvfp4 gpu`.",
        where,
        result.path,
        variant_label(result.variant),
        result.dtype,
        result.detail,
        result.path,
    )


@_constant_under_compile
def allows(device_type: str, device_index, path: str, variant: tuple, dtype_name: str) -> bool:
    """May `auto` run `path` for `variant` in `dtype_name` on this device? Checks it the first time.

    Arguments are plain constants, so torch.compile evaluates this eagerly while tracing and keeps the answer.
    """
    if (device_type, device_index, path, variant, dtype_name) in _OK:
        return True  # the per-call cost once checked: one set lookup
    if (device_type, device_index, path) in _NO:
        return False
    device = torch.device(device_type) if device_index is None else torch.device(device_type, device_index)
    name = str(device)
    key = (name, path, variant, dtype_name)
    with _LOCK:
        if (name, path) in _DISABLED:
            _NO.add((device_type, device_index, path))
            return False
        if key in _PASSED:
            _OK.add((device_type, device_index, path, variant, dtype_name))
            return True
        result = run_check(device, path, variant, DTYPE_NAMES[dtype_name])
        _RESULTS.append(result)
        if result.passed:
            _PASSED[key] = result
            _OK.add((device_type, device_index, path, variant, dtype_name))
            LOG.info(
                "kernel self-check passed: %s on %s (%s, %.2f s)",
                result.label,
                name,
                result.detail,
                result.seconds,
            )
        else:
            _DISABLED[name, path] = result
            _NO.add((device_type, device_index, path))
            _warn(result, device)
        return result.passed


def gate(device: torch.device, weight, dtype: torch.dtype):
    """`path -> bool` for `dispatch.choose_path`: the self-check verdict for this device, weight and dtype
    (nothing is computed unless the dispatch asks, i.e. on a device where a Triton path can run)."""
    return lambda path: allows(device.type, device.index, path, variant_of(weight), _DTYPE_NAME[dtype])


# ---- reading the state ------------------------------------------------------------------------------------


def results() -> list[CheckResult]:
    """Every check run in this process, in order."""
    return list(_RESULTS)


def generation() -> int:
    """Changes whenever a check ran (the path log re-emits its line then)."""
    return len(_RESULTS)


def summary() -> str:
    """`triton-dequant ok on cuda:0 (1 variant), triton-fused FAILED on cuda:0 (...): disabled`, or ''."""
    parts: dict[tuple[str, str], str] = {}
    for r in _RESULTS:
        key = (r.device, r.path)
        failed = _DISABLED.get(key)
        if failed is not None:
            what = f"{variant_label(failed.variant)} {failed.dtype}"
            parts[key] = f"{r.path} FAILED on {r.device} ({what}): disabled"
        else:
            n = sum(1 for p in _PASSED.values() if (p.device, p.path) == key)
            parts[key] = f"{r.path} ok on {r.device} ({n} variant{'s' * (n != 1)})"
    return ", ".join(parts.values())


def reset() -> None:
    """Forget every result (tests only: a real process checks once)."""
    with _LOCK:
        _PASSED.clear()
        _OK.clear()
        _NO.clear()
        _DISABLED.clear()
        _RESULTS.clear()


def check_all(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, caps=None) -> list[dict]:
    """Check every ALL_VARIANTS x SELF_CHECKED path that `auto` may take on `device` in `dtype` (through
    `allows`: cached like a model's checks). One row per pair: `status` passed / FAILED / disabled (another
    variant failed first) / n/a (the path cannot run here: `detail` says why)."""
    device = torch.device(device)
    caps = caps or device_caps(device)
    rows = []
    for variant in ALL_VARIANTS:
        weight = check_weight(variant)
        for path in SELF_CHECKED:
            row = {
                "path": path,
                "variant": variant_label(variant),
                "dtype": _DTYPE_NAME[dtype],
                "seconds": 0.0,
            }
            entry = LINEAR if path == TRITON_FUSED else DEQUANTIZE
            weight_dtype = weight.data.dtype if isinstance(weight, FP8Weight) else None
            m = CHECK_M if entry == LINEAR else None
            req = Request(entry, variant[0], caps, dtype, m, CHECK_N, CHECK_K, weight_dtype)
            problem = CONSTRAINTS[path].why_not(req) or (
                None if caps.triton_native else "compiled Triton kernels do not run here"
            )
            if problem:
                rows.append(row | {"status": "n/a", "detail": problem})
                continue
            allows(device.type, device.index, path, variant, _DTYPE_NAME[dtype])
            key = (str(device), path, variant, _DTYPE_NAME[dtype])
            result = _PASSED.get(key) or _DISABLED[str(device), path]
            if result.variant != variant or result.dtype != _DTYPE_NAME[dtype]:
                rows.append(row | {"status": "disabled", "detail": f"after {result.label} failed"})
            else:
                status = "passed" if result.passed else "FAILED"
                rows.append(row | {"status": status, "detail": result.detail, "seconds": result.seconds})
    return rows
