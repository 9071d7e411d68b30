"""`wan-nvfp4 gpu`: a report of this machine's GPU setup that anyone can run and paste into an issue.

Sections: the environment (GPU, capability, driver, CUDA, torch, Triton, ComfyUI / comfy-kitchen / comfy-aimdo
versions when installed), the first-use self-check of every Triton path and weight variant
(kernels/selfcheck.py), a benchmark of about 30 s over the WAN 5B and 14B layer shapes at M in {16, 512,
32760} (our `auto` path, bf16 F.linear, the torch path and comfy-kitchen's dequantize + matmul, as ratios to
bf16 F.linear) and the NVFP4 dequant's achieved bandwidth. Markdown or JSON. Without an NVIDIA GPU it reports
the environment only. ComfyUI is never imported here: its version is read from `comfyui_version.py`.
"""

import datetime
import importlib.metadata
import importlib.util
import os
import platform
import re
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ..kernels import gpu_info, ops, quantize_nvfp4, selfcheck
from ..kernels.capabilities import device_caps, triton_version
from . import linear as bench_linear
from .timing import render_table, time_ms

REPORT_SHAPES = bench_linear.WAN_SHAPES  # 14B and 5B attention and FFN (N x K)
REPORT_M = (16, 512, 32760)
CPU_SHAPES = (bench_linear.Shape("tiny", 96, 64),)  # `--device cpu`: a smoke run of the same code
CPU_M = (1, 16)
PACKAGES = {"comfy-kitchen": "comfy-kitchen", "comfy-aimdo": "comfy-aimdo"}
_VERSION_LINE = re.compile(r"""__version__\s*=\s*["']([^"']+)["']""")


# ---- environment ------------------------------------------------------------------------------------------


def _comfyui_version_file() -> Path | None:
    """`comfyui_version.py` of the ComfyUI this pack sits in (custom_nodes/<pack>/), of $COMFYUI_PATH, or of a
    ComfyUI on sys.path (found, not imported)."""
    candidates = [Path(__file__).resolve().parents[3] / "comfyui_version.py"]
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]) / "comfyui_version.py")
    spec = importlib.util.find_spec("comfyui_version")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin))
    return next((p for p in candidates if p.is_file()), None)


def comfyui_version() -> str:
    path = _comfyui_version_file()
    if path is None:
        return "not found (run inside ComfyUI, or set COMFYUI_PATH)"
    match = _VERSION_LINE.search(path.read_text(errors="replace"))
    return f"{match.group(1) if match else 'unknown'} ({path.parent})"


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment(device: torch.device) -> dict[str, str]:
    """What the report ran on; GPU facts only when `device` is a CUDA device."""
    env = {
        "date": datetime.date.today().isoformat(),
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda (torch build)": str(torch.version.cuda),
        "triton": triton_version() or "not installed",
        "comfyui": comfyui_version(),
    }
    env |= {name: package_version(dist) for name, dist in PACKAGES.items()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        caps = device_caps(device)
        capability = f"sm_{props.major}{props.minor}"
        env["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        env["capability"] = capability if caps.kind == "cuda" else f"{caps.kind} ({capability})"
        env["driver"] = gpu_info.driver_version()
        env["gpu count"] = str(torch.cuda.device_count())
    return env


def no_gpu_reason() -> str | None:
    """Why there is nothing to check or time here (None on an NVIDIA GPU)."""
    if not torch.cuda.is_available():
        return "No NVIDIA GPU (CUDA) is available to torch here: no self-check and no benchmark."
    if torch.version.hip is not None:
        return "This is an AMD GPU (ROCm): the Triton paths are NVIDIA-only, the torch path runs here."
    return None


# ---- benchmark -------------------------------------------------------------------------------------------


def _ratio(t: float | None, base: float) -> str:
    return "n/a" if t is None else f"{t / base:.2f}x"


def benchmark(device: torch.device, shapes, ms, ck_backend: str | None) -> list[dict]:
    """A row per shape and M: bf16 F.linear time, and ours (`auto`), torch and comfy-kitchen in ms."""
    rows = []
    for shape in shapes:
        w_bf16 = torch.randn(shape.n, shape.k, device=device, dtype=torch.bfloat16) * 0.02
        w = quantize_nvfp4(w_bf16)  # ComfyUI-native conventions
        bias = torch.randn(shape.n, device=device, dtype=torch.bfloat16)
        for m in ms:
            x = torch.randn(m, shape.k, device=device, dtype=torch.bfloat16)
            base = time_ms(partial(F.linear, x, w_bf16, bias), device, quick=True)
            auto = ops.resolve_path(x, w)
            ours = time_ms(partial(ops.linear, x, w, bias), device, quick=True)
            torch_t = time_ms(partial(ops.linear, x, w, bias, "torch"), device, quick=True)
            ck = None
            if ck_backend is not None:
                ck = time_ms(
                    partial(bench_linear.comfy_kitchen_linear, x, w, bias, ck_backend), device, quick=True
                )
            rows.append(
                {
                    "shape": shape.label,
                    "n": shape.n,
                    "k": shape.k,
                    "m": m,
                    "bf16_ms": base,
                    "ours_path": auto,
                    "ours_ms": ours,
                    "torch_ms": torch_t,
                    "comfy_kitchen_ms": ck,
                }
            )
            del x
        del w_bf16, w
    return rows


def dequant_bandwidth(device: torch.device, shapes, ck_backend: str | None) -> list[dict]:
    """The NVFP4 -> bf16 dequant per shape: time, GB/s, and a device copy of as many bytes (bench.linear)."""
    header = ["NxK", "triton_ms", "gb_s", "copy_gb_s", "of_copy", "torch_ms", "comfy_kitchen_ms"]
    args = bench_linear.parse_args(["--quick"])
    rows = []
    for shape in shapes:
        w = quantize_nvfp4(torch.randn(shape.n, shape.k, device=device, dtype=torch.bfloat16) * 0.02)
        rows.append(
            dict(zip(header, bench_linear._dequant_row(shape, w, device, args, ck_backend), strict=True))
        )
    return rows


# ---- the report ------------------------------------------------------------------------------------------


def build_report(device: str = "cuda", run_benchmark: bool = True, shapes=None, ms=None) -> dict:
    """Everything the report shows, as plain data (`to_markdown` renders it; `--json` prints it)."""
    dev = torch.device(device)
    reason = no_gpu_reason() if dev.type == "cuda" else None
    report = {
        "environment": environment(dev if reason is None else torch.device("cpu")),
        "gpu": reason is None,
    }
    if reason is not None:
        report["no_gpu"] = reason
        return report
    if dev.type == "cuda":
        report["device"] = gpu_info.one_line(gpu_info.describe(dev))
    report["selfcheck"] = [
        row for dtype in (torch.bfloat16, torch.float16) for row in selfcheck.check_all(dev, dtype)
    ]
    if run_benchmark:
        torch.manual_seed(0)
        ck_backend = bench_linear.comfy_kitchen_backend()
        report["comfy_kitchen_backend"] = ck_backend
        if shapes is None:
            shapes, ms = (REPORT_SHAPES, REPORT_M) if dev.type == "cuda" else (CPU_SHAPES, CPU_M)
        report["benchmark"] = benchmark(dev, shapes, ms, ck_backend)
        report["dequant"] = dequant_bandwidth(dev, shapes, ck_backend)
    return report


def _ms(t: float | None) -> str:
    return "n/a" if t is None else f"{t:.3f}"


def to_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "## WAN NVFP4 GPU report",
        "",
        render_table(["", "version"], [[k, v] for k, v in env.items()], True),
    ]
    if not report["gpu"]:
        return "\n".join([*lines, "", f"**{report['no_gpu']}**"])
    if "device" in report:
        lines += ["", f"Device: {report['device']}"]
    lines += ["", "### Kernel self-check (first use, per path, weight variant and dtype)", ""]
    rows = [
        [r["path"], r["variant"], r["dtype"], r["status"], r["detail"], f"{r['seconds']:.2f}"]
        for r in report["selfcheck"]
    ]
    lines.append(render_table(["path", "weight", "dtype", "result", "detail", "s"], rows, True))
    total = sum(r["seconds"] for r in report["selfcheck"])
    lines.append(f"\nself-check time, all {len(rows)} rows: {total:.2f} s (a model checks only what it uses)")
    if "benchmark" in report:
        ck = report.get("comfy_kitchen_backend")
        lines += ["", "### NVFP4 linear: time of bf16 F.linear and ratios to it (< 1 is faster)", ""]
        header = [
            "shape",
            "N x K",
            "M",
            "bf16 F.linear (ms)",
            "ours (auto path)",
            "torch path",
            f"comfy-kitchen ({ck})",
        ]
        rows = [
            [
                r["shape"],
                f"{r['n']}x{r['k']}",
                str(r["m"]),
                _ms(r["bf16_ms"]),
                f"{_ratio(r['ours_ms'], r['bf16_ms'])} ({r['ours_path']})",
                _ratio(r["torch_ms"], r["bf16_ms"]),
                _ratio(r["comfy_kitchen_ms"], r["bf16_ms"]),
            ]
            for r in report["benchmark"]
        ]
        lines.append(render_table(header, rows, True))
        lines += ["", "### NVFP4 -> bf16 dequant bandwidth (packed + scales read, bf16 written)", ""]
        header = ["N x K", "triton (ms)", "GB/s", "copy GB/s", "of copy", "torch (ms)", "comfy-kitchen (ms)"]
        lines.append(render_table(header, [list(r.values()) for r in report["dequant"]], True))
    return "\n".join(lines)
