"""`wan-nvfp4 gpu` on CPU: the environment part and a clean exit without a GPU, and the whole report's code
(self-check rows, benchmark, dequant bandwidth) as a smoke run on CPU with `--device cpu`."""

import json
import subprocess
import sys

import pytest
import torch

from wan_nvfp4.bench import gpu_report
from wan_nvfp4.cli import main

ENV_KEYS = ("torch", "cuda (torch build)", "triton", "comfyui", "comfy-kitchen", "comfy-aimdo")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without a GPU")
def test_without_a_gpu_it_reports_the_environment_and_exits_zero():
    cmd = [sys.executable, "-m", "wan_nvfp4", "gpu"]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "No NVIDIA GPU (CUDA) is available" in text.stdout
    assert f"| torch | {torch.__version__} |" in text.stdout and "Kernel self-check" not in text.stdout
    data = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=120)
    assert data.returncode == 0
    report = json.loads(data.stdout)
    assert report["gpu"] is False and "No NVIDIA GPU" in report["no_gpu"]
    assert all(key in report["environment"] for key in ENV_KEYS)
    assert "gpu" not in report["environment"] and "selfcheck" not in report


def test_cpu_smoke_run_has_every_section(capsys):
    assert main(["gpu", "--device", "cpu", "--shapes", "96x64,48x32", "--m", "1,5"]) == 0
    out = capsys.readouterr().out
    for title in (
        "## WAN NVFP4 GPU report",
        "### Kernel self-check",
        "### NVFP4 linear",
        "### NVFP4 -> bf16",
    ):
        assert title in out
    assert "| custom | 96x64 | 5 |" in out and "| 48x32 |" in out
    assert main(["gpu", "--device", "cpu", "--shapes", "96x64", "--m", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["n"], r["k"], r["m"], r["ours_path"]) for r in report["benchmark"]] == [(96, 64, 3, "torch")]
    assert all(r[k] > 0 for r in report["benchmark"] for k in ("bf16_ms", "ours_ms", "torch_ms"))
    # every path x variant x dtype has a row; none can run on a CPU, and each says why
    assert len(report["selfcheck"]) == 2 * len(gpu_report.selfcheck.ALL_VARIANTS) * 2
    assert {r["status"] for r in report["selfcheck"]} == {"n/a"}
    assert all("NVIDIA GPU" in r["detail"] for r in report["selfcheck"])
    assert report["dequant"][0]["NxK"] == "96x64" and report["dequant"][0]["triton_ms"] == "n/a"


def test_comfyui_version_is_read_not_imported(tmp_path, monkeypatch):
    (tmp_path / "comfyui_version.py").write_text('raise SystemExit("imported")\n__version__ = "9.8.7"\n')
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    assert gpu_report.comfyui_version() == f"9.8.7 ({tmp_path})"
    assert "comfyui_version" not in sys.modules


def test_package_versions_come_from_the_installed_metadata():
    pytest.importorskip("comfy_kitchen")
    from importlib.metadata import distribution

    assert gpu_report.package_version("comfy-kitchen") == distribution("comfy_kitchen").version
    assert gpu_report.package_version("no-such-package-wan-nvfp4") == "not installed"
