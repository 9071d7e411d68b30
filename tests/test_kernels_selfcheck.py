"""The first-use kernel self-check: faults injected into the Triton kernels end on the exact torch path.

Runs in the Triton-interpreter worker with the CPU made to look like an NVIDIA GPU to the dispatch
(tests/selfcheck_cases.py). Each fault (wrong values, a compile error, a launch error) must disable the Triton
paths with one WARNING per path naming the GPU, its capability, the versions, the path and the error or the
measured difference; the model's output must then equal the torch path's bit for bit.
"""

import subprocess
import sys

import pytest
import torch

from wan_nvfp4.kernels import selfcheck
from wan_nvfp4.tests import kernel_cases as C
from wan_nvfp4.tests.selfcheck_cases import LARGE_M, SMALL_M

pytest.importorskip("triton")
pytestmark = pytest.mark.interpreter

TRITON_PATHS = ("triton-fused", "triton-dequant")
VARIANTS = 4  # the tiny model's weight variants


@pytest.fixture(scope="module")
def interp():
    worker = C.InterpreterWorker()
    yield worker
    worker.close()


def _assert_torch_outputs(run) -> None:
    for m in (SMALL_M, LARGE_M):
        assert run["paths"][m] == ["torch"] * VARIANTS, run["paths"]
        assert torch.equal(run["outputs"][m], run["torch"][m]), f"M={m}: output differs from the torch path"
        assert torch.equal(run["again"][m], run["torch"][m])


def _assert_warning_per_path(run, needle: str) -> None:
    warnings = run["warnings"]
    assert len(warnings) == len(TRITON_PATHS), warnings  # one per path: a failure disables the path
    for path, text in zip(TRITON_PATHS, warnings, strict=True):
        assert f"path {path} for" in text and needle in text, text
        for fact in ("Simulated H100", "sm_90", "driver", "torch " + torch.__version__, "Triton "):
            assert fact in text, (fact, text)
    failed = [r for r in run["results"] if not r["passed"]]
    assert [r["path"] for r in failed] == list(TRITON_PATHS)
    assert len(run["results"]) == run["checks_after_first_calls"] == len(TRITON_PATHS)  # never repeated
    assert any("self-check: triton-fused FAILED on cpu" in line for line in run["path_lines"]), run[
        "path_lines"
    ]


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("wrong_values", "values off the exact"),
        ("compile_error", "CompilationError: def _kernel"),
        ("launch_error", "RuntimeError: Triton Error [CUDA]: an illegal memory access"),
    ],
)
def test_fault_ends_on_the_torch_path_with_one_warning_per_path(interp, fault, needle):
    run = interp("selfcheck_scenario", fault)
    _assert_warning_per_path(run, needle)
    _assert_torch_outputs(run)


def test_fault_under_torch_compile_is_checked_eagerly_and_held_as_a_constant(interp):
    """The first call is traced: dynamo evaluates the check for real, outside the graph (fullgraph)."""
    run = interp("selfcheck_scenario", "wrong_values", compiled=True)
    _assert_warning_per_path(run, "values off the exact")
    _assert_torch_outputs(run)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_healthy_kernels_pass_once_and_run(interp, compiled):
    run = interp("selfcheck_scenario", None, compiled=compiled)
    assert run["warnings"] == []
    assert all(r["passed"] for r in run["results"]), run["results"]
    # every variant checked once per path it needed: fused at small M, dequant at large M
    assert sorted((r["path"], r["variant"]) for r in run["results"]) == sorted(
        {(p, v) for p in TRITON_PATHS for v in {r["variant"] for r in run["results"]}}
    )
    assert len({r["variant"] for r in run["results"]}) == VARIANTS
    assert len(run["results"]) == run["checks_after_first_calls"] == 2 * VARIANTS
    assert run["paths"][SMALL_M] == ["triton-fused"] * VARIANTS
    assert run["paths"][LARGE_M] == ["triton-dequant"] * VARIANTS
    for m in (SMALL_M, LARGE_M):  # Triton vs torch: same maths, rounded differently (bf16, 4 layers)
        assert C.relative_error(run["outputs"][m], run["torch"][m]) < 2e-2
    line = run["path_lines"][-1]
    assert "self-check: triton-fused ok on cpu (4 variants), triton-dequant ok on cpu (4 variants)" in line
    print(f"self-check time (interpreter): {sum(r['seconds'] for r in run['results']):.2f} s")


def test_only_the_failing_path_is_disabled(interp):
    run = interp("selfcheck_scenario", "fused_launch_error")
    assert len(run["warnings"]) == 1 and "path triton-fused for" in run["warnings"][0]
    assert run["paths"][SMALL_M] == run["paths"][LARGE_M] == ["triton-dequant"] * VARIANTS
    for m in (SMALL_M, LARGE_M):
        assert C.relative_error(run["outputs"][m], run["torch"][m]) < 2e-2


def test_check_all_rows_as_the_gpu_report_shows_them(interp):
    rows = interp("selfcheck_check_all", "fused_launch_error")
    assert len(rows) == 2 * len(selfcheck.ALL_VARIANTS)
    fused = [r for r in rows if r["path"] == "triton-fused"]
    assert fused[0]["status"] == "FAILED" and "illegal memory access" in fused[0]["detail"]
    assert {r["status"] for r in fused[1:]} == {"disabled"}
    assert all(r["detail"] == f"after triton-fused {fused[0]['variant']} bfloat16 failed" for r in fused[1:])
    assert {r["status"] for r in rows if r["path"] == "triton-dequant"} == {"passed"}


def test_check_weight_is_not_a_multiple_of_any_tile():
    from wan_nvfp4.kernels.swizzle import TILE_COLS, TILE_ROWS

    for block in (16, 32, 64, 128, 256, 512):
        assert selfcheck.CHECK_N % block and selfcheck.CHECK_K % (2 * block) and selfcheck.CHECK_M % block
    assert selfcheck.CHECK_N % TILE_ROWS and (selfcheck.CHECK_K // 16) % TILE_COLS
    for variant in selfcheck.ALL_VARIANTS:
        w = selfcheck.check_weight(variant)
        assert w.shape == (selfcheck.CHECK_N, selfcheck.CHECK_K) and selfcheck.variant_of(w) == variant


@pytest.mark.parametrize("wrong", ["nibble", "scale"])
def test_the_comparison_catches_a_wrong_kernel(wrong):
    """Negative test of the tolerance itself (torch stand-ins for the kernel output, no Triton needed)."""
    from wan_nvfp4.kernels import torch_paths
    from wan_nvfp4.kernels.packing import swap_nibbles

    w = selfcheck.check_weight(("nvfp4", "high_first", "swizzled"))
    exact = torch_paths.dequantize(w, torch.float32).double()
    bound = selfcheck._ulp(exact.float(), torch.bfloat16).double()
    assert selfcheck._compare(exact.to(torch.bfloat16), exact, bound, "x")[0]  # correct rounding passes
    bad = (
        torch_paths.dequantize(type(w)(**{**w.__dict__, "packed": swap_nibbles(w.packed)}), torch.bfloat16)
        if wrong == "nibble"
        else (exact * 1.01).to(torch.bfloat16)
    )
    passed, detail = selfcheck._compare(bad, exact, bound, "dequantization")
    assert not passed and "values off the exact dequantization" in detail


def test_nothing_runs_at_import():
    code = (
        "import sys; import wan_nvfp4.kernels.ops, wan_nvfp4.kernels.options;"
        "from wan_nvfp4.kernels import selfcheck;"
        "print(len(selfcheck.results()), 'triton' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False"]


def test_path_log_line_shows_checks_that_ran_after_it(monkeypatch):
    """A check run by a later call (the first small-M call) makes the model log its line again, with it."""
    from wan_nvfp4.kernels.options import PathLog

    log = PathLog("m", expected_layers=1)
    log.record("a", "nvfp4", "triton-dequant")
    assert log.lines == ["m: nvfp4: 1 layer (triton-dequant)"]  # no check ran: nothing appended
    log.record("a", "nvfp4", "triton-dequant")
    assert len(log.lines) == 1
    monkeypatch.setattr(selfcheck, "generation", lambda: 1)
    monkeypatch.setattr(selfcheck, "summary", lambda: "triton-fused FAILED on cuda:0 (x): disabled")
    log.record("a", "nvfp4", "triton-dequant")
    log.record("a", "nvfp4", "triton-dequant")
    assert log.lines[1:] == [
        "m: nvfp4: 1 layer (triton-dequant); self-check: triton-fused FAILED on cuda:0 (x): disabled"
    ]
