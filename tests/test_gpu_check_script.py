"""`bench/gpu_check.sh` rehearsed on CPU: it reaches every GPU step, each reports "no GPU", and the summary
comes last. A tiny stand-in tarball replaces ComfyUI (the ComfyUI step's GPU modes are skipped without a GPU;
the rehearsal with the real tarball and a ComfyUI server is documented in docs/kernels.md)."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = ("gpu report", "cuda tests", "comfy gpu tests", "bench linear")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs for real (minutes)"),
    pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash"),
]


def _tarball(tmp_path: Path) -> Path:
    root = tmp_path / "src" / "ComfyUI"
    root.mkdir(parents=True)
    (root / "main.py").write_text("raise SystemExit('stand-in: never started without a GPU')\n")
    (root / "comfyui_version.py").write_text('__version__ = "0.0.0-stand-in"\n')
    path = tmp_path / "comfyui-stand-in.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname="ComfyUI")
    return path


def test_rehearsal_reaches_every_gpu_step_and_reports_no_gpu(tmp_path):
    out = tmp_path / "out"
    env = os.environ | {
        "PYTHON": sys.executable,
        "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels"),
        "GPU_CHECK_BUDGET": "400",
        "TMPDIR": str(tmp_path),
    }
    env.pop("TRITON_INTERPRET", None)
    cmd = ["bash", str(REPO / "bench" / "gpu_check.sh"), str(out), str(_tarball(tmp_path))]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = (out / "summary.md").read_text()
    assert result.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # the summary is printed last
    assert "no GPU: torch sees no NVIDIA (CUDA) device" in summary
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| ")}
    assert "| ok |" in rows["setup"], rows
    rows |= {step: line for step in STEPS for name, line in rows.items() if name.startswith(step)}
    for step in STEPS:
        assert "| ok: no GPU |" in rows[step], rows[step]
    assert "No NVIDIA GPU (CUDA) is available" in rows["gpu report"]
    assert "skipped" in rows["cuda tests"] and "passed" not in rows["cuda tests"]
    assert '"gpu": false' in (out / "gpu_report.json").read_text()
    assert "No NVIDIA GPU" in (out / "gpu_report.md").read_text()
    assert "No CUDA device" in (out / "bench_linear.md").read_text()
    assert "0.0.0-stand-in" in (out / "setup.log").read_text()
    assert not list(tmp_path.glob("wan_nvfp4_gpu_check.*")), "the work folder must be removed"


def test_usage_error_without_arguments():
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert (
        result.returncode == 2 and "usage: bash bench/gpu_check.sh OUT_DIR COMFYUI_TARBALL" in result.stderr
    )
