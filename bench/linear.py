"""Linear benchmark: every path's time and its ratio to bf16 `F.linear`, per WAN layer shape and M.

    python -m wan_nvfp4.bench.linear              # full run on the CUDA GPU (WAN 14B and 5B shapes)
    python -m wan_nvfp4.bench.linear --quick      # fewer shapes and M values
    python -m wan_nvfp4.bench.linear --crossover  # also scan small M: where fused stops beating dequant
    python -m wan_nvfp4.bench.linear --device cpu --quick   # smoke test on CPU (tiny shapes, no Triton)

Per shape it prints: a table of times (ms) and ratios (path / bf16 F.linear; < 1 is faster) for our
Triton dequant + cuBLAS, our fused kernel, our torch path, comfy-kitchen's dequantize + F.linear (what
ComfyUI runs for NVFP4 on GPUs without native NVFP4, and for FP8 below sm_89) and, for NVFP4, ComfyUI's
native FP4 GEMM (W4A4, on Blackwell with torch built for CUDA >= 13; n/a elsewhere, saying why), plus the
path `auto` picks;
the relative error of each path against the exact reference (float64); the peak extra memory at the
largest M; the NVFP4 dequant's bandwidth against a
device-to-device copy of the same bytes; and, with --fp8, the FP8 paths including the opt-in
`fp8-scaled-mm` with its error. Timings: Triton's do_bench (median, L2 flushed before each run).
"""

import argparse
import sys
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..kernels import NVFP4Weight, dequantize, dispatch, ops, quantize_fp8, quantize_nvfp4
from ..kernels.options import KernelOptions
from . import native_fp4
from .timing import environment, peak_extra_mb, render_table, time_ms


@dataclass(frozen=True)
class Shape:
    label: str
    n: int  # out_features
    k: int  # in_features


WAN_SHAPES = (
    Shape("14B attn q/k/v/o", 5120, 5120),
    Shape("14B ffn.0", 13824, 5120),
    Shape("14B ffn.2", 5120, 13824),
    Shape("5B attn q/k/v/o", 3072, 3072),
    Shape("5B ffn.0", 14336, 3072),
    Shape("5B ffn.2", 3072, 14336),
)
M_VALUES = (1, 16, 64, 512, 4096, 32760)
QUICK_SHAPES = WAN_SHAPES[:2] + WAN_SHAPES[3:4]
QUICK_M = (1, 16, 64, 4096)
CPU_SHAPES = (Shape("tiny", 256, 256), Shape("tiny ffn", 768, 256))
CPU_M = (1, 16, 64)
CROSSOVER_M = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
ERROR_M = 16  # M at which each path's error against the exact reference is reported

NVFP4_PATHS = ("triton-dequant", "triton-fused", "torch")
FP8_PATHS = ("triton-dequant", "triton-fused", "torch", "fp8-scaled-mm")
COLUMN_NAMES = {
    "triton-dequant": "triton dequant+cuBLAS",
    "triton-fused": "triton fused",
    "torch": "torch dequant+F.linear",
    "fp8-scaled-mm": "fp8-scaled-mm (lossy)",
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m wan_nvfp4.bench.linear", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test, tiny shapes)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and M values, shorter timing")
    p.add_argument("--m", help="comma-separated M values (overrides the defaults)")
    p.add_argument("--shapes", help="comma-separated NxK shapes, e.g. 5120x5120,13824x5120")
    p.add_argument("--fp8", action="store_true", help="also benchmark FP8 weights (per-tensor e4m3fn)")
    p.add_argument("--crossover", action="store_true", help="scan small M for the fused/dequant crossover")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    p.add_argument("--no-comfy-kitchen", action="store_true", help="skip the comfy-kitchen column")
    return p.parse_args(argv)


def _shapes(args, device) -> tuple[Shape, ...]:
    if args.shapes:
        return tuple(Shape("custom", *map(int, s.lower().split("x"))) for s in args.shapes.split(","))
    if device.type != "cuda":
        return CPU_SHAPES
    return QUICK_SHAPES if args.quick else WAN_SHAPES


def _m_values(args, device) -> tuple[int, ...]:
    if args.m:
        return tuple(int(m) for m in args.m.split(","))
    if device.type != "cuda":
        return CPU_M
    return QUICK_M if args.quick else M_VALUES


# ---- comfy-kitchen baseline: what ComfyUI 0.29 does per call on GPUs without native NVFP4 ------------


def comfy_kitchen_backend() -> str | None:
    """comfy-kitchen's backend as ComfyUI would use it: `cuda` only with torch built for CUDA >= 13
    (ComfyUI disables it otherwise), never `triton` (opt-in flag), else `eager`. None if not installed."""
    try:
        import comfy_kitchen as ck
    except ImportError:
        return None
    cuda_major = int((torch.version.cuda or "0").split(".")[0])
    cuda_ok = ck.list_backends().get("cuda", {}).get("available", False)
    return "cuda" if cuda_ok and cuda_major >= 13 else "eager"


def comfy_kitchen_dequantize(w, dtype: torch.dtype, backend: str) -> torch.Tensor:
    """comfy-kitchen's dequantize of a ComfyUI-native NVFP4 (high_first, swizzled) or per-tensor FP8 weight"""
    import comfy_kitchen as ck

    with ck.use_backend(backend):
        if isinstance(w, NVFP4Weight):
            out = ck.dequantize_nvfp4(w.packed, w.global_scale, w.block_scale, output_type=dtype)
        else:
            out = ck.dequantize_per_tensor_fp8(w.data, w.scale, output_type=dtype)
    return out.reshape(w.shape)


def comfy_kitchen_linear(x, w, bias, backend: str) -> torch.Tensor:
    return F.linear(x, comfy_kitchen_dequantize(w, x.dtype, backend), bias)


FP8_BASELINE_NOTE = (
    "comfy-kitchen column (FP8): dequantize + F.linear, what ComfyUI runs for FP8 below sm_89 or with "
    "full_precision_matrix_mult; on sm_89+ ComfyUI quantizes the activations to FP8 and runs "
    "torch._scaled_mm instead (lossy, like fp8-scaled-mm)"
)


# ---- one shape ----------------------------------------------------------------------------------------


def _columns(weight, ck_backend, paths) -> list[tuple[str, str | None]]:
    """(column label, our path name, native_fp4.COLUMN, or None for the comfy-kitchen baseline)."""
    cols = [(COLUMN_NAMES[p], p) for p in paths]
    if ck_backend is not None and (isinstance(weight, NVFP4Weight) or weight.granularity == "tensor"):
        cols.append((f"comfy-kitchen ({ck_backend})", None))
    if ck_backend is not None and isinstance(weight, NVFP4Weight):
        cols.append((native_fp4.LABEL, native_fp4.COLUMN))
    return cols


def _problem(path: str | None, x, weight) -> str | None:
    if path is None:
        return None
    if path == native_fp4.COLUMN:
        return native_fp4.unavailable(x.device)
    return ops.path_problem(x, weight, path)


def _runner(path: str | None, x, weight, bias, ck_backend, native_weight=None):
    if path is None:
        return partial(comfy_kitchen_linear, x, weight, bias, ck_backend)
    if path == native_fp4.COLUMN:
        return partial(native_fp4.linear, x, native_weight, bias)
    return partial(ops.linear, x, weight, bias, path)


def _exact(x, weight, bias) -> torch.Tensor:
    """`x @ W.T + bias` in float64 with W dequantized exactly (an fp32 matmul on a GPU may run in TF32)."""
    return F.linear(x.double(), dequantize(weight, torch.float32).double(), bias.double())


def _rel_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    return ((out.double() - exact).norm() / exact.norm()).item()


def _auto_cell(x, weight, fmt: str) -> str:
    auto = ops.resolve_path(x, weight)
    if fmt != dispatch.FP8:
        return auto
    return f"{auto} / {ops.resolve_path(x, weight, options=KernelOptions(fp8_fast=True))}"


def bench_shape(shape: Shape, weight, w_bf16, ms, device, args, ck_backend, paths, fmt) -> str:
    """One table: a row per M, a column per path (time in ms and ratio to bf16 F.linear)."""
    cols = _columns(weight, ck_backend, paths)
    bias = torch.randn(shape.n, device=device, dtype=torch.bfloat16)
    error_m = min(ms, key=lambda v: abs(v - ERROR_M))
    header = [
        "M",
        "bf16 F.linear (ms)",
        *[c[0] for c in cols],
        "auto (/ fp8_fast)" if fmt == "fp8" else "auto",
    ]
    rows, errors, memory, unavailable = [], {}, {}, {}
    native = any(p == native_fp4.COLUMN for _, p in cols) and native_fp4.unavailable(device) is None
    native_weight = native_fp4.prepare(weight) if native else None  # converted once, like the loader
    for m in ms:
        x = torch.randn(m, shape.k, device=device, dtype=torch.bfloat16)
        baseline = partial(F.linear, x, w_bf16, bias)
        base = time_ms(baseline, device, args.quick)
        cells, runners = [str(m), f"{base:.3f}"], {"bf16 F.linear": baseline}
        for label, path in cols:
            problem = _problem(path, x, weight)
            if problem:
                cells.append("n/a")
                unavailable[label] = problem
                continue
            runners[label] = _runner(path, x, weight, bias, ck_backend, native_weight)
            t = time_ms(runners[label], device, args.quick)
            cells.append(f"{t:.3f} ({t / base:.2f}x)")
        rows.append([*cells, _auto_cell(x, weight, fmt)])
        if m == error_m:
            exact = _exact(x, weight, bias)
            errors = {label: _rel_error(run(), exact) for label, run in runners.items()}
        if m == max(ms):
            memory = {label: peak_extra_mb(run, device) for label, run in runners.items()}
        del x, runners, baseline
    lines = [
        f"{fmt.upper()} {shape.label}: N={shape.n} K={shape.k} (ms, ratio to bf16 F.linear: < 1 is faster)",
        render_table(header, rows, args.markdown),
        f"relative error vs the exact reference at M={error_m} (bf16 F.linear uses the unquantized weight): "
        + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()),
    ]
    lines += [f"n/a: {label}: {why}" for label, why in unavailable.items()]
    if fmt == dispatch.FP8 and any(path is None for _, path in cols):
        lines.append(FP8_BASELINE_NOTE)
    if any(v is not None for v in memory.values()):
        mem = ", ".join(f"{k} {v:.0f} MB" for k, v in memory.items())
        lines.append(f"peak memory above the inputs (output included) at M={max(ms)}: {mem}")
    return "\n".join(lines)


# ---- dequant bandwidth --------------------------------------------------------------------------------


def _dequant_row(shape: Shape, w: NVFP4Weight, device, args, ck_backend) -> list[str]:
    moved = w.packed.numel() + w.block_scale.numel() + 4 + shape.n * shape.k * 2  # bytes read + written
    probe = torch.empty(1, shape.k, device=device, dtype=torch.bfloat16)
    t_triton = None
    if ops.path_problem(probe, w, "triton-dequant") is None:
        t_triton = time_ms(partial(ops.dequantize, w, torch.bfloat16, "triton-dequant"), device, args.quick)
    src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
    t_copy = time_ms(partial(torch.clone, src), device, args.quick)  # reads and writes moved // 2 bytes each
    t_torch = time_ms(partial(ops.dequantize, w, torch.bfloat16, "torch"), device, args.quick)
    t_ck = None
    if ck_backend is not None:
        t_ck = time_ms(partial(comfy_kitchen_dequantize, w, torch.bfloat16, ck_backend), device, args.quick)
    copy_gbs = 2 * (moved // 2) / t_copy / 1e6
    gbs = moved / t_triton / 1e6 if t_triton else None
    return [
        f"{shape.n}x{shape.k}",
        f"{t_triton:.4f}" if t_triton else "n/a",
        f"{gbs:.0f}" if gbs else "-",
        f"{copy_gbs:.0f}",
        f"{gbs / copy_gbs:.0%}" if gbs else "-",
        f"{t_torch:.4f}",
        f"{t_ck:.4f}" if t_ck is not None else "-",
    ]


def bench_dequant(shapes_and_weights, device, args, ck_backend) -> str:
    """NVFP4 -> bf16 dequant: time, achieved bandwidth, and that of a device copy moving as many bytes."""
    header = ["NxK", "triton (ms)", "GB/s", "copy GB/s", "of copy", "torch (ms)", "comfy-kitchen (ms)"]
    rows = [_dequant_row(shape, w, device, args, ck_backend) for shape, w in shapes_and_weights]
    title = "NVFP4 -> bf16 dequant (bytes: packed + scales read, bf16 written; copy: clone of half as many)"
    return "\n".join([title, render_table(header, rows, args.markdown)])


# ---- fused vs dequant crossover -----------------------------------------------------------------------


def _fused_over_dequant(w, m: int, device, args) -> float:
    x = torch.randn(m, w.shape[1], device=device, dtype=torch.bfloat16)
    fused = time_ms(partial(ops.linear, x, w, None, "triton-fused"), device, args.quick)
    return fused / time_ms(partial(ops.linear, x, w, None, "triton-dequant"), device, args.quick)


def bench_crossover(shapes_and_weights, device, args, fmt) -> str:
    """Time ratio fused / dequant+cuBLAS over small M, and the largest M up to which fused always wins."""
    title = f"{fmt.upper()} fused / dequant+cuBLAS time by M (< 1: fused faster)"
    probe = torch.empty(1, shapes_and_weights[0][1].shape[1], device=device, dtype=torch.bfloat16)
    for path in (dispatch.TRITON_FUSED, dispatch.TRITON_DEQUANT):
        problem = ops.path_problem(probe, shapes_and_weights[0][1], path)
        if problem:
            return f"{title}: n/a, {path}: {problem}"
    header = ["NxK", *[str(m) for m in CROSSOVER_M], "fused wins up to M"]
    rows, limits = [], []
    for shape, w in shapes_and_weights:
        ratios = [_fused_over_dequant(w, m, device, args) for m in CROSSOVER_M]
        wins = 0
        for m, r in zip(CROSSOVER_M, ratios, strict=True):
            if r >= 1:
                break
            wins = m
        limits.append(wins)
        rows.append([f"{shape.n}x{shape.k}", *[f"{r:.2f}" for r in ratios], str(wins)])
    return "\n".join(
        [
            title,
            render_table(header, rows, args.markdown),
            f"measured crossover: set dispatch.FUSED_MAX_M[{fmt!r}] = {min(limits)} "
            f"(provisional value now: {dispatch.FUSED_MAX_M[fmt]})",
        ]
    )


# ---- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"No CUDA device: nothing to benchmark. Blackwell was not available: {native_fp4.NO_MEASUREMENT}."
        )
        print("For a smoke test on CPU run:")
        print("    python -m wan_nvfp4.bench.linear --device cpu --quick")
        return 0
    torch.manual_seed(0)
    ck_backend = None if args.no_comfy_kitchen else comfy_kitchen_backend()
    print("\n".join(f"{k}: {v}" for k, v in environment(device).items()))
    print(native_fp4.status_line(device))
    if device.type != "cuda":
        print("CPU run: timings say nothing about GPUs. Triton paths are n/a (they need an NVIDIA GPU),")
        print("or run interpreted with TRITON_INTERPRET=1 (exercises the code; those timings mean nothing).")
    print()
    shapes, ms = _shapes(args, device), _m_values(args, device)
    nvfp4_weights, fp8_weights = [], []
    for shape in shapes:
        w_bf16 = torch.randn(shape.n, shape.k, device=device, dtype=torch.bfloat16) * 0.02
        w = quantize_nvfp4(w_bf16)  # ComfyUI-native conventions: high_first, swizzled scales
        nvfp4_weights.append((shape, w))
        print(
            bench_shape(shape, w, w_bf16, ms, device, args, ck_backend, NVFP4_PATHS, dispatch.NVFP4),
            end="\n\n",
        )
        if args.fp8:
            f = quantize_fp8(w_bf16, "tensor")
            fp8_weights.append((shape, f))
            print(
                bench_shape(shape, f, w_bf16, ms, device, args, ck_backend, FP8_PATHS, dispatch.FP8),
                end="\n\n",
            )
        del w_bf16
    print(bench_dequant(nvfp4_weights, device, args, ck_backend), end="\n\n")
    if args.crossover and device.type == "cuda":
        print(bench_crossover(nvfp4_weights, device, args, dispatch.NVFP4), end="\n\n")
        if fp8_weights:
            print(bench_crossover(fp8_weights, device, args, dispatch.FP8), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
