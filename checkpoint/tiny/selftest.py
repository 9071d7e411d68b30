"""End-to-end self test on embedded tiny WAN checkpoints, and a per-layer check of a user's file.

`run_selftest()` builds every fixture from one seeded bf16 model into a temp folder, inspects each file,
compares the inspector with the fixture's ground truth, loads every Linear with `build_weight` and runs the
pack's linear entry point (`kernels.ops.linear`, naming the path that ran; `kernels.linear_reference` when
that module is absent) on a fixed input, and reports per convention the relative output error against the
bf16 model, PASS/FAIL against a stated bound. A wrong-convention control (nibble order flipped) must give a
large error, proving the check can fail. `check_file(path)` inspects a file and checks that every layer
dequantizes to finite values and gives a finite, non-degenerate output.
"""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ...kernels import HIGH_FIRST, LOW_FIRST, dequantize, linear_reference
from ..conventions.classify import classify_checkpoint
from ..conventions.inspect import report_for
from ..errors import CheckpointError
from ..layers import FLOAT, FP8, FP8_SCALED, NVFP4, LayerSpec, build_weight
from .fixtures import DEFAULT_VARIANT, FIXTURES, TINY_VARIANTS, Fixture

# Bound on the relative output error vs the bf16 model, per layer format (bf16 activations and outputs).
ERROR_BOUNDS = {FLOAT: 0.01, FP8_SCALED: 0.06, FP8: 0.08, NVFP4: 0.2}
WRONG_ORDER_MIN = 0.5  # reading nvfp4 with the flipped nibble order must be at least this wrong
INPUT_ROWS = 16
INPUT_SEED = 1234
FLIP = {LOW_FIRST: HIGH_FIRST, HIGH_FIRST: LOW_FIRST}


def _linear_backend() -> tuple[Callable, Callable[[torch.Tensor, object], str]]:
    """The pack's linear entry point and a function naming the path it takes."""
    try:
        from ...kernels import ops
    except ImportError:
        return linear_reference, lambda x, w: "reference (kernels.linear_reference)"
    return ops.linear, lambda x, w: ops.resolve_path(x, w)


def _input(in_features: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(INPUT_SEED + in_features)
    return torch.randn(INPUT_ROWS, in_features, generator=g).to(torch.bfloat16)


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))


@dataclass
class ConventionResult:
    """One fixture's outcome: inspector agreement, per-format worst error, control error, verdict."""

    name: str
    description: str
    inspect_ok: bool
    inspect_notes: list[str]
    comfyui: str
    errors: dict[str, float] = field(default_factory=dict)  # format -> worst relative error
    wrong_order_error: float | None = None
    paths: set[str] = field(default_factory=set)
    misread: bool = False

    @property
    def passed(self) -> bool:
        within = all(err <= ERROR_BOUNDS[fmt] for fmt, err in self.errors.items())
        control = self.wrong_order_error is None or self.wrong_order_error >= WRONG_ORDER_MIN
        return self.inspect_ok and within and control


def _compare_with_truth(fx: Fixture, report) -> list[str]:
    """Where the inspector disagrees with how the fixture was built (empty = agrees)."""
    info = report.info
    notes = []
    if info.variant.id != fx.variant:
        notes.append(f"variant {info.variant.id} != {fx.variant}")
    if report.comfyui.outcome != fx.comfyui:
        notes.append(f"ComfyUI verdict {report.comfyui.outcome} != {fx.comfyui}")
    if not report.usable:
        notes.append("reported unusable")
    if set(info.layers) != set(fx.layers):
        notes.append("layer set differs")
    for name, truth in fx.layers.items():
        spec = info.layers.get(name)
        if spec is None:
            continue
        got = (spec.format, spec.fp8_granularity, spec.assumed)
        if got != (truth.format, truth.fp8_granularity, truth.assumed):
            notes.append(f"{name}: {got} != {(truth.format, truth.fp8_granularity, truth.assumed)}")
        conv = (spec.nibble_order, spec.scale_layout)
        if not fx.convention.misread and conv != (truth.nibble_order, truth.scale_layout):
            notes.append(f"{name}: conventions {conv} != {(truth.nibble_order, truth.scale_layout)}")
    return notes


def _truth_spec(fx: Fixture, spec: LayerSpec) -> LayerSpec:
    """The layer read in the convention it was really written in (differs only for a misread fixture)."""
    truth = fx.layers[spec.name]
    return replace(spec, nibble_order=truth.nibble_order, scale_layout=truth.scale_layout)


def _run_fixture(fx: Fixture, path: Path, linear, name_path) -> ConventionResult:
    report = report_for(classify_checkpoint(path, scan_block_scales=True))
    notes = _compare_with_truth(fx, report)
    if fx.convention.misread:
        notes = [n for n in notes if "conventions" not in n]
    result = ConventionResult(
        fx.name,
        fx.convention.description,
        not notes,
        notes,
        report.comfyui.outcome,
        misread=fx.convention.misread,
    )
    info = report.info
    wrong = []
    for name, spec in info.layers.items():
        spec = _truth_spec(fx, spec) if fx.convention.misread else spec
        x = _input(spec.in_features)
        w_ref = fx.reference[f"{name}.weight"].float()
        b_ref = fx.reference[f"{name}.bias"].float()
        ref = torch.nn.functional.linear(x.float(), w_ref, b_ref)
        weight = build_weight(spec, info.source.tensor, path)
        bias = info.source.tensor(spec.tensors["bias"])
        result.paths.add(str(name_path(x, weight)))
        err = _rel(linear(x, weight, bias), ref)
        result.errors[spec.format] = max(result.errors.get(spec.format, 0.0), err)
        if spec.format == NVFP4:
            flipped = build_weight(
                replace(spec, nibble_order=FLIP[spec.nibble_order]), info.source.tensor, path
            )
            wrong.append(_rel(linear(x, flipped, bias), ref))
    result.wrong_order_error = min(wrong) if wrong else None
    return result


@dataclass
class SelftestResult:
    variant: str
    seed: int
    results: list[ConventionResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_text(self) -> str:
        c = TINY_VARIANTS[self.variant]
        paths = sorted({p for r in self.results for p in r.paths})
        lines = [
            f"wan-nvfp4 selftest: tiny {self.variant} (dim {c.dim}, ffn {c.ffn_dim}, {c.num_layers} blocks), "
            f"seed {self.seed}, input {INPUT_ROWS} rows bf16",
            f"linear entry point paths that ran: {', '.join(paths)}",
            "relative output error vs the bf16 model; bounds: "
            + ", ".join(f"{fmt} <= {b}" for fmt, b in ERROR_BOUNDS.items())
            + f"; nibble-order-flipped control must be >= {WRONG_ORDER_MIN}",
            "",
            f"{'convention':<28} {'inspect':<8} {'vanilla ComfyUI':<23} {'nvfp4':>7} {'fp8':>7} {'float':>7} "
            f"{'flipped':>8}  result",
        ]
        for r in self.results:
            fp8 = max((r.errors[f] for f in (FP8_SCALED, FP8) if f in r.errors), default=None)
            cells = [r.errors.get(NVFP4), fp8, r.errors.get(FLOAT)]
            shown = " ".join(f"{v:>7.4f}" if v is not None else f"{'-':>7}" for v in cells)
            flipped = f"{r.wrong_order_error:>8.3f}" if r.wrong_order_error is not None else f"{'-':>8}"
            lines.append(
                f"{r.name:<28} {'ok' if r.inspect_ok else 'WRONG':<8} {r.comfyui:<23} {shown} {flipped}  "
                f"{'PASS' if r.passed else 'FAIL'}"
            )
            lines += [f"    inspector: {n}" for n in r.inspect_notes]
        misread = [r.name for r in self.results if r.misread]
        if misread:
            lines.append("")
            lines.append(
                f"{', '.join(misread)}: no evidence in the file, so the inspector reports the ComfyUI "
                "convention as ASSUMED (and it is wrong here); the errors above use the true convention, "
                "as a caller override or `inspect --reference` would"
            )
        lines.append("")
        lines.append(f"selftest {'PASSED' if self.passed else 'FAILED'}")
        return "\n".join(lines)


def run_selftest(
    variant: str = DEFAULT_VARIANT, seed: int = 0, keep: str | Path | None = None
) -> SelftestResult:
    """Build, inspect, load and run every fixture; `keep` = folder to leave the files in (else a temp dir)."""
    linear, name_path = _linear_backend()
    results = []
    with tempfile.TemporaryDirectory(prefix="wan-nvfp4-selftest-") as tmp:
        folder = Path(keep) if keep else Path(tmp)
        for builder in FIXTURES.values():
            fx = builder(variant=variant, seed=seed)
            results.append(_run_fixture(fx, fx.write(folder), linear, name_path))
    return SelftestResult(variant, seed, results)


# ------------------------------------------------------------------------------------------------------
# checking a user's file


@dataclass
class LayerCheck:
    name: str
    format: str
    ok: bool
    detail: str


def _check_layer(info, name: str, spec: LayerSpec, linear) -> LayerCheck:
    try:
        weight = build_weight(spec, info.source.tensor, info.path)
    except CheckpointError as e:
        return LayerCheck(name, spec.format, False, str(e))
    w = dequantize(weight, torch.float32)
    if not torch.isfinite(w).all():
        return LayerCheck(
            name, spec.format, False, f"{int((~torch.isfinite(w)).sum())} non-finite weight values"
        )
    rms = float(w.pow(2).mean().sqrt())
    if rms == 0:
        return LayerCheck(name, spec.format, False, "the dequantized weight is all zeros")
    bias = info.source.tensor(spec.tensors["bias"]) if "bias" in spec.tensors else None
    y = linear(_input(spec.in_features), weight, bias)
    if not torch.isfinite(y).all():
        return LayerCheck(name, spec.format, False, "the forward output is not finite")
    return LayerCheck(name, spec.format, True, f"weight rms {rms:.3g}, max |w| {float(w.abs().max()):.3g}")


@dataclass
class FileCheck:
    report: object
    layers: list[LayerCheck]

    @property
    def passed(self) -> bool:
        return self.report.usable and all(c.ok for c in self.layers)

    def to_text(self) -> str:
        lines = [self.report.to_text(), "", "Per-layer check (dequantize, finite, forward on a fixed input):"]
        failed = [c for c in self.layers if not c.ok]
        lines.append(f"  {len(self.layers) - len(failed)} of {len(self.layers)} layers OK")
        lines += [f"  FAIL {c.name} ({c.format}): {c.detail}" for c in failed]
        lines.append(f"check {'PASSED' if self.passed else 'FAILED'}")
        return "\n".join(lines)


def check_file(
    path: str | Path, nibble_order: str | None = None, scale_layout: str | None = None
) -> FileCheck:
    """Inspect `path` and check that every layer dequantizes finite and gives a sane forward output."""
    info = classify_checkpoint(
        path, nibble_order=nibble_order, scale_layout=scale_layout, scan_block_scales=True
    )
    report = report_for(info)
    linear, _ = _linear_backend()
    checks = (
        [_check_layer(info, name, spec, linear) for name, spec in info.layers.items()] if info.usable else []
    )
    return FileCheck(report, checks)
