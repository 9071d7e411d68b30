"""The linear benchmark runs end to end on CPU (tiny shapes) and exits cleanly without CUDA."""

import subprocess
import sys

import pytest
import torch

from wan_nvfp4.bench import linear as bench
from wan_nvfp4.bench.timing import render_table


def test_cpu_smoke_prints_one_table_per_shape_and_format(capsys):
    assert bench.main(["--device", "cpu", "--quick", "--fp8", "--shapes", "96x64,160x32", "--m", "1,5"]) == 0
    out = capsys.readouterr().out
    assert out.count("NVFP4 custom: N=96 K=64") == 1 and out.count("FP8 custom: N=160 K=32") == 1
    assert "n/a: triton fused: Triton kernels need an NVIDIA GPU" in out
    assert "relative error vs the exact reference at M=5" in out
    assert "NVFP4 -> bf16 dequant" in out
    # the Blackwell native FP4 (W4A4) column is declared, and says why it cannot run here
    assert "Blackwell native FP4 GEMM (W4A4): not available on this machine (device cpu" in out
    assert bench.native_fp4.NO_MEASUREMENT in out
    if "comfy-kitchen (eager)" in out:
        assert "n/a: native FP4 W4A4 (ComfyUI): device cpu not in" in out
    if "comfy-kitchen (eager)" in out:  # the FP8 baseline says it is not what ComfyUI runs on sm_89+
        assert out.count(bench.FP8_BASELINE_NOTE) == out.count("FP8 custom:") == 2
    # every table row has one cell per header column
    for line in out.splitlines():
        if line.startswith(("1 ", "5 ")):
            assert len(line.split()) >= 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_without_cuda_it_says_so_and_exits_zero():
    result = subprocess.run(
        [sys.executable, "-m", "wan_nvfp4.bench.linear"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "No CUDA device" in result.stdout and "--device cpu --quick" in result.stdout
    assert "Blackwell was not available" in result.stdout


def test_render_table_markdown_and_text():
    md = render_table(["M", "t"], [["1", "0.5"], ["16", "0.25"]], markdown=True)
    assert md.splitlines() == ["| M | t |", "|---|---|", "| 1 | 0.5 |", "| 16 | 0.25 |"]
    text = render_table(["M", "t"], [["1", "0.5"]], markdown=False)
    assert text.splitlines() == ["M    t", "-  ---", "1  0.5"]


def test_crossover_says_why_when_a_triton_path_cannot_run():
    """On a GPU without Triton or below sm_80 (no fused path) `--crossover` reports n/a instead of raising."""
    w = bench.quantize_nvfp4(torch.randn(64, 64))
    args = bench.parse_args(["--device", "cpu", "--quick"])
    text = bench.bench_crossover([(bench.Shape("tiny", 64, 64), w)], torch.device("cpu"), args, "nvfp4")
    assert (
        text.startswith("NVFP4 fused / dequant+cuBLAS") and "n/a, triton-fused: Triton kernels need" in text
    )


def test_native_fp4_column_weight_is_what_comfyui_reads():
    """The native column's weight: our NVFP4 weight of any convention, converted once; comfy-kitchen reads it
    as the same values (the GEMM itself needs Blackwell; on other machines the column is n/a)."""
    ck = pytest.importorskip("comfy_kitchen")
    from wan_nvfp4.kernels import LINEAR, LOW_FIRST, dequantize_nvfp4

    w = bench.quantize_nvfp4(torch.randn(80, 64), nibble_order=LOW_FIRST, scale_layout=LINEAR)
    qt = bench.native_fp4.prepare(w, torch.float32)
    with ck.use_backend("eager"):
        values = qt.dequantize()
    assert torch.equal(values, dequantize_nvfp4(w, torch.float32, scale_first=True))
    assert bench.native_fp4.unavailable(torch.device("cpu")).startswith("device cpu")
