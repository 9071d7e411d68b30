"""ComfyUI end to end on an NVIDIA GPU: Dynamic VRAM and the legacy ModelPatcher, weights streamed under a
low VRAM budget, and the pack's Triton paths inside ComfyUI (COMFYUI_PATH + CUDA); plus a CPU plumbing
variant of the same code path (COMFYUI_PATH only).

Every mode starts its own ComfyUI server (`comfy_server.py`: temporary base directory, pack symlinked,
test-only nodes, free loopback port, always stopped) and runs the same API graphs: loader -> [stock
`LoraLoaderModelOnly`] -> ModelSamplingSD3 -> KSampler (2 euler steps, cfg 3, fixed seed) -> SaveLatent,
then a report of how the model's weights were held. GPU modes: `--enable-dynamic-vram` and
`--disable-dynamic-vram`, each once more with a VRAM budget no weight fits in: Dynamic VRAM with
`--reserve-vram <the whole card>` (every VBAR fault fails, every weight streams through a cast buffer), the
legacy patcher with `--novram` (every module offloaded; `--reserve-vram` alone would leave the weights where
ComfyUI first put them, on the GPU when it has more free memory than the host). CPU: `--cpu`, and `--cpu`
with `TRITON_INTERPRET=1` in the server's environment: the pack's Triton kernels, forced through the
Advanced loader, run inside ComfyUI on CPU tensors (the same load path, custom ops and kernels as on the GPU;
only compilation and the GPU memory modes are left to the GPU modes). On a GPU where `auto` may take ComfyUI's
native FP4 GEMM (Blackwell, torch CUDA >= 13), the pack graphs force `kernel_path=w4a16`: these tests are for
this pack's W4A16 kernels (the native path is covered by tests/test_comfy_native_fp4.py).

Oracle: the same graph through vanilla `UNETLoader` on a bf16 file made from the fixture by
`comfy_harness.oracle_state_dict` (NVFP4 dequantized in fp32 by comfy-kitchen's eager reference with the
fixture's true conventions, FP8 by hand), never by the pack's kernels.

Tolerances (relative L2 error of the saved 16x2x8x8 latent; measured on CPU, see docs/comfyui.md):
- CPU 1e-2: fp32 compute; the oracle's weights are rounded to bf16 (2^-9 relative). Measured 2.7e-3..3.4e-3.
  ComfyUI computes in fp32 on CPU, and the fused kernel takes bf16/fp16 activations: in the interpreter mode
  the forced-path graphs set the Advanced loader's `compute_dtype` to bf16 and are held to the GPU tolerance.
- GPU 3e-2: both models run bf16 activations. The oracle file holds the weights the Triton dequant produces
  (both round the fp32 dequantized weight to bf16 once), so dequant + cuBLAS matches it almost bit for bit;
  the fused kernel (fp32 accumulation and scale epilogue) rounds differently, <= 1 bf16 ulp (2^-8) per output.
  A whole bf16 forward differs from fp32 by 8e-3 here (measured on CPU), so two bf16 implementations are
  at most ~1.1e-2 apart; 3e-2 leaves room for cuBLAS kernel choice. The bugs the tests look for move the
  latent by far more: LoRA applied twice 0.39, LoRA missing 0.52, wrong nibble order 0.95..1.45 (measured).
- Memory modes against each other: the same 3e-2 (same kernels and bytes, but cast buffers differ in
  alignment, so cuBLAS may pick other kernels).
"""

import functools
import importlib.util
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES
from wan_nvfp4.kernels import HIGH_FIRST, LOW_FIRST
from wan_nvfp4.kernels.native_fp4 import NATIVE_FP4_GEMM, W4A16, FP4GemmFacts, torch_cuda_version

from . import comfy_harness as H
from .comfy_server import (
    LOADER,
    ORACLE_LOADER,
    PACK_LOADER,
    comfy_server,
    kernel_path_lines,
    memory_report,
    prepare_base_directory,
    sampling_graph,
)
from .test_comfy_lora import _lora

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

VARIANT = "wan2.1-t2v-14b"  # 16-channel latent: EmptyHunyuanLatentVideo
GPU_FIXTURES = ("comfy_nvfp4", "modelopt_nvfp4", "lightx2v_nvfp4", "kijai_fp8", "mixed")
LORA_FIXTURES = ("comfy_nvfp4", "mixed")  # mixed: the LoRA hits nvfp4 and fp8 layers
FORCED_PATH_FIXTURE = "mixed"
LORA_FILE = "wan_nvfp4_test_lora.safetensors"
ADVANCED_LOADER = "WanNVFP4LoaderAdvanced"
OTHER_NIBBLE_ORDER = {LOW_FIRST: HIGH_FIRST, HIGH_FIRST: LOW_FIRST}
KERNEL_FORMATS = {"nvfp4": "nvfp4", "fp8_scaled": "fp8", "fp8": "fp8"}  # fixture truth -> path-log format
LORA_PATH = "dequant+lora"  # nodes.linear.LORA_PATH (importing nodes.linear needs ComfyUI in this process)
TRITON_PATHS = ("triton-dequant", "triton-fused")
INTERPRETER_ENV = (("TRITON_INTERPRET", "1"),)

CPU_TOL = 1e-2
GPU_TOL = 3e-2
MIN_LORA_EFFECT = 0.2  # measured 0.52 (LoRA vs none) and 0.39 (once vs twice)
MIN_WRONG_ORDER_ERROR = 0.5  # measured 0.95..1.45


@dataclass(frozen=True)
class Mode:
    """One ComfyUI server configuration and what its runs must show."""

    args: tuple[str, ...]
    fixtures: tuple[str, ...]
    tol: float
    auto_paths: tuple[str, ...]  # kernel paths `auto` may take for quantized layers
    forced_paths: tuple[str, ...]  # paths forced once each through the Advanced loader
    dynamic: bool = False
    low_budget: bool = False  # no weight fits in VRAM: every weight must stream
    reserve_whole_card: bool = False  # add `--reserve-vram <the card's memory in GiB>`
    gpu: bool = True
    env: tuple[tuple[str, str], ...] = ()  # added to the server's environment
    forced_tol: float | None = None  # tolerance of the forced-path graphs when not `tol`
    forced_inputs: tuple[tuple[str, str], ...] = ()  # more Advanced-loader inputs of the forced-path graphs
    pack_inputs: tuple[tuple[str, str], ...] = ()  # set: pack graphs run the Advanced loader with these

    @property
    def interpreted(self) -> bool:
        return dict(self.env).get("TRITON_INTERPRET") == "1"


def _native_fp4_gemm_possible() -> bool:
    """Whether `auto` may hand NVFP4 layers to ComfyUI's FP4 GEMM (W4A4) on this GPU (Blackwell, torch CUDA >=
    13; the ComfyUI-side facts are taken as met). These tests check this pack's W4A16 Triton paths against a
    bf16 oracle at bf16 tolerance, which W4A4 is not held to: there every pack graph forces `w4a16`."""
    if not torch.cuda.is_available():
        return False
    facts = FP4GemmFacts("cuda", torch.cuda.get_device_capability(0), torch_cuda_version(), True, True)
    return NATIVE_FP4_GEMM.why_not(facts) is None


def _gpu_mode(args: tuple[str, ...], fixtures=GPU_FIXTURES, **kw) -> Mode:
    pack_inputs = (("kernel_path", W4A16),) if _native_fp4_gemm_possible() else ()
    return Mode(args, fixtures, GPU_TOL, TRITON_PATHS, TRITON_PATHS, pack_inputs=pack_inputs, **kw)


MODES = {
    "dynamic": _gpu_mode(("--enable-dynamic-vram",), dynamic=True),
    "legacy": _gpu_mode(("--disable-dynamic-vram",)),
    "dynamic-lowvram": _gpu_mode(
        ("--enable-dynamic-vram",), LORA_FIXTURES, dynamic=True, low_budget=True, reserve_whole_card=True
    ),
    "legacy-lowvram": _gpu_mode(("--disable-dynamic-vram", "--novram"), LORA_FIXTURES, low_budget=True),
    "cpu": Mode(("--cpu",), ("mixed",), CPU_TOL, ("torch",), ("reference",), gpu=False),
    "cpu-triton-interpreter": Mode(
        ("--cpu",),
        ("mixed",),
        CPU_TOL,
        ("torch",),
        TRITON_PATHS,
        gpu=False,
        env=INTERPRETER_ENV,
        forced_tol=GPU_TOL,
        forced_inputs=(("compute_dtype", "bf16"),),
    ),
}
SAME_RESULTS = (("legacy", "dynamic"), ("dynamic-lowvram", "dynamic"), ("legacy-lowvram", "legacy"))


@functools.cache
def _fixture(name: str):
    return FIXTURES[name](variant=VARIANT)


def _has_nvfp4(name: str) -> bool:
    return any(t.format == "nvfp4" for t in _fixture(name).layers.values())


def _marks(spec: Mode) -> list:
    if spec.gpu:
        return [pytest.mark.cuda]
    if spec.interpreted:
        no_triton = importlib.util.find_spec("triton") is None
        return [pytest.mark.interpreter, pytest.mark.skipif(no_triton, reason="Triton is not installed")]
    return []


def _param(mode: str, *values):
    marks = _marks(MODES[mode])
    return pytest.param(mode, *values, marks=marks, id="-".join((mode, *values)))


def _cases(keep=lambda spec, fixture: True) -> list:
    return [_param(m, f) for m, spec in MODES.items() for f in spec.fixtures if keep(spec, f)]


MODE_CASES = [_param(m) for m in MODES]
FIXTURE_CASES = _cases()
LORA_CASES = _cases(lambda spec, f: f in LORA_FIXTURES)
NIBBLE_CASES = _cases(lambda spec, f: _has_nvfp4(f))
FORCED_CASES = [_param(m, p) for m, spec in MODES.items() for p in spec.forced_paths]


# ---- graphs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """One API graph of a run; results are keyed `<fixture>/<role>`."""

    role: str
    loader: str
    seed: int = 1
    lora_strength: float | None = None
    loader_inputs: dict = field(default_factory=dict)


def _oracle_name(filename: str) -> str:
    return f"oracle-bf16_{filename}"


def _wrong_nibble_order(fx) -> str:
    return OTHER_NIBBLE_ORDER[next(t.nibble_order for t in fx.layers.values() if t.format == "nvfp4")]


def _forced_role(path: str) -> str:
    return f"pack {path}"


def _graphs(fx, spec: Mode) -> list[Graph]:
    """In execution order: the first pack graph loads the file; LoRA runs after the plain run and before a
    plain run with another seed (the LoRA must not leak into the base model)."""
    graphs = [Graph("oracle", ORACLE_LOADER), Graph("pack", PACK_LOADER)]
    if _has_nvfp4(fx.name):
        wrong = {"nibble_order": _wrong_nibble_order(fx)}
        graphs.append(Graph("pack wrong nibble order", ADVANCED_LOADER, loader_inputs=wrong))
    if fx.name == FORCED_PATH_FIXTURE:
        for path in spec.forced_paths:
            inputs = {"kernel_path": path, **dict(spec.forced_inputs)}
            graphs.append(Graph(_forced_role(path), ADVANCED_LOADER, loader_inputs=inputs))
    if fx.name in LORA_FIXTURES:
        graphs += [
            Graph("oracle+lora", ORACLE_LOADER, lora_strength=1.0),
            Graph("oracle+lora x2", ORACLE_LOADER, lora_strength=2.0),
            Graph("pack+lora", PACK_LOADER, lora_strength=1.0),
            Graph("pack after lora", PACK_LOADER, seed=2),
            Graph("oracle seed 2", ORACLE_LOADER, seed=2),
        ]
    if spec.pack_inputs:
        graphs = [_with_pack_inputs(g, dict(spec.pack_inputs)) for g in graphs]
    return graphs


def _with_pack_inputs(graph: Graph, inputs: dict) -> Graph:
    """A pack graph on the Advanced loader with `inputs` (the graph's own inputs win); oracles unchanged."""
    if graph.loader == ORACLE_LOADER:
        return graph
    return replace(graph, loader=ADVANCED_LOADER, loader_inputs={**inputs, **graph.loader_inputs})


def _api_graph(fx, graph: Graph, prefix: str) -> dict:
    unet = _oracle_name(fx.filename) if graph.loader == ORACLE_LOADER else fx.filename
    lora = LORA_FILE if graph.lora_strength is not None else None
    api = sampling_graph(unet, graph.seed, graph.loader, lora, graph.lora_strength or 1.0, prefix)
    api[LOADER]["inputs"].update(graph.loader_inputs)
    return api


# ---- running the modes -------------------------------------------------------------------------------------


@dataclass
class ModeRun:
    """Per graph (`<fixture>/<role>`): the saved latent, the memory report, the server log it produced, or the
    error it ended with (the other graphs of the mode still run)."""

    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    log: str = ""  # the whole server log

    def latent(self, fixture: str, role: str) -> torch.Tensor:
        return self.latents[self._succeeded(fixture, role)]

    def graph_log(self, fixture: str, role: str) -> str:
        return self.logs[self._succeeded(fixture, role)]

    def _succeeded(self, fixture: str, role: str) -> str:
        key = f"{fixture}/{role}"
        if key in self.errors:
            pytest.fail(f"graph {key} failed in ComfyUI: {self.errors[key]}")
        return key


def _error(entry: dict) -> str:
    """The execution error of a failed /history entry (node, exception, end of the traceback)."""
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            trace = "".join(data.get("traceback", []))[-1500:]
            return f"{data.get('node_type')}: {data.get('exception_message')}\n{trace}"
    return str(entry["status"])


def _whole_card_gib() -> int:
    """`--reserve-vram` that leaves no VRAM for weights: the card's total memory."""
    return math.ceil(torch.cuda.get_device_properties(0).total_memory / 2**30)


class Runs:
    """Runs each mode once, on first use, one server at a time; model files are written once."""

    def __init__(self, root: Path):
        self.root = root
        self.folders = prepare_base_directory(root)
        self.runs: dict[str, ModeRun] = {}
        self.failures: dict[str, str] = {}

    def get(self, mode: str) -> ModeRun:
        if mode in self.failures:
            pytest.fail(f"mode {mode} failed earlier: {self.failures[mode]}")
        if mode not in self.runs:
            try:
                self.runs[mode] = self._run(mode)
            except BaseException as e:  # pytest.fail too: the other tests of this mode report it at once
                self.failures[mode] = str(e)[-3000:]
                raise
        return self.runs[mode]

    def _write_models(self, fx) -> None:
        models = self.folders["diffusion_models"]
        if not (models / fx.filename).exists():
            fx.write(models)
            oracle = {k: v.to(torch.bfloat16) for k, v in H.oracle_state_dict(fx).items()}
            save_file(oracle, str(models / _oracle_name(fx.filename)))
        lora = self.folders["loras"] / LORA_FILE
        if not lora.exists():
            save_file(_lora(fx), str(lora))  # same shapes for every fixture (one seeded source model)

    def _run(self, mode: str) -> ModeRun:
        spec = MODES[mode]
        fixtures = [_fixture(name) for name in spec.fixtures]
        for fx in fixtures:
            self._write_models(fx)
        args = spec.args + (("--reserve-vram", str(_whole_card_gib())) if spec.reserve_whole_card else ())
        run = ModeRun()
        with comfy_server(self.root, args, log_name=f"{mode}.log", env=dict(spec.env)) as server:
            for fx in fixtures:
                for graph in _graphs(fx, spec):
                    key, start = f"{fx.name}/{graph.role}", len(run.log)
                    entry = server.run(_api_graph(fx, graph, prefix=f"{mode}/{fx.name}"))
                    run.log = server.log_text()
                    run.logs[key] = run.log[start:]
                    if entry["status"]["status_str"] != "success":
                        run.errors[key] = _error(entry)
                        continue
                    run.latents[key] = server.latent(entry)
                    run.reports[key] = memory_report(entry)
        return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("comfy_gpu"))


def _expected_layers(fx) -> dict[str, int]:
    """Path-log format -> number of quantized layers of that format in the fixture."""
    return dict(Counter(KERNEL_FORMATS[t.format] for t in fx.layers.values() if t.format in KERNEL_FORMATS))


def _paths(label: str) -> set[str]:
    """The kernel paths in a path-log label (`triton-dequant+triton-fused`), the LoRA path left out."""
    return set(label.replace(LORA_PATH, "").split("+")) - {""}


def _load_paths(run: ModeRun, fx, role: str) -> dict[str, dict[str, int]]:
    """The path summary logged by the load in graph `role`: format -> {paths label: layers}."""
    lines = kernel_path_lines(run.graph_log(fx.name, role), fx.filename)
    assert lines, f"no `kernel paths {fx.filename}` line in the server log of graph {role!r}"
    summary = lines[-1]
    expected = _expected_layers(fx)
    assert {fmt: sum(summary.get(fmt, {}).values()) for fmt in expected} == expected, (role, summary)
    return summary


# ---- tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "fixture"), FIXTURE_CASES)
def test_pack_matches_the_oracle(runs, mode, fixture):
    run = runs.get(mode)
    err = H.rel_err(run.latent(fixture, "pack"), run.latent(fixture, "oracle"))
    assert err <= MODES[mode].tol, f"{mode} {fixture}: pack vs oracle rel. error {err:.3g}"


@pytest.mark.parametrize(("mode", "fixture"), NIBBLE_CASES)
def test_the_wrong_nibble_order_is_caught(runs, mode, fixture):
    """Negative check: the comparison sees a convention error (same file, nibble order overridden)."""
    run = runs.get(mode)
    err = H.rel_err(run.latent(fixture, "pack wrong nibble order"), run.latent(fixture, "oracle"))
    assert err >= MIN_WRONG_ORDER_ERROR, f"{mode} {fixture}: the wrong nibble order is only {err:.3g} off"


_LORA_ROLES = ("pack", "pack+lora", "oracle+lora", "oracle+lora x2", "pack after lora", "oracle seed 2")


@pytest.mark.parametrize(("mode", "fixture"), LORA_CASES)
def test_lora_applied_once_and_not_leaking(runs, mode, fixture):
    run, tol = runs.get(mode), MODES[mode].tol
    latent = {role: run.latent(fixture, role) for role in _LORA_ROLES}
    effect = H.rel_err(latent["pack+lora"], latent["pack"])
    assert effect >= MIN_LORA_EFFECT, f"the LoRA must change the output (moved it by {effect:.3g})"
    once = H.rel_err(latent["pack+lora"], latent["oracle+lora"])
    assert once <= tol, f"{mode} {fixture}: pack+LoRA vs oracle+LoRA rel. error {once:.3g}"
    twice = H.rel_err(latent["pack+lora"], latent["oracle+lora x2"])
    assert twice >= MIN_LORA_EFFECT, f"{mode} {fixture}: pack+LoRA is only {twice:.3g} from LoRA x2"
    after = H.rel_err(latent["pack after lora"], latent["oracle seed 2"])
    assert after <= tol, f"{mode} {fixture}: the LoRA leaked into the base model (rel. error {after:.3g})"


@pytest.mark.parametrize(("mode", "path"), FORCED_CASES)
def test_forced_kernel_path_runs_every_quantized_layer(runs, mode, path):
    run, fx = runs.get(mode), _fixture(FORCED_PATH_FIXTURE)
    role = _forced_role(path)
    summary = _load_paths(run, fx, role)
    for fmt in _expected_layers(fx):
        assert {p for label in summary[fmt] for p in _paths(label)} == {path}, (fmt, summary)
    err, tol = H.rel_err(run.latent(fx.name, role), run.latent(fx.name, "oracle")), MODES[mode].forced_tol
    assert err <= (tol or MODES[mode].tol), f"{mode}: {path} vs oracle rel. error {err:.3g}"


@pytest.mark.parametrize("mode", MODE_CASES)
def test_auto_kernel_paths_in_the_server_log(runs, mode):
    """Every quantized layer ran one of the mode's `auto` paths inside ComfyUI (Triton on the GPU)."""
    spec, run = MODES[mode], runs.get(mode)
    for name in spec.fixtures:
        fx = _fixture(name)
        summary = _load_paths(run, fx, "pack")  # the file's first load: every layer once, no LoRA
        for fmt in _expected_layers(fx):
            for label in summary[fmt]:
                assert _paths(label) and _paths(label) <= set(spec.auto_paths), (mode, name, fmt, label)
        allowed = set(spec.auto_paths) | set(spec.forced_paths)
        for line in kernel_path_lines(run.log, fx.filename):  # every load and LoRA run of the file
            for fmt, labels in line.items():
                assert fmt == "float" or all(_paths(label) <= allowed for label in labels), (name, line)


@pytest.mark.parametrize(("mode", "reference"), [_param(a, b) for a, b in SAME_RESULTS])
def test_memory_modes_give_the_same_latents(runs, mode, reference):
    a, b = runs.get(mode), runs.get(reference)
    common = sorted(set(a.latents) & set(b.latents))
    assert len(common) >= 2 * len(MODES[mode].fixtures)
    errors = {key: H.rel_err(a.latents[key], b.latents[key]) for key in common}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GPU_TOL, f"{mode} vs {reference}: {worst} differs by {errors[worst]:.3g}"


@pytest.mark.parametrize("mode", MODE_CASES)
def test_weights_held_as_the_mode_says(runs, mode):
    """Dynamic VRAM really ran (ModelPatcherDynamic, VBAR slots) and the low budget really streamed."""
    spec, run = MODES[mode], runs.get(mode)
    assert not run.errors, f"{mode}: graphs failed in ComfyUI: {run.errors}"
    enabled = "DynamicVRAM support detected and enabled" in run.log
    assert enabled == spec.dynamic, f"{mode}: Dynamic VRAM enabled={enabled} in the server log"
    for key, report in run.reports.items():
        assert report["dynamic"] == spec.dynamic, (key, report)
        assert report["patcher"] == ("ModelPatcherDynamic" if spec.dynamic else "ModelPatcher"), (key, report)
        if spec.dynamic:  # streamed: the VBAR fault failed, the weights went through a cast buffer
            streamed = report["vbar_modules"] if spec.low_budget else 0
            assert report["vbar_modules"] > 0 and report["vbar_streamed"] == streamed, (key, report)
        else:
            assert report["vbar_modules"] == 0, (key, report)
        if spec.gpu and not spec.dynamic:  # legacy lowvram: offloaded modules keep their weights on the CPU
            assert report["lowvram"] == spec.low_budget, (key, report)
            assert (report["weights_on_cpu"] > 0) == spec.low_budget, (key, report)


def test_pack_graphs_force_w4a16_where_native_fp4_could_run():
    """Where `auto` could take ComfyUI's W4A4 GEMM, every pack graph (LoRA ones included) forces `w4a16`;
    forced-path and wrong-nibble-order graphs keep their own inputs; oracle graphs stay on UNETLoader."""
    spec = replace(MODES["dynamic"], pack_inputs=(("kernel_path", W4A16),))
    fx = _fixture(FORCED_PATH_FIXTURE)
    graphs = {g.role: g for g in _graphs(fx, spec)}
    assert {g.loader for g in graphs.values()} == {ORACLE_LOADER, ADVANCED_LOADER}
    for role, graph in graphs.items():
        if graph.loader == ORACLE_LOADER:
            assert role.startswith("oracle"), role
        elif role.startswith("pack triton"):
            assert graph.loader_inputs["kernel_path"] == role.removeprefix("pack "), role
        else:
            assert graph.loader_inputs["kernel_path"] == W4A16, role
    assert graphs["pack wrong nibble order"].loader_inputs["nibble_order"] == _wrong_nibble_order(fx)
    assert graphs["pack+lora"].lora_strength == 1.0
    plain = {g.role: g.loader for g in _graphs(fx, replace(spec, pack_inputs=()))}
    assert plain["pack"] == PACK_LOADER and plain["pack+lora"] == PACK_LOADER
