"""CI's no-skip rule (tests/conftest.py): in a ComfyUI pass only a `cuda` test may skip; checked by running
pytest on a small test file with this conftest, with and without `WAN_NVFP4_CI_NO_SKIP`."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASES = """
import pytest

@pytest.mark.comfyui
def test_comfy_skips():
    pytest.skip("some optional thing is missing")

@pytest.mark.browser
@pytest.mark.skipif(True, reason="no chromium")
def test_browser_skips():
    pass

@pytest.mark.comfyui
@pytest.mark.cuda
def test_comfy_needs_cuda():
    pass

def test_plain_skip():
    pytest.skip("not guarded")

@pytest.mark.comfyui
@pytest.mark.xfail(strict=True, reason="known upstream bug")
def test_comfy_xfail():
    raise RuntimeError("still broken")

@pytest.mark.comfyui
def test_comfy_passes():
    pass
"""


def _run(tmp_path: Path, no_skip: bool) -> dict[str, str]:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k not in ("WAN_NVFP4_CI_NO_SKIP", "PYTEST_ADDOPTS")}
    env["COMFYUI_PATH"] = str(tmp_path)  # set, as in a ComfyUI pass (the cases never import it)
    if no_skip:
        env["WAN_NVFP4_CI_NO_SKIP"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-rA",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    outcomes = dict(re.findall(r"::(test_\w+) (PASSED|FAILED|SKIPPED|XFAIL|ERROR)", proc.stdout))
    return outcomes | {"returncode": str(proc.returncode), "stdout": proc.stdout}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the `cuda` case runs on a GPU machine")
def test_ci_turns_guarded_skips_into_failures(tmp_path):
    got = _run(tmp_path, no_skip=True)
    assert got["test_comfy_skips"] == "FAILED", got["stdout"]
    assert got["test_browser_skips"] == "ERROR", got["stdout"]  # a skip at setup (skipif) fails as an error
    assert "some optional thing is missing" in got["stdout"]
    assert got["test_comfy_needs_cuda"] == "SKIPPED", got["stdout"]
    assert got["test_plain_skip"] == "SKIPPED", got["stdout"]
    assert got["test_comfy_xfail"] == "XFAIL", got["stdout"]
    assert got["test_comfy_passes"] == "PASSED", got["stdout"]
    assert got["returncode"] == "1"


def test_without_ci_skips_stay_skips(tmp_path):
    got = _run(tmp_path, no_skip=False)
    assert got["test_comfy_skips"] == "SKIPPED", got["stdout"]
    assert got["test_browser_skips"] == "SKIPPED", got["stdout"]
    assert got["returncode"] == "0", got["stdout"]
