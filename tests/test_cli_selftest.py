"""`wan-nvfp4 selftest`: every convention end to end on the embedded tiny model, and the FILE mode."""

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.tiny import fixtures as F
from wan_nvfp4.checkpoint.tiny.selftest import ERROR_BOUNDS, WRONG_ORDER_MIN, run_selftest
from wan_nvfp4.cli import main


@pytest.fixture(scope="module")
def result():
    return run_selftest()


def test_every_convention_passes(result):
    assert {r.name for r in result.results} == set(F.FIXTURES)
    failed = [(r.name, r.inspect_notes, r.errors) for r in result.results if not r.passed]
    assert not failed
    assert result.passed


def test_errors_are_real_measurements(result):
    by_name = {r.name: r for r in result.results}
    # bf16 reads back exactly (only bf16 output rounding); nvfp4 is visibly lossy; flipped nibbles break it
    assert 0 < by_name["bf16"].errors["float"] < ERROR_BOUNDS["float"]
    nvfp4 = by_name["comfy_nvfp4"].errors["nvfp4"]
    assert 0.02 < nvfp4 < ERROR_BOUNDS["nvfp4"]
    assert by_name["comfy_nvfp4"].wrong_order_error > WRONG_ORDER_MIN
    fp8 = by_name["comfy_fp8"].errors["fp8_scaled"]
    assert 0.005 < fp8 < nvfp4
    # the same model in every nvfp4 convention gives the same error: conventions are lossless containers
    same = {
        round(by_name[n].errors["nvfp4"], 6)
        for n in (
            "comfy_nvfp4",
            "modelopt_nvfp4",
            "lightx2v_nvfp4",
            "modelopt_comfy_single_file",
            "user_replica",
        )
    }
    assert len(same) == 1


def test_selftest_command_prints_a_table(capsys):
    assert main(["selftest", "--variant", "wan2.1-t2v-14b"]) == 0
    out = capsys.readouterr().out
    assert "tiny wan2.1-t2v-14b" in out and "linear entry point paths that ran:" in out
    assert "user_replica" in out and "selftest PASSED" in out
    assert out.count("PASS") >= len(F.FIXTURES)


def test_file_mode_on_a_good_file(tmp_path, capsys):
    path = F.write_fixture("lightx2v_nvfp4", tmp_path)
    assert main(["selftest", str(path)]) == 0
    out = capsys.readouterr().out
    assert "26 of 26 layers OK" in out and "check PASSED" in out


def test_file_mode_on_a_broken_file(tmp_path, capsys):
    fx = F.FIXTURES["comfy_fp8"]()
    tensors = dict(fx.tensors)
    tensors["blocks.0.ffn.0.weight"] = torch.full((512, 256), float("nan")).to(torch.float8_e4m3fn)
    path = tmp_path / "nan_weights.safetensors"
    save_file(tensors, str(path), metadata=fx.metadata)
    assert main(["selftest", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL blocks.0.ffn.0 (fp8_scaled):" in out and "non-finite weight values" in out


def test_file_mode_on_an_unreadable_file(tmp_path, capsys):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"PK\x03\x04junk")
    assert main(["selftest", str(path)]) == 1
    assert "torch.save zip archive" in capsys.readouterr().err
