"""`repair`: rewrite a foreign-convention NVFP4 / scaled-FP8 file into ComfyUI-native form, losslessly.

Per layer (format -> rewrite):
  nvfp4        nibbles to high_first, scales to swizzled `[round128(N), round4(K/16)]`, rows padded to 16,
               `weight_scale_2` kept (LightX2V: `alpha * input_global_scale`, or `1 / weight_global_scale`),
               `input_scale` kept (LightX2V: `1 / input_global_scale`, or `input_absmax / 2688`)
  fp8_scaled   per-tensor: `scale_weight` -> fp32 scalar `weight_scale`, `scale_input` -> `input_scale`
               (dropped when 1.0, as ComfyUI does); per-row: no ComfyUI-native form (see PER_ROW_FP8)
  fp8, float   copied
Every quantized layer is listed in `_quantization_metadata`; legacy markers are dropped. Codes, logical
block scales and global scales of every rewritten layer are compared before/after (which fixes the
dequantized weight), and the dequantized weights themselves on a sample of layers (all with `verify="full"`).
"""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ... import __version__
from ...kernels import (
    NVFP4Weight,
    dequantize,
    nvfp4_block_scales,
    nvfp4_codes,
    quantize_fp8,
)
from ...kernels.nvfp4 import native_nvfp4 as kernel_native_nvfp4
from ..errors import CheckpointError
from ..layers import FP8, FP8_SCALED, NVFP4, LayerSpec, build_weight
from ..progress import ProgressCallback, no_progress
from ..reading.json_text import load_json
from ..reading.stream_read import TensorReader, release_freed_memory
from ..sqnr import sqnr_db
from .job_report import JobReport, LayerResult
from .output_formats import COMFY, QUANT_METADATA_KEY, SUFFIXES, output_metadata
from .stream_job import finish_report, in_file_order, leftover_tensors, provenance, write_passthrough
from .writer import PlannedTensor, StreamingSafetensorsWriter

PER_ROW_FP8 = {
    "keep": "kept as is: ComfyUI has no per-row FP8 format, so vanilla ComfyUI will NOT read these layers "
    "correctly (this pack does)",
    "requantize": "re-quantized to per-tensor float8_e4m3fn (lossy; SQNR reported)",
    "bf16": "dequantized to bf16 (rounding to bf16 only)",
}
VERIFY_MODES = ("sample", "full")
FP8_FORMATS = {torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2"}
SAMPLED_DEQUANT_CHECKS = 8


@dataclass(frozen=True)
class RepairOptions:
    """nibble_order / scale_layout override the file's conventions (else its evidence or the assumption)."""

    nibble_order: str | None = None
    scale_layout: str | None = None
    per_row_fp8: str = "keep"
    verify: str = "sample"
    overwrite: bool = False
    spot_checks: int = 8

    def validate(self) -> "RepairOptions":
        if self.per_row_fp8 not in PER_ROW_FP8:
            raise ValueError(f"--per-row-fp8 must be one of {tuple(PER_ROW_FP8)}, got {self.per_row_fp8!r}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"--verify must be one of {VERIFY_MODES}, got {self.verify!r}")
        return self


@dataclass
class RepairJob:
    spec: LayerSpec
    action: str  # rewritten | copied | quantized | kept
    outputs: dict[str, PlannedTensor]
    comfy_format: str | None
    reason: str
    order: int = 0


def _planned(key: str, dtype: torch.dtype, shape) -> PlannedTensor:
    return PlannedTensor(key, dtype, tuple(shape))


def _nvfp4_outputs(spec: LayerSpec) -> dict[str, PlannedTensor]:
    plan = COMFY.plan_layer(spec.key, "nvfp4", spec.out_features, spec.in_features)
    if any(role in spec.tensors for role, _ in INPUT_SCALE_RULES):
        plan["input_scale"] = _planned(spec.key + SUFFIXES["input_scale"], torch.float32, ())
    return plan


def _legacy_input_scale_kept(spec: LayerSpec, source) -> bool:
    """A legacy `scale_input` becomes `input_scale` unless it is the 1.0 placeholder ComfyUI drops (a static
    activation scale of 1.0 would make fp8-capable GPUs quantize activations with it)."""
    key = spec.tensors.get("scale_input")
    return key is not None and source.tensor(key).float().reshape(-1).tolist() != [1.0]


def _plan_job(spec: LayerSpec, source, options: RepairOptions) -> RepairJob:
    n, k = spec.out_features, spec.in_features
    weight_key = spec.tensors.get("weight")
    if "pre_quant_scale" in spec.tensors:
        raise CheckpointError(
            source.path,
            "AWQ layer (pre_quant_scale) has no ComfyUI-native form",
            spec.key,
            expected="an NVFP4/FP8 layer without pre_quant_scale",
            found="pre_quant_scale",
            hint="Convert from a float source instead (`wan-nvfp4 convert`)",
        )
    if spec.format == NVFP4:
        why = f"{spec.nibble_order} + {spec.scale_layout} -> high_first + swizzled"
        return RepairJob(spec, "rewritten", _nvfp4_outputs(spec), "nvfp4", why)
    if spec.format == FP8_SCALED and spec.fp8_granularity == "tensor":
        outputs = {
            "weight": _planned(spec.key + ".weight", spec.weight_dtype, (n, k)),
            "scale": _planned(spec.key + SUFFIXES["scale"], torch.float32, ()),
        }
        if "input_scale" in spec.tensors or _legacy_input_scale_kept(spec, source):
            outputs["input_scale"] = _planned(spec.key + SUFFIXES["input_scale"], torch.float32, ())
        names = ", ".join(Path(spec.tensors[r]).suffix for r in ("scale",) if r in spec.tensors)
        return RepairJob(
            spec, "rewritten", outputs, FP8_FORMATS[spec.weight_dtype], f"{names} -> .weight_scale"
        )
    if spec.format == FP8_SCALED:  # per-row
        mode = options.per_row_fp8
        if mode == "keep":
            outputs = {
                r: _planned(key, source.dtype(key), source.shape(key)) for r, key in spec.tensors.items()
            }
            outputs.pop("bias", None)  # `.comfy_quant` stays: ComfyUI keeps refusing an unknown format
            return RepairJob(spec, "copied", outputs, None, "per-row FP8 " + PER_ROW_FP8[mode])
        if mode == "requantize":
            outputs = COMFY.plan_layer(spec.key, "fp8", n, k)
            return RepairJob(spec, "quantized", outputs, "float8_e4m3fn", "per-row FP8 " + PER_ROW_FP8[mode])
        return RepairJob(
            spec, "kept", {"weight": _planned(weight_key, torch.bfloat16, (n, k))}, None, PER_ROW_FP8[mode]
        )
    outputs = {"weight": _planned(weight_key, source.dtype(weight_key), source.shape(weight_key))}
    why = "plain fp8 (ComfyUI upcasts it natively)" if spec.format == FP8 else "float"
    return RepairJob(spec, "copied", outputs, None, why)


def _source_comfy_layers(metadata: dict[str, str]) -> dict:
    try:
        layers = load_json(metadata.get(QUANT_METADATA_KEY, "{}")).get("layers", {})
    except (json.JSONDecodeError, AttributeError):
        return {}
    return layers if isinstance(layers, dict) else {}


def plan_repair(source, info, options: RepairOptions):
    """(jobs, passthrough [(key, planned)], dropped keys, metadata) from the header and classification."""
    source_layers = _source_comfy_layers(source.metadata or {})
    jobs = in_file_order([_plan_job(spec, source, options) for spec in info.layers.values()], source)
    consumed = {
        key for job in jobs for key in job.spec.tensors.values() if key != job.spec.tensors.get("bias")
    }
    passthrough, dropped = leftover_tensors(source, consumed, info.prefix)
    quantized = {j.spec.key: j.comfy_format for j in jobs if j.comfy_format}
    for job in jobs:  # a layer kept as is keeps what the source's header said about it
        conf = source_layers.get(job.spec.key) if job.action == "copied" and job.spec.is_quantized else None
        if isinstance(conf, dict) and conf.get("format"):
            quantized[job.spec.key] = conf["format"]
    full_precision = [j.spec.key for j in jobs if j.spec.key in quantized and j.spec.full_precision_mm]
    metadata = output_metadata(
        dict(source.metadata or {}),
        COMFY,
        quantized,
        [],
        None,
        provenance("repair", source),
        __version__,
        full_precision,
    )
    return jobs, passthrough, dropped, metadata


# --- per-layer rewrites ---------------------------------------------------------------------------------
def native_nvfp4(weight: NVFP4Weight) -> NVFP4Weight:
    """The same NVFP4 weight in ComfyUI-native conventions (high_first, swizzled, rows padded to 16)."""
    return kernel_native_nvfp4(weight, COMFY.pad_rows_to)


# ComfyUI's `input_scale` (amax_x / 2688) from the role a producer stores, first match wins
INPUT_SCALE_RULES = (
    ("input_scale", lambda v: v),
    ("input_global_scale", lambda v: 1.0 / v),  # LightX2V: 2688 / amax_x
    ("input_absmax", lambda v: v / 2688.0),  # LightX2V calibration: amax_x
    ("scale_input", lambda v: v),  # legacy fp8
)


def comfy_input_scale(spec: LayerSpec, reader) -> torch.Tensor | None:
    """ComfyUI's `input_scale` (fp32 scalar) from whichever activation-scale role the layer has, or None."""
    for role, value in INPUT_SCALE_RULES:
        if role in spec.tensors:
            return value(reader(spec.tensors[role]).float()).reshape(())
    return None


def _same_nvfp4(before: NVFP4Weight, after: NVFP4Weight) -> bool:
    return (
        torch.equal(nvfp4_codes(before), nvfp4_codes(after))
        and torch.equal(
            nvfp4_block_scales(before).view(torch.uint8), nvfp4_block_scales(after).view(torch.uint8)
        )
        and torch.equal(before.global_scale.float().reshape(()), after.global_scale.float().reshape(()))
    )


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _run_nvfp4(job, reader, writer, path, dequant_check: bool) -> tuple[float, str]:
    before = build_weight(job.spec, reader, path)
    after = native_nvfp4(before)
    if not _same_nvfp4(before, after):
        raise CheckpointError(path, "repair changed codes or scales", job.spec.key, "identical", "different")
    check = "codes, scales identical"
    if dequant_check:
        if not _bitwise_equal(dequantize(before), dequantize(after)):
            raise CheckpointError(
                path, "dequantized weight changed in repair", job.spec.key, "bit-identical", "different"
            )
        check += "; dequantized bit-identical"
    tensors = {"weight": after.packed, "block_scale": after.block_scale, "global_scale": after.global_scale}
    if "input_scale" in job.outputs:
        tensors["input_scale"] = comfy_input_scale(job.spec, reader)
    for role, planned in job.outputs.items():
        writer.write(planned.name, tensors[role])
    return math.inf, check


def _run_fp8_tensor(job, reader, writer, path, dequant_check: bool) -> tuple[float, str]:
    spec = job.spec
    data = reader(spec.tensors["weight"])
    scale = reader(spec.tensors["scale"]).float().reshape(())
    if dequant_check:
        before = dequantize(build_weight(spec, reader, path))
        after = dequantize(
            build_weight(spec, {spec.tensors["weight"]: data, spec.tensors["scale"]: scale}.get)
        )
        if not _bitwise_equal(before, after):
            raise CheckpointError(
                path, "dequantized weight changed in repair", spec.key, "bit-identical", "different"
            )
    writer.write(job.outputs["weight"].name, data)
    writer.write(job.outputs["scale"].name, scale)
    if "input_scale" in job.outputs:
        writer.write(job.outputs["input_scale"].name, comfy_input_scale(spec, reader))
    return math.inf, "bytes and scale values identical" + (
        "; dequantized bit-identical" if dequant_check else ""
    )


def _run_per_row(job, reader, writer, path, dequant_check: bool) -> tuple[float, str]:
    spec = job.spec
    w = dequantize(build_weight(spec, reader, path))
    if job.action == "quantized":
        q = quantize_fp8(w, granularity="tensor")
        writer.write(job.outputs["weight"].name, q.data)
        writer.write(job.outputs["scale"].name, q.scale.float().reshape(()))
        return sqnr_db(w, dequantize(q)), "re-quantized"
    out = w.to(torch.bfloat16)
    writer.write(job.outputs["weight"].name, out)
    return sqnr_db(w, out), "dequantized"


def _run_copy(job, reader, writer, path, dequant_check: bool) -> tuple[float, str]:
    for role, planned in job.outputs.items():
        writer.write(planned.name, reader(job.spec.tensors[role]))
    return math.inf, "bytes unchanged"


def _runner(job: RepairJob):
    if job.action == "copied":
        return _run_copy
    if job.spec.format == NVFP4:
        return _run_nvfp4
    if job.action == "rewritten":
        return _run_fp8_tensor
    return _run_per_row


def _dequant_sample(jobs: list[RepairJob], mode: str) -> set[str]:
    rewritten = [j.spec.key for j in jobs if j.action == "rewritten"]
    if mode == "full" or len(rewritten) <= SAMPLED_DEQUANT_CHECKS:
        return set(rewritten)
    step = (len(rewritten) - 1) / (SAMPLED_DEQUANT_CHECKS - 1)
    return {rewritten[round(i * step)] for i in range(SAMPLED_DEQUANT_CHECKS)}


def repair_checkpoint(
    src: str | Path,
    dst: str | Path,
    options: RepairOptions | None = None,
    progress: ProgressCallback | None = None,
    report_path: str | Path | None = None,
    save_report: bool = True,
    reference: str | Path | None = None,
) -> JobReport:
    """Rewrite `src` into ComfyUI-native `dst` (never touching `src`); returns the per-layer report.

    With `reference`, the NVFP4 conventions are decided by comparing against that file (see
    `reference_match`); an inconclusive comparison is an error unless explicit overrides are given.
    """
    from ..conventions.classify import classify_checkpoint
    from ..reading.sharded_source import open_source

    options = (options or RepairOptions()).validate()
    progress = progress or no_progress
    start = time.perf_counter()
    source = open_source(src)  # one file, or a sharded / diffusers export mapped to ComfyUI names
    notes = []
    nibble_order, scale_layout = options.nibble_order, options.scale_layout
    if reference is not None:
        from ..conventions.reference_match import conventions_with_reference

        nibble_order, scale_layout, match = conventions_with_reference(
            source,
            reference,
            nibble_order,
            scale_layout,
            hint="Check that the reference is the same model, or pass --nibble-order and --scale-layout",
        )
        if match is not None:
            notes.append(match.summary_line())
    info = classify_checkpoint(source, nibble_order=nibble_order, scale_layout=scale_layout)
    info.raise_for_problems()  # nothing is written from a file `inspect` calls unusable
    jobs, passthrough, dropped, metadata = plan_repair(source, info, options)
    assumed = [j.spec for j in jobs if j.spec.format == NVFP4 and j.spec.assumed]
    if assumed:
        notes.append(
            f"{len(assumed)} NVFP4 layers were read in conventions the file does not state: "
            f"{assumed[0].nibble_order} + {assumed[0].scale_layout} (assumed; {assumed[0].evidence}); decide "
            "with --reference OTHER or override with --nibble-order/--scale-layout"
        )
    per_row = [j.spec.name for j in jobs if j.spec.format == FP8_SCALED and j.spec.fp8_granularity == "row"]
    if per_row:
        notes.append(f"{len(per_row)} per-row FP8 layers: {PER_ROW_FP8[options.per_row_fp8]}")
    planned = [p for j in jobs for p in j.outputs.values()] + [p for _, p in passthrough]
    bias_keys = {j.spec.tensors["bias"] for j in jobs if "bias" in j.spec.tensors}
    report = JobReport(
        job="repair",
        source=str(src),
        destination=str(dst),
        options={
            "nibble_order (read as)": nibble_order or "from the file",
            "scale_layout (read as)": scale_layout or "from the file",
            "per_row_fp8": options.per_row_fp8,
            "verify": options.verify,
        },
        notes=notes,
    )
    dequant_checked = _dequant_sample(jobs, options.verify)
    reader = TensorReader(source)
    total = sum(source.nbytes(k) for k in list(source.keys()))
    done = 0
    with StreamingSafetensorsWriter(
        dst,
        planned,
        metadata,
        protect=[Path(src), *getattr(source, "files", ())],
        overwrite=options.overwrite,
        spot_checks=options.spot_checks,
    ) as writer:
        for job in jobs:
            db, check = _runner(job)(job, reader, writer, source.path, job.spec.key in dequant_checked)
            spec = job.spec
            out_fmt = job.comfy_format or (
                "per-row fp8" if job.action == "copied" and spec.format == FP8_SCALED else spec.format
            )
            if job.action == "kept":
                out_fmt = "bfloat16"
            report.layers.append(
                LayerResult(
                    spec.name,
                    spec.key,
                    job.action,
                    spec.format,
                    out_fmt,
                    (spec.out_features, spec.in_features),
                    db if job.action in ("quantized", "kept") else None,
                    f"{job.reason}; {check}",
                )
            )
            release_freed_memory()
            done += sum(source.nbytes(k) for k in spec.tensors.values() if k not in bias_keys)
            progress(done, total, spec.name)
        write_passthrough(writer, reader, passthrough, source, done, total, progress)
        checked = writer.commit()
    rewritten = sum(1 for j in jobs if j.action == "rewritten")
    report.checks["lossless"] = (
        f"{rewritten} rewritten layers: codes/bytes and scales identical; dequantized bit-identical on "
        f"{len(dequant_checked)} layers ({options.verify})"
    )
    return finish_report(report, dst, checked, dropped, total, start, report_path, save_report)
