"""The Triton kernels compile for real NVIDIA GPUs, checked without one.

Triton's compiler and the ptxas bundled in its wheel build cubins for sm_75..sm_120 on any machine. The
signature mimics a typical WAN call after Triton's JIT specialisation (unit inner strides become the
constant 1, other ints and pointers divisible by 16). Checked: every shipped autotune config compiles for
sm_90 without register spills and within shared memory; the small-M buckets keep configs that fit the
99 KB of sm_89 / sm_120; every kernel and constexpr variant compiles for sm_80, sm_89, sm_90, sm_100 and
sm_120 (dequant also sm_75). Timing needs a GPU (bench/linear.py); this only proves the code builds.
"""

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from wan_nvfp4.kernels import capabilities

triton = pytest.importorskip("triton")
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BIN / "ptxas").exists(), reason="Triton wheel without bundled ptxas"),
    pytest.mark.skipif(capabilities.interpreter_active(), reason="TRITON_INTERPRET is set"),
]

SMEM_LIMIT = {75: 64 << 10, 80: 163 << 10, 89: 99 << 10, 90: 227 << 10, 100: 227 << 10, 120: 99 << 10}


@dataclass(frozen=True)
class Usage:
    shared: int
    registers: int
    spill_stack: int


def _modules():
    from wan_nvfp4.kernels import triton_dequant, triton_fused

    return triton_dequant, triton_fused


def build(kernel, arch: int, pointers: dict, unit_strides: tuple, constexprs: dict, config) -> Usage:
    """Compile `kernel` (an autotuned JIT function) for sm_<arch> and read ptxas' resource usage."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = kernel.fn
    constants = {**constexprs, **config.kwargs, **dict.fromkeys(unit_strides, 1)}
    signature, attrs = {}, {}
    for i, name in enumerate(jit.arg_names):
        if name in constants:
            signature[name] = "constexpr"
        else:
            signature[name] = pointers.get(name, "i32")
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=jit, signature=signature, constexprs=constants, attrs=attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages, "enable_fp_fusion": True}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run(
            [str(BIN / "cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True, check=True
        ).stdout.decode()
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    return Usage(compiled.metadata.shared, registers, stack)


NVFP4_DEQUANT = (
    {"packed_ptr": "*u8", "scale_ptr": "*u8", "global_scale_ptr": "*fp32", "out_ptr": "*bf16"},
    ("stride_pk",),
)
FP8_DEQUANT = ({"data_ptr": "*u8", "scale_ptr": "*fp32", "out_ptr": "*bf16"}, ("stride_dk",))
NVFP4_FUSED = (
    {
        "x_ptr": "*bf16",
        "packed_ptr": "*u8",
        "scale_ptr": "*u8",
        "global_scale_ptr": "*fp32",
        "bias_ptr": "*bf16",
        "out_ptr": "*bf16",
    },
    ("stride_xk", "stride_pk", "stride_on"),
)
FP8_FUSED = (
    {"x_ptr": "*bf16", "data_ptr": "*u8", "scale_ptr": "*fp32", "bias_ptr": "*bf16", "out_ptr": "*bf16"},
    ("stride_xk", "stride_dk", "stride_on"),
)
NV_SWITCHES = {"HIGH_FIRST": True, "SWIZZLED": True}
FP8_SWITCHES = {"SCALE_MODE": 2, "E5M2": False}
FUSED_SWITCHES = {"HAS_BIAS": True, "DOT_FP32": False}


def _kernels():
    dq, fu = _modules()
    return {
        "nvfp4_dequant": (dq._nvfp4_dequant_kernel, *NVFP4_DEQUANT, NV_SWITCHES, dq.GPU_CONFIGS),
        "fp8_dequant": (dq._fp8_dequant_kernel, *FP8_DEQUANT, FP8_SWITCHES, dq.GPU_CONFIGS),
        "nvfp4_fused": (
            fu._nvfp4_fused_kernel,
            *NVFP4_FUSED,
            {**NV_SWITCHES, **FUSED_SWITCHES},
            fu.GPU_CONFIGS,
        ),
        "fp8_fused": (fu._fp8_fused_kernel, *FP8_FUSED, {**FP8_SWITCHES, **FUSED_SWITCHES}, fu.GPU_CONFIGS),
    }


@pytest.mark.parametrize("name", ["nvfp4_dequant", "fp8_dequant", "nvfp4_fused", "fp8_fused"])
def test_every_shipped_config_builds_for_sm90_without_spills(name):
    kernel, pointers, units, switches, configs = _kernels()[name]
    for config in configs:
        usage = build(kernel, 90, pointers, units, switches, config)
        assert usage.spill_stack == 0, (config, usage)
        assert usage.shared <= SMEM_LIMIT[90], (config, usage)
        if name.endswith("dequant"):
            assert usage.registers <= 96, (config, usage)  # occupancy for a bandwidth-bound kernel


def test_small_m_buckets_fit_99kb_gpus():
    kernel, pointers, units, switches, configs = _kernels()["nvfp4_fused"]
    for bucket in (16, 32, 64):
        fitting = [
            c
            for c in configs
            if c.kwargs["BLOCK_M"] == bucket
            and build(kernel, 89, pointers, units, switches, c).shared <= SMEM_LIMIT[89]
        ]
        assert len(fitting) >= 4, bucket


VARIANTS = [
    ("nvfp4_dequant", {"HIGH_FIRST": False, "SWIZZLED": False}, "*fp16"),
    ("nvfp4_dequant", {"HIGH_FIRST": True, "SWIZZLED": False}, "*fp32"),
    ("fp8_dequant", {"SCALE_MODE": 0, "E5M2": True}, "*fp16"),
    ("fp8_dequant", {"SCALE_MODE": 1, "E5M2": False}, "*fp32"),
    ("nvfp4_fused", {"HIGH_FIRST": False, "SWIZZLED": False, "HAS_BIAS": False}, "*fp16"),
    ("fp8_fused", {"SCALE_MODE": 1, "E5M2": True, "HAS_BIAS": False}, "*fp16"),
]


@pytest.mark.parametrize(("name", "switches", "half"), VARIANTS)
def test_constexpr_variants_and_fp16_build(name, switches, half):
    kernel, pointers, units, base, configs = _kernels()[name]
    halves = {k: half for k, v in pointers.items() if v == "*bf16"}
    usage = build(kernel, 90, {**pointers, **halves}, units, {**base, **switches}, configs[0])
    assert usage.spill_stack == 0


@pytest.mark.parametrize("arch", [75, 80, 89, 100, 120])
def test_kernels_build_for_other_gpus(arch):
    for name, (kernel, pointers, units, switches, configs) in _kernels().items():
        if arch < 80 and name.endswith("fused"):
            continue  # the fused path is declared for sm_80+ only (bf16 tensor cores)
        usage = build(kernel, arch, pointers, units, switches, configs[0])
        assert usage.shared <= SMEM_LIMIT[arch], (name, usage)
