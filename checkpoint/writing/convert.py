"""`convert`: quantize a bf16/fp16/fp32 or scaled-FP8 WAN checkpoint to NVFP4 or FP8, streaming, atomically.

Plan first (every output tensor's name, dtype and shape follows from the input header), write the header,
then read, quantize and write one layer at a time. Quantized layers get their SQNR against the source.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ... import __version__
from ...kernels import WeightFormatError, dequantize
from ..errors import CheckpointError
from ..layers import FLOAT, FP8_SCALED, NVFP4, LayerSpec, build_weight
from ..progress import ProgressCallback, no_progress
from ..reading.sharded_source import open_source
from ..reading.stream_read import TensorReader, release_freed_memory
from ..sqnr import chunked_sqnr_db
from .job_report import JobReport, LayerResult
from .output_formats import LAYOUTS, OutputLayout, output_metadata
from .presets import FP8_TARGET, NVFP4_TARGET, TARGETS, LayerSelector, PresetOptions
from .quantize_layer import quantize_layer
from .stream_job import finish_report, in_file_order, leftover_tensors, provenance, write_passthrough
from .writer import PlannedTensor, StreamingSafetensorsWriter

KEEP_DTYPES = {"source": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEQUANTIZED_KEEP_DTYPE = torch.bfloat16  # a kept layer whose source was quantized


@dataclass(frozen=True)
class ConvertOptions:
    """target: nvfp4 | fp8; layout: comfy | modelopt; keep_dtype: cast for kept float tensors (None keeps)."""

    target: str = NVFP4_TARGET
    layout: str = "comfy"
    preset: PresetOptions = field(default_factory=PresetOptions)
    keep_dtype: torch.dtype | None = None
    overwrite: bool = False
    spot_checks: int = 8

    def validate(self) -> "ConvertOptions":
        if self.target not in TARGETS:
            raise ValueError(f"--to must be one of {TARGETS}, got {self.target!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {tuple(LAYOUTS)}, got {self.layout!r}")
        return self


@dataclass
class LayerJob:
    """One Linear layer: what is read, what is written."""

    spec: LayerSpec
    action: str  # quantized | kept | copied
    reason: str
    outputs: dict[str, PlannedTensor]  # role -> planned tensor
    bias: tuple[str, PlannedTensor] | None = None
    order: int = 0

    @property
    def read_keys(self) -> list[str]:
        return list(self.spec.tensors.values())


@dataclass
class ConversionPlan:
    layers: list[LayerJob]
    passthrough: list[tuple[str, PlannedTensor]]  # source key -> planned output
    dropped: list[str]
    metadata: dict[str, str]
    notes: list[str]

    @property
    def tensors(self) -> list[PlannedTensor]:
        out = [p for job in self.layers for p in job.outputs.values()]
        out += [job.bias[1] for job in self.layers if job.bias]
        return out + [p for _, p in self.passthrough]


def _is_castable(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize >= 2


def _cast_dtype(dtype: torch.dtype, keep_dtype: torch.dtype | None) -> torch.dtype:
    return keep_dtype if keep_dtype is not None and _is_castable(dtype) else dtype


def _layer_job(
    spec: LayerSpec, source, selector: LayerSelector, layout: OutputLayout, options: ConvertOptions
) -> LayerJob:
    shape = (spec.out_features, spec.in_features)
    decision = selector.decide(spec.name, shape, options.target)
    stem = spec.key
    can_copy = (
        options.target == FP8_TARGET
        and spec.format == FP8_SCALED
        and spec.fp8_granularity == "tensor"
        and spec.weight_dtype == torch.float8_e4m3fn
    )
    if decision.quantize and can_copy:
        outputs = layout.plan_layer(stem, FP8_TARGET, *shape)
        action, reason = "copied", "already per-tensor float8_e4m3fn: bytes kept"
    elif decision.quantize:
        if spec.format == NVFP4 and options.target == NVFP4_TARGET:
            raise CheckpointError(
                source.path,
                "layer is already NVFP4",
                spec.key,
                expected="a bf16/fp16/fp32 or scaled-FP8 source layer",
                found="nvfp4",
                hint="Use `wan-nvfp4 repair` to rewrite an NVFP4 file losslessly into ComfyUI-native form",
            )
        outputs = layout.plan_layer(stem, options.target, *shape)
        action, reason = "quantized", decision.reason
    else:
        src_dtype = spec.weight_dtype if spec.format == FLOAT else DEQUANTIZED_KEEP_DTYPE
        out_dtype = _cast_dtype(src_dtype, options.keep_dtype)
        outputs = {"weight": PlannedTensor(stem + ".weight", out_dtype, shape)}
        action, reason = "kept", decision.reason
    bias = None
    if "bias" in spec.tensors:
        key = spec.tensors["bias"]
        bias = (
            key,
            PlannedTensor(key, _cast_dtype(source.dtype(key), options.keep_dtype), source.shape(key)),
        )
    if action == "copied" and "input_scale" in spec.tensors:
        outputs["input_scale"] = PlannedTensor(stem + ".input_scale", torch.float32, ())
    return LayerJob(spec, action, reason, outputs, bias)


def plan_conversion(source, info, options: ConvertOptions) -> ConversionPlan:
    """Every output tensor of the conversion, decided from the source header alone."""
    options.validate()
    layout = LAYOUTS[options.layout]
    selector = LayerSelector(options.preset, info.layers.keys())
    jobs = [_layer_job(spec, source, selector, layout, options) for spec in info.layers.values()]
    jobs = in_file_order(jobs, source)
    consumed = {k for job in jobs for k in job.read_keys}
    passthrough, dropped = leftover_tensors(
        source, consumed, info.prefix, lambda dtype: _cast_dtype(dtype, options.keep_dtype)
    )
    notes = []
    dropped_roles = sorted(
        {role for job in jobs if job.action != "copied" for role in job.spec.tensors}
        - {"weight", "bias", "block_scale", "global_scale", "scale", "comfy_quant", "conventions"}
    )
    if dropped_roles:
        notes.append(f"source tensors not carried into re-quantized layers: {', '.join(dropped_roles)}")
    assumed = [j.spec.name for j in jobs if j.spec.format == NVFP4 and j.spec.assumed]
    if assumed:
        notes.append(
            f"{len(assumed)} NVFP4 source layers were read in assumed conventions (no evidence in the file); "
            "decide them with `wan-nvfp4 inspect FILE --reference OTHER` if unsure"
        )
    quantized = {
        j.spec.key: layout.comfy_format[options.target] for j in jobs if j.action in ("quantized", "copied")
    }
    excluded = [j.spec.key for j in jobs if j.action == "kept"]
    full_precision = [j.spec.key for j in jobs if j.spec.key in quantized and j.spec.full_precision_mm]
    written_by = provenance(
        "convert", source, target=options.target, layout=options.layout, preset=options.preset.describe()
    )
    metadata = output_metadata(
        dict(getattr(source, "metadata", {}) or {}),
        layout,
        quantized,
        excluded,
        options.target,
        written_by,
        __version__,
        full_precision,
    )
    return ConversionPlan(jobs, passthrough, dropped, metadata, notes)


def _source_float_weight(spec: LayerSpec, reader: Callable, path) -> torch.Tensor:
    """The layer's weight as the source means it: float as stored, quantized formats dequantized (fp32)."""
    if spec.format == FLOAT:
        w = reader(spec.tensors["weight"])
    else:
        w = dequantize(build_weight(spec, reader, path), torch.float32)
    if "pre_quant_scale" in spec.tensors:  # AWQ: y = (x * s) W^T  ==  x (W * s)^T
        w = w.float() * reader(spec.tensors["pre_quant_scale"]).float().reshape(1, -1)
    return w


def _check_finite(w: torch.Tensor, path, key: str, rows_per_chunk: int = 1024) -> None:
    """Refuse NaN/Inf, row chunk by row chunk (a whole-tensor `isfinite` costs several copies)."""
    for a in range(0, w.shape[0], rows_per_chunk):
        if not torch.isfinite(w[a : a + rows_per_chunk]).all():
            raise CheckpointError(
                path, "weight contains NaN or Inf", key, expected="finite values", found="NaN/Inf"
            )


def _run_layer(job: LayerJob, reader, writer, options: ConvertOptions, path) -> LayerResult:
    spec = job.spec
    shape = (spec.out_features, spec.in_features)
    layout = LAYOUTS[options.layout]
    if job.action == "copied":
        writer.write(job.outputs["weight"].name, reader(spec.tensors["weight"]))
        writer.write(job.outputs["scale"].name, reader(spec.tensors["scale"]).float().reshape(()))
        if "input_scale" in job.outputs:
            writer.write(
                job.outputs["input_scale"].name, reader(spec.tensors["input_scale"]).float().reshape(())
            )
        db, out_fmt = math.inf, layout.comfy_format[FP8_TARGET]
    else:
        w = _source_float_weight(spec, reader, path)
        if job.action == "quantized":  # the quantizers refuse NaN/Inf chunk by chunk
            try:
                q = quantize_layer(w, options.target, layout)
            except WeightFormatError as e:
                raise CheckpointError(path, f"cannot quantize ({e})", spec.key) from e
            for role, planned in job.outputs.items():
                writer.write(planned.name, q.tensors[role])
            db, out_fmt = q.sqnr_db, layout.comfy_format[options.target]
        else:
            _check_finite(w, path, spec.key)
            out = w.to(job.outputs["weight"].dtype)
            writer.write(job.outputs["weight"].name, out)
            db = math.inf if out.dtype == w.dtype else chunked_sqnr_db(w, out)
            out_fmt = str(out.dtype).replace("torch.", "")
        del w
    if job.bias:
        key, planned = job.bias
        writer.write(planned.name, reader(key).to(planned.dtype))
    return LayerResult(spec.name, spec.key, job.action, spec.format, out_fmt, shape, db, job.reason)


def _classify(source):
    from ..conventions.classify import classify_checkpoint

    return classify_checkpoint(source)


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    options: ConvertOptions | None = None,
    progress: ProgressCallback | None = None,
    report_path: str | Path | None = None,
    save_report: bool = True,
) -> JobReport:
    """Convert `src` into `dst` (never touching `src`); returns the per-layer report (saved as JSON)."""
    options = (options or ConvertOptions()).validate()
    progress = progress or no_progress
    start = time.perf_counter()
    source = open_source(src)  # one file, or a sharded / diffusers export mapped to ComfyUI names
    info = _classify(source)
    info.raise_for_problems()  # nothing is written from a file `inspect` calls unusable
    plan = plan_conversion(source, info, options)
    reader = TensorReader(source)
    total = sum(source.nbytes(k) for k in list(source.keys()))
    report = JobReport(
        job="convert",
        source=str(src),
        destination=str(dst),
        options={
            "target": options.target,
            "layout": options.layout,
            "preset": options.preset.describe(),
            "keep_dtype": str(options.keep_dtype).replace("torch.", "") if options.keep_dtype else "source",
        },
        notes=list(plan.notes),
    )
    done = 0
    with StreamingSafetensorsWriter(
        dst,
        plan.tensors,
        plan.metadata,
        protect=[Path(src), *getattr(source, "files", ())],
        overwrite=options.overwrite,
        spot_checks=options.spot_checks,
    ) as writer:
        if writer.removed_stale:
            report.notes.append(
                f"removed stale temp files from a killed run: {[p.name for p in writer.removed_stale]}"
            )
        for job in plan.layers:
            report.layers.append(_run_layer(job, reader, writer, options, source.path))
            release_freed_memory()
            done += sum(source.nbytes(k) for k in job.read_keys)
            progress(done, total, job.spec.name)
        write_passthrough(writer, reader, plan.passthrough, source, done, total, progress)
        checked = writer.commit()
    progress(total, total, "done")
    return finish_report(report, dst, checked, plan.dropped, total, start, report_path, save_report)
