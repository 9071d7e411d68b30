"""The Triton kernels compile for real NVIDIA GPUs, checked without one.

Triton's compiler and the ptxas bundled in its wheel build cubins for sm_75..sm_120 on any machine. The
signature mimics a typical WAN call after Triton's JIT specialisation (unit inner strides become the
constant 1, other ints and pointers divisible by 16). Checked: every shipped autotune config compiles for
sm_90 without register spills and within shared memory; the small-M buckets keep configs that fit the
99 KB of sm_89 / sm_120; every kernel and constexpr variant compiles for sm_80, sm_89, sm_90, sm_100 and
sm_120 (dequant also sm_75). The PTX itself: the fused dot is a bf16/fp16 tensor-core MMA with fp32
accumulation (mma.sync, wgmma on sm_90 for BLOCK_M >= 64), never TF32; no flush-to-zero anywhere (the decoders
produce fp16 subnormals); outputs are rounded to nearest even. Timing needs a GPU (bench/linear.py).
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


def compile_kernel(kernel, arch: int, pointers: dict, unit_strides: tuple, constexprs: dict, config):
    """Compile `kernel` (an autotuned JIT function) for sm_<arch>, specialised like a typical WAN call."""
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
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def build(kernel, arch: int, pointers: dict, unit_strides: tuple, constexprs: dict, config) -> Usage:
    """Compile `kernel` for sm_<arch> and read ptxas' resource usage."""
    compiled = compile_kernel(kernel, arch, pointers, unit_strides, constexprs, config)
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


# What the interpreter cannot show: the instructions a real GPU runs.
MMA = re.compile(r"\b(?:wgmma\.mma_async|mma\.sync)\.[\w.]+")
HALF_PTX = {"*bf16": "bf16", "*fp16": "f16"}


def _bucket_configs(configs) -> list:
    """The first config of each BLOCK_M bucket (16/32: mma.sync, 64/128 with 8 warps: wgmma on sm_90)."""
    firsts = {}
    for c in configs:
        firsts.setdefault(c.kwargs["BLOCK_M"], c)
    return list(firsts.values())


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("half", ["*bf16", "*fp16"])
@pytest.mark.parametrize("name", ["nvfp4_fused", "fp8_fused"])
def test_fused_dot_is_half_precision_mma_with_fp32_accumulation(name, half, arch):
    """The fused dot must run on bf16/fp16 operands (exact code x scale) with fp32 accumulation: never TF32
    (an fp32 `tl.dot` on a GPU is TF32 by default, 10-bit mantissa) and never the interpreter's fp32 dot."""
    kernel, pointers, units, switches, configs = _kernels()[name]
    halves = {k: half for k, v in pointers.items() if v == "*bf16"}
    for config in _bucket_configs(configs):
        ptx = compile_kernel(kernel, arch, {**pointers, **halves}, units, switches, config).asm["ptx"]
        mmas = set(MMA.findall(ptx))
        ab = HALF_PTX[half]
        assert mmas, (config, "no tensor-core instruction")
        assert all(f".f32.{ab}.{ab}" in m or f".{ab}.{ab}.f32" in m for m in mmas), (config, mmas)
        assert "tf32" not in ptx, config
        if arch == 90 and config.kwargs["BLOCK_M"] >= 64:
            assert all(m.startswith("wgmma") for m in mmas), (config, mmas)


@pytest.mark.parametrize("half", ["*bf16", "*fp16"])
@pytest.mark.parametrize("name", ["nvfp4_dequant", "fp8_dequant", "nvfp4_fused", "fp8_fused"])
def test_decode_keeps_subnormals_and_outputs_round_to_nearest_even(name, half):
    """The bit-move decoders make fp16 subnormals (E2M1 +-0.5 is 2^-15 as an fp16 pattern, e4m3/e5m2
    subnormals too): a flush-to-zero conversion would silently zero them. Outputs must round to nearest even
    (`cvt.rn`), which is what makes the dequant bit-exact against torch's `.to(dtype)`."""
    kernel, pointers, units, switches, configs = _kernels()[name]
    halves = {k: half for k, v in pointers.items() if v == "*bf16"}
    ptx = compile_kernel(kernel, 90, {**pointers, **halves}, units, switches, configs[0]).asm["ptx"]
    assert "cvt.f32.f16" in ptx  # the decode path
    assert ".ftz" not in ptx
    to_half = re.findall(r"\bcvt\.[\w.]*" + HALF_PTX[half] + r"(?:x2)?\.f32\b", ptx)
    assert to_half and all(c.startswith("cvt.rn.") for c in to_half), to_half
