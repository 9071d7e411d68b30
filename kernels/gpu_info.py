"""What describes a GPU setup (name, capability, driver, CUDA, torch, Triton), for warnings and reports.

Nothing here runs at import; the driver is asked once per process (NVML, else `nvidia-smi`), on demand only.
"""

import functools
import shutil
import subprocess

import torch

from .capabilities import DeviceCaps, device_caps, triton_version


@functools.cache
def driver_version() -> str:
    """The NVIDIA driver version (`580.159.04`), or why it is unknown."""
    try:
        import pynvml  # nvidia-ml-py, when installed

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # not installed, or no NVML library: ask nvidia-smi
        pass
    if shutil.which("nvidia-smi") is None:
        return "unknown (no nvidia-smi)"
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
            timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({type(e).__name__})"
    lines = result.stdout.strip().splitlines()
    return lines[0].strip() if result.returncode == 0 and lines else "unknown"


def describe(device: torch.device | str, caps: DeviceCaps | None = None) -> dict[str, str]:
    """GPU (or device), capability, driver, CUDA, torch and Triton versions of `device` (`caps`: as the
    dispatch saw it; default: probed)."""
    device = torch.device(device)
    caps = caps or device_caps(device)
    info = {"device": str(device), "gpu": caps.name}
    if caps.capability is not None:
        info["capability"] = "sm_{}{}".format(*caps.capability)
    if caps.kind in ("cuda", "rocm"):
        info["driver"] = driver_version()
        info["cuda"] = f"HIP {torch.version.hip}" if torch.version.hip else str(torch.version.cuda)
    info["torch"] = torch.__version__
    info["triton"] = triton_version() or "not installed"
    return info


def one_line(info: dict[str, str]) -> str:
    """`NVIDIA H100 (sm_90) on cuda:0; driver 580.159.04, CUDA 13.0, torch 2.11.0, Triton 3.6.0`."""
    where = f"{info['gpu']} ({info['capability']})" if "capability" in info else info["gpu"]
    parts = [f"{label} {info[key]}" for key, label in (("driver", "driver"), ("cuda", "CUDA")) if key in info]
    parts += [f"torch {info['torch']}", f"Triton {info['triton']}"]
    return f"{where} on {info['device']}; " + ", ".join(parts)
