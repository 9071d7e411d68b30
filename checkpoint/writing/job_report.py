"""Per-layer report of a convert or repair job: printed as a table, saved as JSON next to the output."""

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..sqnr import db_to_relative_error, format_db
from ..text import printable
from .writer import write_json_atomic


@dataclass
class LayerResult:
    """What a job did to one Linear layer.

    action: `quantized` (new quantized tensors), `kept` (float, maybe cast), `rewritten` (lossless repair),
            `copied` (bytes unchanged). sqnr_db: dequantized output vs source weight (inf when identical).
    """

    name: str
    key: str
    action: str
    source_format: str
    output_format: str
    shape: tuple[int, int]
    sqnr_db: float | None
    reason: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["sqnr_db"] = _json_db(self.sqnr_db)
        return d


def _json_db(db: float | None):
    if db is None:
        return None
    if math.isinf(db):
        return "inf" if db > 0 else "-inf"
    return round(db, 3)


@dataclass
class JobReport:
    """A convert / repair run: inputs, options, per-layer results, checks and timings."""

    job: str
    source: str
    destination: str
    options: dict
    layers: list[LayerResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    report_path: str | None = None
    verdicts: dict = field(default_factory=dict)  # outcome words of the output's two inspector verdicts

    def sqnr_values(self) -> list[float]:
        return [r.sqnr_db for r in self.layers if r.action == "quantized" and r.sqnr_db is not None]

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for r in self.layers:
            counts[r.action] = counts.get(r.action, 0) + 1
        values = self.sqnr_values()
        finite = [v for v in values if math.isfinite(v)]
        out = {
            "layers": counts,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.bytes_read / 1e6 / self.seconds, 1) if self.seconds > 0 else None,
        }
        if finite:
            worst = min(finite)
            out["sqnr_db"] = {
                "min": round(worst, 3),
                "median": round(statistics.median(finite), 3),
                "max": round(max(finite), 3),
                "worst_layer": next(r.name for r in self.layers if r.sqnr_db == worst),
                "max_relative_weight_error": round(db_to_relative_error(worst), 5),
            }
        return out

    def to_json(self) -> dict:
        return {
            "job": self.job,
            "source": self.source,
            "destination": self.destination,
            "options": self.options,
            "summary": self.summary(),
            "checks": self.checks,
            "verdicts": self.verdicts,
            "notes": self.notes,
            "layers": {r.name: r.to_json() for r in self.layers},
        }

    def to_text(self, max_rows: int | None = None) -> str:
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        width = max([len(r.name) for r in rows] + [5])
        lines = [f"{self.job}: {self.source} -> {self.destination}"]
        lines += [f"  {k}: {v}" for k, v in self.options.items()]
        lines.append("")
        if rows:
            lines.append(
                f"{'layer':<{width}}  {'action':<9}  {'format':<14}  {'shape':<13}  {'SQNR dB':>8}  note"
            )
        for r in rows:
            shape = "x".join(str(d) for d in r.shape)
            db = "-" if r.sqnr_db is None else format_db(r.sqnr_db)
            lines.append(
                f"{r.name:<{width}}  {r.action:<9}  {r.output_format:<14}  {shape:<13}  {db:>8}  {r.reason}"
            )
        if max_rows is not None and len(self.layers) > max_rows:
            more = "more " if rows else ""
            lines.append(f"... {len(self.layers) - max_rows} {more}layers (see the JSON report)")
        s = self.summary()
        lines.append("")
        lines.append("layers: " + ", ".join(f"{n} {a}" for a, n in s["layers"].items()))
        if "sqnr_db" in s:
            q = s["sqnr_db"]
            lines.append(
                f"SQNR (dB) of quantized weights vs source: min {q['min']} ({q['worst_layer']}), "
                f"median {q['median']}, max {q['max']}; largest relative weight error "
                f"{q['max_relative_weight_error']}"
            )
        if s.get("mb_per_s"):
            lines.append(
                f"read {self.bytes_read / 1e6:.1f} MB, wrote {self.bytes_written / 1e6:.1f} MB in "
                f"{self.seconds:.1f} s ({s['mb_per_s']} MB/s of source)"
            )
        for k, v in self.checks.items():
            lines.append(f"check {k}: {v}")
        lines += [f"note: {n}" for n in self.notes]
        if self.report_path:
            lines.append(f"report saved to {self.report_path}")
        return printable("\n".join(lines), keep_newlines=True)  # layer names come from the file

    def save(self, path: str | Path) -> Path:
        self.report_path = str(path)
        return write_json_atomic(path, self.to_json())


def add_output_verdicts(report: JobReport, dst: str | Path) -> None:
    """Inspect the written file and record what vanilla ComfyUI 0.29 and this pack will do with it."""
    from ..conventions.inspect import inspect_checkpoint

    inspected = inspect_checkpoint(dst, scan_block_scales=False)
    report.checks["vanilla ComfyUI 0.29"] = inspected.comfyui.summary
    report.checks["wan-nvfp4"] = inspected.pack.summary
    report.verdicts = {"comfyui": inspected.comfyui.outcome, "wan_nvfp4": inspected.pack.outcome}


def default_report_path(dst: str | Path, job: str) -> Path:
    """`<dst without .safetensors>.<job>-report.json` next to the output file."""
    dst = Path(dst)
    stem = dst.name[: -len(dst.suffix)] if dst.suffix else dst.name
    return dst.with_name(f"{stem}.{job}-report.json")
