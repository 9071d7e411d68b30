"""Shared parts of the Triton kernel tests: shapes, weight builders, rounding checks, interpreter worker.

The interpreter tests and the CUDA tests run the same cases; only the device and the tolerance differ (a GPU
rounds fp32 -> bf16 to nearest, the interpreter truncates: 1 ulp). Triton decides interpreter-or-GPU when a
kernel module is imported (`@triton.jit` reads TRITON_INTERPRET), so interpreter runs happen in a spawned
worker process that sets the variable before importing anything from Triton: the pytest process itself never
has it set, and CUDA tests in the same session still compile real kernels.
"""

import concurrent.futures
import contextlib
import importlib
import multiprocessing
import os
from dataclasses import replace

import torch

from wan_nvfp4 import kernels as K

# WAN Linear shapes (N, K) scaled down by 16: 14B (5120, 13824) and 5B (3072, 14336) dims. N = 192, 320,
# 864 are not multiples of 128 (padded swizzle tiles); K = 864 is not a multiple of the interpreter's
# K tile (64), nor are ODD's K = 16, 48, 80, 96.
WAN_SCALED = [(320, 320), (864, 320), (320, 864), (192, 896), (896, 192)]
# Odd shapes: a single row, N just past a swizzle tile, N and K small and unaligned.
ODD = [(1, 16), (129, 80), (200, 96), (33, 48)]
M_VALUES = [1, 3, 77]
CONVENTIONS = [(o, s) for o in K.NIBBLE_ORDERS for s in K.SCALE_LAYOUTS]
# (granularity, fp8 dtype); plain fp8 without a scale is `("none", dtype)`
FP8_KINDS = [(g, d) for g in ("tensor", "row") for d in (torch.float8_e4m3fn, torch.float8_e5m2)]

# Parametrizations shared by the interpreter and CUDA tests (kept small: the interpreter pays per tile).

NVFP4_DEQUANT_CASES = (
    [(shape, conv, torch.bfloat16) for shape in WAN_SCALED + ODD for conv in CONVENTIONS]
    + [(shape, conv, dt) for shape in ODD for conv in CONVENTIONS for dt in (torch.float16, torch.float32)]
    + [((320, 864), ("high_first", "swizzled"), dt) for dt in (torch.float16, torch.float32)]
)

FP8_DEQUANT_CASES = (
    [(shape, kind, torch.bfloat16) for shape in [*ODD, (320, 864)] for kind in FP8_KINDS]
    + [((129, 80), kind, dt) for kind in FP8_KINDS for dt in (torch.float16, torch.float32)]
    + [((200, 96), ("none", d), torch.bfloat16) for d in (torch.float8_e4m3fn, torch.float8_e5m2)]
)

FUSED_NVFP4_CASES = (
    [
        (m, shape, conv, torch.bfloat16, True)
        for m in (1, 3)
        for shape in WAN_SCALED[:3]
        for conv in CONVENTIONS
    ]
    + [(77, (200, 96), conv, torch.bfloat16, True) for conv in CONVENTIONS]
    + [
        (m, (129, 80), ("low_first", "linear"), torch.float16, bias)
        for m in M_VALUES
        for bias in (True, False)
    ]
    + [(77, (320, 320), ("high_first", "swizzled"), torch.bfloat16, False)]
)

FUSED_FP8_CASES = [(m, (129, 80), kind, torch.bfloat16) for m in M_VALUES for kind in FP8_KINDS] + [
    (3, (320, 320), ("row", torch.float8_e4m3fn), torch.float16),
    (3, (200, 96), ("none", torch.float8_e5m2), torch.bfloat16),
]

_MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}
_MIN_EXPONENT = {torch.bfloat16: -126, torch.float16: -14, torch.float32: -126}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_weight(n: int, k: int, seed: int) -> torch.Tensor:
    """A weight with a realistic spread: rows of different scale, a few outliers."""
    g = seeded(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g).add(0.05)
    w[torch.rand(n, k, generator=g) < 0.002] *= 20
    return w


def make_nvfp4(n, k, order, layout, seed=0, pad_rows=0) -> K.NVFP4Weight:
    """NVFP4 weight in the given conventions; `pad_rows` appends junk packed rows beyond N (to be ignored)."""
    w = K.quantize_nvfp4(random_weight(n, k, seed), nibble_order=order, scale_layout=layout)
    if not pad_rows:
        return w
    junk = torch.randint(0, 256, (pad_rows, k // 2), dtype=torch.uint8, generator=seeded(seed + 1))
    return replace(w, packed=torch.cat([w.packed, junk]))


def make_fp8(n, k, granularity, fp8_dtype, seed=0) -> K.FP8Weight:
    if granularity == "none":
        return K.FP8Weight(random_weight(n, k, seed).clamp(-400, 400).to(fp8_dtype), None)
    return K.quantize_fp8(random_weight(n, k, seed), granularity, fp8_dtype)


def exhaustive_nvfp4(order: str, layout: str, global_scale: float = 0.75) -> K.NVFP4Weight:
    """`[256, 256]`: every block holds the codes 0..15 in order, and the 4096 block scales run through all
    256 e4m3 bytes 16 times (subnormals, -0 and both NaN encodings). Built from bytes, not quantized."""
    n, k = 256, 256
    codes = torch.arange(16, dtype=torch.uint8).repeat(n, k // 16)
    scale = (torch.arange(n * k // 16) % 256).to(torch.uint8).reshape(n, k // 16).view(torch.float8_e4m3fn)
    stored = K.to_blocked(scale) if layout == K.SWIZZLED else scale
    gs = torch.tensor(global_scale)
    return K.NVFP4Weight(K.pack_nibbles(codes, order), stored, gs, n, k, order, layout).validate()


def exhaustive_fp8(fp8_dtype: torch.dtype, granularity: str) -> K.FP8Weight:
    """`[16, 16]` holding all 256 bytes of `fp8_dtype` (subnormals, NaN, and Inf for e5m2)."""
    data = torch.arange(256).to(torch.uint8).reshape(16, 16).view(fp8_dtype)
    scale = {"none": None, "tensor": torch.tensor(0.37), "row": torch.linspace(0.1, 3.3, 16)}[granularity]
    return K.FP8Weight(data, scale).validate()


def make_x(m: int, k: int, dtype: torch.dtype, seed: int = 7) -> torch.Tensor:
    return torch.randn(m, k, generator=seeded(seed)).to(dtype)


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at each fp32 value (subnormal spacing near zero, and at zero itself)."""
    values = values.float().abs()
    _, exponent = torch.frexp(values)  # frexp(0) gives exponent 0, which would allow 2^-8 around a bf16 zero
    exponent = torch.where(values == 0, _MIN_EXPONENT[dtype], exponent - 1)
    exponent = torch.clamp(exponent, min=_MIN_EXPONENT[dtype])
    return torch.ldexp(torch.ones_like(values, dtype=torch.float32), exponent - _MANTISSA_BITS[dtype])


def assert_rounded_from(out: torch.Tensor, exact: torch.Tensor, allow_ulp: bool) -> None:
    """`out` (bf16/fp16/fp32) is `exact` (fp32) rounded once: bit-exact, or within 1 ulp if `allow_ulp`."""
    assert out.shape == exact.shape, (out.shape, exact.shape)
    want = exact.to(out.dtype)
    if not allow_ulp or out.dtype == torch.float32:
        assert torch.equal(out.isnan(), want.isnan()), "NaN positions differ"
        mismatch = (out != want) & ~want.isnan()
        assert not mismatch.any(), f"{int(mismatch.sum())} of {out.numel()} values differ from the reference"
        return
    assert torch.equal(out.isnan(), exact.isnan()), "NaN positions differ"
    finite = ~exact.isnan()
    err = (out.float() - exact).abs()[finite]
    bound = ulp(exact, out.dtype)[finite]
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"error {worst:.3g} ulp of {out.dtype} (allowed 1)"


def linear_exact(x: torch.Tensor, weight, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ W.T + bias with W dequantized exactly, |x| @ |W|.T for the error bound), in float64 on the CPU.

    Never on the GPU: an fp32 matmul there may run in TF32 (`torch.backends.cuda.matmul.allow_tf32`).
    """
    w64 = K.dequantize(weight, torch.float32).cpu().double()  # exact in fp32, so exact in fp64
    x64 = x.cpu().double()
    y = x64 @ w64.T
    if bias is not None:
        y = y + bias.cpu().double()
    return y, x64.abs() @ w64.abs().T


def assert_linear_close(out, x, weight, bias, weight_rounded: bool = False, slack: float = 4.0) -> None:
    """Linear output vs the exact product (float64 on the CPU, see `linear_exact`).

    Allowed: 1 ulp of the output dtype (final rounding, or truncation under the interpreter) plus fp32
    accumulation error `slack * K * 2^-24 * (|x| @ |W|.T)`; with `weight_rounded` (dequant into a half
    scratch, global scale folded in) also half an ulp of the scratch per weight: `2^-(p+1) * (|x| @ |W|.T)`.
    """
    exact, magnitude = linear_exact(x, weight, bias)
    bound = ulp(exact, out.dtype) + slack * x.shape[-1] * 2.0**-24 * magnitude
    if weight_rounded:
        bound = bound + 2.0 ** -(_MANTISSA_BITS[out.dtype] + 1) * magnitude
    worst = ((out.cpu().double() - exact).abs() / bound).max().item()
    assert worst <= 1.0, f"error {worst:.3g}x the allowed bound"


def relative_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    out, exact = out.cpu().double(), exact.cpu().double()
    return ((out - exact).norm() / exact.norm()).item()


# ---- interpreter worker -------------------------------------------------------------------------------

# name -> (module under wan_nvfp4.kernels, or a full module name; attribute): resolved in the worker, after
# TRITON_INTERPRET is set.
WORKER_CALLS = {
    "dequantize": ("triton_dequant", "dequantize"),
    "fused_linear": ("triton_fused", "linear"),
    "ops_linear": ("ops", "linear"),
    "ops_dequantize": ("ops", "dequantize"),
    "ops_resolve_path": ("ops", "resolve_path"),
    "selfcheck_scenario": ("wan_nvfp4.tests.selfcheck_cases", "run_scenario"),
    "selfcheck_check_all": ("wan_nvfp4.tests.selfcheck_cases", "check_all_scenario"),
}


def _enter_interpreter() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(1)


@contextlib.contextmanager
def _pinned_gpu_config(module, index: int | None):
    """Run `module`'s autotuned kernels with its shipped `GPU_CONFIGS[index]` instead of the interpreter's
    single config (the tile sizes a GPU would use: only their numbers are checked here, not their speed)."""
    if index is None:
        yield
        return
    tuned = [k for k in vars(module).values() if hasattr(k, "configs") and hasattr(k, "cache")]
    saved = [(k, k.configs) for k in tuned]
    for k in tuned:
        k.configs = [module.GPU_CONFIGS[index]]
        k.cache.clear()
    try:
        yield
    finally:
        for k, configs in saved:
            k.configs = configs
            k.cache.clear()


def _call(name: str, args: tuple, kwargs: dict):
    module_name, attr = WORKER_CALLS[name]
    full_name = module_name if "." in module_name else f"wan_nvfp4.kernels.{module_name}"
    module = importlib.import_module(full_name)
    with _pinned_gpu_config(module, kwargs.pop("gpu_config", None)):
        return getattr(module, attr)(*args, **kwargs)


class InterpreterWorker:
    """One spawned process running kernel calls under TRITON_INTERPRET=1; results come back as tensors."""

    def __init__(self):
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_enter_interpreter
        )
        # The worker must have TRITON_INTERPRET before anything in it imports Triton (Triton's own
        # `tl.interleave` etc. are decorated at import): start it now with the variable in its environment.
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            self._pool.submit(os.getpid).result(timeout=120)
        finally:
            if saved is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = saved

    def __call__(self, name: str, *args, **kwargs):
        """`name`'s function on `args`; `gpu_config=i` pins the module's kernels to its `GPU_CONFIGS[i]`."""
        return self._pool.submit(_call, name, args, kwargs).result(timeout=300)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
