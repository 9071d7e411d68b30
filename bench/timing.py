"""Timing, peak-memory and environment helpers for the benchmarks (printed numbers, never assertions)."""

import datetime
import platform
import statistics
import time
from collections.abc import Callable

import torch

from ..kernels import capabilities, gpu_info


def time_ms(fn: Callable[[], object], device: torch.device, quick: bool = False) -> float:
    """Median wall time of `fn` in ms. CUDA: Triton's do_bench (CUDA events, L2 flushed before each run, so a
    weight is read from HBM as it is in a real forward); CPU: perf_counter."""
    if device.type == "cuda":
        if capabilities.triton_available():
            from triton.testing import do_bench

            warmup, rep = (10, 40) if quick else (25, 100)
            return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
        return _cuda_events_ms(fn, reps=10 if quick else 50)
    fn()
    samples = []
    for _ in range(3 if quick else 7):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _cuda_events_ms(fn, reps: int) -> float:
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    fn()
    times = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak CUDA memory allocated by one call of `fn` above what was allocated before (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def environment(device: torch.device) -> dict[str, str]:
    """What produced the numbers: GPU, driver, CUDA, torch, Triton, comfy-kitchen, date."""
    env = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "triton": capabilities.triton_version() or "not installed",
        "python": platform.python_version(),
    }
    try:
        import comfy_kitchen

        env["comfy-kitchen"] = getattr(comfy_kitchen, "__version__", "installed")
    except ImportError:
        env["comfy-kitchen"] = "not installed"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
        env["driver"] = gpu_info.driver_version()
        env["cuda (torch build)"] = str(torch.version.cuda)
    else:
        env["device"] = (
            f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
    return env


def render_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A plain-text (aligned) or Markdown table."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    )
