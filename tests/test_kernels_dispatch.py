"""Path choice from declared constraints, forced-path errors, KernelOptions, the once-per-model path log."""

import dataclasses
import logging

import pytest
import torch

from wan_nvfp4.kernels import capabilities, dispatch, selfcheck
from wan_nvfp4.kernels.capabilities import DeviceCaps
from wan_nvfp4.kernels.dispatch import (
    DEQUANTIZE,
    FLOAT,
    FP8,
    FUSED_MAX_M,
    LINEAR,
    NVFP4,
    PathUnavailableError,
    Request,
    check_path,
    choose_path,
)
from wan_nvfp4.kernels.options import KernelOptions, PathLog

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
H100 = DeviceCaps("cuda", (9, 0), "H100", triton=True, interpreter=False)
ADA = DeviceCaps("cuda", (8, 9), "RTX 4090", triton=True, interpreter=False)
A100 = DeviceCaps("cuda", (8, 0), "A100", triton=True, interpreter=False)
TURING = DeviceCaps("cuda", (7, 5), "T4", triton=True, interpreter=False)
B200 = DeviceCaps("cuda", (10, 0), "B200", triton=True, interpreter=False)
NO_TRITON = DeviceCaps("cuda", (9, 0), "H100", triton=False, interpreter=False)
ROCM = DeviceCaps("rocm", None, "MI300X", triton=True, interpreter=False)
CPU = DeviceCaps("cpu", None, "cpu", triton=True, interpreter=False)
CPU_INTERP = DeviceCaps("cpu", None, "cpu", triton=True, interpreter=True)
MPS = DeviceCaps("mps", None, "mps", triton=False, interpreter=False)


def req(caps, fmt=NVFP4, m=1, dtype=torch.bfloat16, weight_dtype=None, entry=LINEAR, n=5120, k=5120):
    if fmt == FP8 and weight_dtype is None:
        weight_dtype = E4M3
    return Request(entry, fmt, caps, dtype, m if entry == LINEAR else None, n, k, weight_dtype)


NV_SMALL = FUSED_MAX_M[NVFP4]
FP8_SMALL = FUSED_MAX_M[FP8]

AUTO_CASES = [
    # (request, fp8_fast, expected)
    (req(H100, m=1), False, "triton-fused"),
    (req(H100, m=NV_SMALL), False, "triton-fused"),
    (req(H100, m=NV_SMALL + 1), False, "triton-dequant"),
    (req(H100, m=32760), False, "triton-dequant"),
    (req(H100, FP8, m=FP8_SMALL), False, "triton-fused"),
    (req(H100, FP8, m=FP8_SMALL + 1), False, "triton-dequant"),
    (req(H100, FP8, m=4096), True, "fp8-scaled-mm"),
    (req(H100, FP8, m=4096, weight_dtype=E5M2), True, "triton-dequant"),  # scaled-mm wants e4m3 weights
    (req(H100, FP8, m=4096, dtype=torch.float16), True, "triton-dequant"),  # rowwise scaling is bf16-only
    (req(H100, FP8, m=4096, n=5120, k=5128), True, "triton-dequant"),  # K not a multiple of 16
    (req(ADA, FP8, m=4096), True, "fp8-scaled-mm"),
    (req(A100, FP8, m=4096), True, "triton-dequant"),  # no FP8 tensor cores
    (req(B200, FP8, m=4096), True, "triton-dequant"),  # rowwise scaled-mm not declared for Blackwell
    (req(H100, m=4096), True, "triton-dequant"),  # fp8_fast never applies to NVFP4
    (req(H100, m=1, dtype=torch.float32), False, "triton-dequant"),  # fused needs half activations
    (req(TURING, m=1), False, "triton-dequant"),  # fused needs sm_80
    (req(NO_TRITON, m=1), False, "torch"),
    (req(ROCM, m=1), False, "torch"),
    (req(CPU, m=1), False, "torch"),
    (req(CPU_INTERP, m=1), False, "torch"),  # the interpreter only runs forced paths
    (req(MPS, FP8, m=1), True, "torch"),
    (req(H100, FLOAT, m=1), False, "torch"),
    (req(H100, entry=DEQUANTIZE), False, "triton-dequant"),
    (req(CPU, entry=DEQUANTIZE), False, "torch"),
]


@pytest.mark.parametrize(("request_", "fp8_fast", "expected"), AUTO_CASES)
def test_auto_choice(request_, fp8_fast, expected):
    assert choose_path(request_, fp8_fast=fp8_fast) == expected


def test_fused_threshold_override():
    assert choose_path(req(H100, m=1), fused_max_m=0) == "triton-dequant"
    assert choose_path(req(H100, m=4096), fused_max_m=4096) == "triton-fused"


FORCED_FAILURES = [
    ("triton-fused", req(CPU), "NVIDIA GPU"),
    ("triton-dequant", req(NO_TRITON), "Triton is not installed"),
    ("triton-fused", req(TURING), "compute capability (7, 5) below (8, 0)"),
    ("triton-fused", req(H100, entry=DEQUANTIZE), "entry point dequantize"),
    ("triton-fused", req(H100, FLOAT), "weight format float"),
    ("fp8-scaled-mm", req(H100), "weight format nvfp4"),
    ("fp8-scaled-mm", req(A100, FP8), "compute capability (8, 0) below (8, 9)"),
    ("fp8-scaled-mm", req(B200, FP8), "above (9, 9)"),
    ("fp8-scaled-mm", req(H100, FP8, weight_dtype=E5M2), "weight dtype torch.float8_e5m2"),
    ("fp8-scaled-mm", req(ROCM, FP8), "device rocm"),
]


@pytest.mark.parametrize(("path", "request_", "needle"), FORCED_FAILURES)
def test_forced_path_that_cannot_run_says_why(path, request_, needle):
    with pytest.raises(PathUnavailableError, match="cannot run") as info:
        check_path(path, request_)
    assert needle in str(info.value)


def test_forced_paths_that_can_run():
    assert check_path("triton-fused", req(CPU_INTERP)) == "triton-fused"  # interpreter, forced
    assert check_path("triton-dequant", req(H100, m=32760)) == "triton-dequant"
    assert check_path("triton-fused", req(H100, m=32760)) == "triton-fused"  # regime is auto's business
    assert check_path("reference", req(MPS)) == "reference"
    assert check_path("fp8-scaled-mm", req(H100, FP8)) == "fp8-scaled-mm"


def test_unknown_path_is_a_value_error():
    with pytest.raises(ValueError, match="unknown kernel path 'cuda'"):
        check_path("cuda", req(H100))


@pytest.mark.parametrize("caps", [H100, ADA, A100, TURING, B200, NO_TRITON, ROCM, CPU, CPU_INTERP, MPS])
@pytest.mark.parametrize("fmt", [NVFP4, FP8, FLOAT])
def test_auto_always_finds_a_path(caps, fmt):
    for m in (1, 64, 100000):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            assert choose_path(req(caps, fmt, m=m, dtype=dtype), fp8_fast=True) in dispatch.PATHS


def test_device_caps_on_cpu_follow_the_interpreter_flag(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    caps = capabilities.device_caps("cpu")
    assert (caps.kind, caps.capability, caps.interpreter) == ("cpu", None, False)
    assert not caps.triton_runs_here and not caps.triton_native
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    caps = capabilities.device_caps(torch.device("cpu"))
    assert caps.interpreter and caps.triton_runs_here == caps.triton and not caps.triton_native


def test_gpu_probe_is_a_constant_under_compile(monkeypatch):
    """`auto` may be resolved while torch.compile traces: the CUDA queries must not enter the graph."""

    def name_outside_the_graph(index):
        torch._dynamo.graph_break()  # fails fullgraph compilation if traced; a no-op when run eagerly
        return "NVIDIA H200"

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", name_outside_the_graph)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    monkeypatch.setattr(torch.version, "hip", None)

    def f(x):
        kind, capability, _ = capabilities._gpu_facts(None)
        return x * 2 if kind == "cuda" and capability >= (9, 0) else x

    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True)(torch.ones(3)), torch.full((3,), 2.0))


def test_kernel_options_validate_and_are_per_instance():
    with pytest.raises(ValueError, match="kernel path"):
        KernelOptions(path="fast")
    with pytest.raises(ValueError, match="compute_dtype"):
        KernelOptions(compute_dtype=torch.int8)
    a, b = KernelOptions(path="torch"), KernelOptions(compute_dtype=torch.float16, fp8_fast=True)
    assert (a.path, a.compute_dtype, a.fp8_fast) == ("torch", None, False)
    assert (b.path, b.compute_dtype, b.fp8_fast) == ("auto", torch.float16, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.path = "reference"


@pytest.fixture
def no_self_checks(monkeypatch):
    """PathLog lines without the `; self-check: ...` part, even when a GPU test ran checks in this process."""
    monkeypatch.setattr(selfcheck, "summary", lambda: "")
    monkeypatch.setattr(selfcheck, "generation", lambda: 0)


@pytest.mark.usefixtures("no_self_checks")
def test_path_log_summarises_once_per_model(caplog):
    logger = logging.getLogger("test.pathlog")
    log = PathLog("wan-high", expected_layers=3, logger=logger)
    with caplog.at_level(logging.INFO, logger="test.pathlog"):
        for _ in range(5):  # calls repeat every step; nothing is logged until every layer was seen
            log.record("blocks.0.ffn.0", NVFP4, "triton-dequant")
            log.record("blocks.0.ffn.2", NVFP4, "triton-dequant")
        assert caplog.records == []
        for _ in range(5):
            log.record("head.head", FLOAT, "torch")
            log.record("blocks.0.ffn.0", NVFP4, "triton-dequant")
        assert [r.getMessage() for r in caplog.records] == [
            "kernel paths wan-high: float: 1 layer (torch), nvfp4: 2 layers (triton-dequant)"
        ]
        log.record("blocks.0.ffn.2", NVFP4, "triton-fused")  # a new regime: one more line
        log.record("blocks.0.ffn.2", NVFP4, "triton-fused")
    assert len(caplog.records) == 2
    assert log.lines[-1] == (
        "wan-high: float: 1 layer (torch), "
        "nvfp4: 1 layer (triton-dequant), 1 layer (triton-dequant+triton-fused)"
    )


@pytest.mark.usefixtures("no_self_checks")
def test_path_log_flush_reports_partial_runs_once():
    log = PathLog("m", expected_layers=10)
    log.flush()
    assert log.lines == []  # nothing recorded yet
    log.record("a", NVFP4, "torch")
    log.flush()
    log.flush()
    assert log.lines == ["m: nvfp4: 1 layer (torch)"]


@pytest.mark.usefixtures("no_self_checks")
def test_two_path_logs_do_not_share_state():
    a, b = PathLog("a", 1), PathLog("b", 1)
    a.record("x", NVFP4, "torch")
    assert a.lines and not b.lines
