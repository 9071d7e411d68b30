"""What convert and repair share: jobs in file order, leftover tensors, provenance, the report's end."""

import time
from collections.abc import Callable
from pathlib import Path

import torch

from ... import __version__
from .job_report import JobReport, add_output_verdicts, default_report_path
from .writer import PlannedTensor

MARKER_SUFFIXES = (".comfy_quant",)  # per-layer markers: the output's metadata replaces them
LEGACY_MARKER = "scaled_fp8"


def in_file_order(jobs: list, source) -> list:
    """Jobs sorted by where their first tensor sits in the source (sets each `job.order`)."""
    key_order = {k: i for i, k in enumerate(source.keys())}
    for job in jobs:
        job.order = min(key_order.get(key, 0) for key in job.spec.tensors.values())
    return sorted(jobs, key=lambda j: j.order)


def leftover_tensors(
    source, consumed: set[str], prefix: str, dtype_for: Callable[[torch.dtype], torch.dtype] = lambda d: d
) -> tuple[list[tuple[str, PlannedTensor]], list[str]]:
    """(passthrough [(key, planned)], dropped marker keys) for every source tensor no layer job reads."""
    marker = f"{prefix or ''}{LEGACY_MARKER}"
    passthrough, dropped = [], []
    for key in list(source.keys()):
        if key in consumed:
            continue
        if key == marker or key.endswith(MARKER_SUFFIXES):
            dropped.append(key)
        else:
            passthrough.append((key, PlannedTensor(key, dtype_for(source.dtype(key)), source.shape(key))))
    return passthrough, dropped


def provenance(job: str, source, **extra) -> dict:
    """Who wrote the output, from what (stored in the output's metadata)."""
    name = Path(str(source.path)).name if source.path else None
    return {"tool": "wan-nvfp4", "version": __version__, "job": job, "source": name, **extra}


def write_passthrough(writer, reader, passthrough, source, done: int, total: int, progress) -> int:
    """Copy the leftover tensors (cast to their planned dtype); returns the bytes read so far."""
    for key, planned in passthrough:
        writer.write(planned.name, reader(key).to(planned.dtype))
        done += source.nbytes(key)
        progress(done, total, key)
    return done


def finish_report(
    report: JobReport,
    dst: str | Path,
    checked: list,
    dropped: list[str],
    bytes_read: int,
    start: float,
    report_path: str | Path | None,
    save_report: bool,
) -> JobReport:
    """Sizes, time, the writer's verification, dropped markers, the output's verdicts; saved as JSON."""
    report.bytes_read = bytes_read
    report.bytes_written = Path(dst).stat().st_size
    report.seconds = time.perf_counter() - start
    report.checks["verified"] = f"header re-read, {len(checked)} tensors re-read and matched"
    if dropped:
        report.checks["dropped_markers"] = dropped
    add_output_verdicts(report, dst)
    if save_report:
        report.save(report_path or default_report_path(dst, report.job))
    return report
