"""`wan-nvfp4 inspect`: text and JSON output, overrides, exit codes (0 usable, 1 not usable or unreadable)."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.tiny import fixtures as F
from wan_nvfp4.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    return F.write_fixtures(folder, names=["user_replica", "modelopt_nvfp4_stripped", "kijai_fp8"])


def test_json_output_for_scripts(files, capsys):
    assert main(["inspect", str(files["user_replica"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["variant"] == "wan2.2-ti2v-5b"
    q = data["layers"]["blocks.0.self_attn.q"]
    assert (q["format"], q["nibble_order"], q["scale_layout"], q["assumed"]) == (
        "nvfp4",
        "high_first",
        "swizzled",
        True,
    )
    assert data["verdicts"]["comfyui"]["outcome"] == "refuses_size_mismatch"


def test_overrides_reach_the_report(files, capsys):
    path = str(files["modelopt_nvfp4_stripped"])
    assert main(["inspect", path, "--json", "--nibble-order", "low_first", "--scale-layout", "linear"]) == 0
    q = json.loads(capsys.readouterr().out)["layers"]["blocks.0.ffn.0"]
    assert (q["nibble_order"], q["scale_layout"], q["assumed"]) == ("low_first", "linear", False)
    assert "caller override" in q["evidence"]


def test_text_report_and_console_entry_point(files):
    before = hashlib.sha256(files["kijai_fp8"].read_bytes()).hexdigest()
    proc = subprocess.run(
        [sys.executable, "-m", "wan_nvfp4", "inspect", str(files["kijai_fp8"])],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Provenance: legacy ComfyUI scaled_fp8 marker" in proc.stdout
    assert "fp8_scaled per-tensor: 21 layer(s)" in proc.stdout
    assert "vanilla ComfyUI 0.29: loads natively" in proc.stdout
    assert hashlib.sha256(files["kijai_fp8"].read_bytes()).hexdigest() == before


def test_unusable_file_exits_1(tmp_path, capsys):
    fx = F.FIXTURES["comfy_nvfp4"]()
    tensors = dict(fx.tensors)
    tensors.pop("blocks.1.ffn.2.weight_scale_2")
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path), metadata=fx.metadata)
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"ERROR: {path}: layer blocks.1.ffn.2: missing the second-level scale" in out


def test_unreadable_file_exits_2(tmp_path, capsys):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    assert main(["inspect", str(path)]) == 1
    assert f"error: {path}: file is too short to be safetensors" in capsys.readouterr().err
    assert main(["inspect", str(path), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 1 and data["readable"] is False and "too short" in data["error"]


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.safetensors")]) == 1
    assert "cannot read file" in capsys.readouterr().err


def test_non_wan_file_exits_1(tmp_path, capsys):
    path = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, str(path))
    assert main(["inspect", str(path)]) == 1
    assert "not a WAN diffusion model" in capsys.readouterr().out


def test_reference_decision_is_recorded_as_evidence(files, tmp_path, capsys):
    reference = F.write_fixture("bf16", tmp_path)
    path = str(files["modelopt_nvfp4_stripped"])
    assert main(["inspect", path, "--json", "--reference", str(reference)]) == 0
    q = json.loads(capsys.readouterr().out)["layers"]["blocks.0.ffn.0"]
    assert (q["nibble_order"], q["scale_layout"], q["assumed"]) == ("low_first", "linear", False)
    assert f"decided by comparison with the reference {reference}" in q["evidence"]
