"""The inspector report: census, formats, conventions with evidence, variant, problems and the two verdicts.

`inspect_checkpoint(path)` -> `InspectReport` with `to_text()` (for people), `to_json()` (for scripts; keys
fixed by issue #2: top-level `variant` and `layers` -> `format`, `nibble_order`, `scale_layout`, `evidence`,
`assumed`; `header_metadata` lists every `__metadata__` key) and `exit_code` (0 when this pack can use the
file, 1 otherwise).
"""

from dataclasses import dataclass
from pathlib import Path

from ..problems import ERROR
from ..text import printable
from .classify import CheckpointInfo, classify_checkpoint
from .metadata import list_metadata
from .verdicts import (
    COMFYUI_OUTCOMES,
    NOT_DETECTED,
    PACK_REFUSES,
    Verdict,
    comfy_view,
    comfyui_verdict,
    pack_verdict,
)

EXIT_USABLE = 0
EXIT_UNUSABLE = 1
EXIT_UNREADABLE = EXIT_UNUSABLE  # a file that cannot even be opened (CheckpointError) is unusable too: exit 1
MAX_LISTED = 8  # problems / reasons shown per kind in the text report


@dataclass
class InspectReport:
    info: CheckpointInfo
    comfyui: Verdict
    pack: Verdict

    @property
    def usable(self) -> bool:
        return self.pack.outcome != PACK_REFUSES

    @property
    def exit_code(self) -> int:
        return EXIT_USABLE if self.usable else EXIT_UNUSABLE

    def to_json(self) -> dict:
        info = self.info
        path = info.path
        return {
            "file": None if path is None else str(path),
            "file_size": getattr(info.source, "file_size", None),
            "variant": info.variant.id,
            "variant_info": info.variant.to_json(),
            "prefix": info.prefix,
            "provenance": info.provenance,
            "evidence": list(info.evidence),
            "header_metadata": list_metadata(info).to_json(),
            "census": info.census,
            "formats": info.format_counts(),
            "layers": {name: _layer_json(spec) for name, spec in info.layers.items()},
            "problems": [p.to_json(path) for p in info.problems],
            "verdicts": {"comfyui": self.comfyui.to_json(), "wan_nvfp4": self.pack.to_json()},
            "usable": self.usable,
            "exit_code": self.exit_code,
        } | ({"export": info.source.describe()} if hasattr(info.source, "describe") else {})

    def to_text(self) -> str:
        return printable("\n".join(_text_sections(self)), keep_newlines=True)  # key names come from the file


def _layer_json(spec) -> dict:
    return {
        "format": spec.format,
        "nibble_order": spec.nibble_order,
        "scale_layout": spec.scale_layout,
        "fp8_granularity": spec.fp8_granularity,
        "evidence": spec.evidence,
        "assumed": spec.assumed,
        "full_precision_mm": spec.full_precision_mm,
        "key": spec.key,
        "out_features": spec.out_features,
        "in_features": spec.in_features,
        "weight_dtype": str(spec.weight_dtype).removeprefix("torch."),
        "tensors": dict(spec.tensors),
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _census_lines(info: CheckpointInfo) -> list[str]:
    total = sum(e["tensors"] for e in info.census.values())
    lines = [f"Tensors: {total}"]
    lines += [
        f"  {dtype:<16} {e['tensors']:>6} tensors  {_mb(e['bytes']):>12}" for dtype, e in info.census.items()
    ]
    return lines


def _variant_lines(info: CheckpointInfo) -> list[str]:
    v = info.variant
    if not v.is_wan:
        return [f"WAN variant: none ({v.evidence})"]
    lines = [f"WAN variant: {v.id}" + (f" (ambiguous: {', '.join(v.candidates)})" if v.ambiguous else "")]
    if v.expert:
        lines.append(f"  expert: {v.expert}")
    lines.append(f"  ComfyUI: model_type {v.model_type}, config {v.comfyui_config or 'none'}")
    d = v.dims
    lines.append(
        f"  dims: dim {d.dim}, ffn {d.ffn_dim}, {d.num_layers} blocks, {d.num_heads} heads, "
        f"in/out {d.in_dim}/{d.out_dim}" + (f", {d.vace_layers} VACE blocks" if d.vace_layers else "")
    )
    lines.append(f"  evidence: {v.evidence}")
    lines += [f"  note: {n}" for n in v.notes]
    return lines


def _convention_lines(info: CheckpointInfo) -> list[str]:
    counts = info.format_counts()
    lines = [f"Linear layers: {len(info.layers)} (" + ", ".join(f"{f}: {n}" for f, n in counts.items()) + ")"]
    groups: dict[tuple, list[str]] = {}
    for name, spec in info.layers.items():
        label = (spec.format, spec.nibble_order, spec.scale_layout, spec.fp8_granularity, spec.assumed)
        groups.setdefault((*label, spec.evidence), []).append(name)
    for (fmt, nibble, layout, granularity, assumed, evidence), names in groups.items():
        conv = " + ".join(x for x in (nibble, layout, granularity and f"per-{granularity}") if x)
        tag = " [ASSUMED]" if assumed else ""
        lines.append(f"  {fmt}{' ' + conv if conv else ''}: {len(names)} layer(s){tag}, e.g. {names[0]}")
        lines.append(f"      evidence: {evidence}")
    full = [name for name, spec in info.layers.items() if spec.full_precision_mm]
    if full:
        lines.append(
            f"  full-precision matmul requested (full_precision_matrix_mult): {len(full)} layer(s), e.g. "
            f"{full[0]}; their activations are never quantized (kept by repair and convert)"
        )
    return lines


def _problem_lines(info: CheckpointInfo) -> list[str]:
    if not info.problems:
        return ["Problems: none"]
    lines = [f"Problems: {len(info.errors)} error(s), {len(info.warnings)} warning(s)"]
    for severity in (ERROR, "warning"):
        found = [p for p in info.problems if p.severity == severity]
        lines += [f"  {severity.upper()}: {p.message(info.path)}" for p in found[:MAX_LISTED]]
        if len(found) > MAX_LISTED:
            lines.append(f"  ... and {len(found) - MAX_LISTED} more {severity}(s) (see --json)")
    return lines


def _verdict_lines(title: str, verdict: Verdict) -> list[str]:
    lines = [f"{title}: {verdict.summary}"]
    lines += [f"    - {r}" for r in verdict.reasons[:MAX_LISTED]]
    if len(verdict.reasons) > MAX_LISTED:
        lines.append(f"    ... and {len(verdict.reasons) - MAX_LISTED} more")
    return lines


def _export_lines(info: CheckpointInfo) -> list[str]:
    """A sharded / diffusers export (`reading.sharded_source`): where the tensors come from."""
    if not hasattr(info.source, "describe"):
        return []
    d = info.source.describe()
    lines = [
        f"Export: {d['naming']} names, {len(d['shards'])} shard(s)"
        + (f" via {d['index']}" if d["index"] else "")
        + (f", {d['class']}" if d["class"] else ""),
        f"  mapping: {d['tensors']} tensors, {d['renamed']} renamed to ComfyUI WAN names"
        + (f", {len(d['fused_split'])} fused tensors split" if d["fused_split"] else "")
        + (f", {len(d['ignored'])} ignored as diffusers ignores them" if d["ignored"] else ""),
    ]
    lines += [f"  mapping: {name} <- {where}" for name, where in list(d["mapping"].items())[:MAX_LISTED]]
    if len(d["mapping"]) > MAX_LISTED:
        lines.append(f"  mapping: ... {len(d['mapping']) - MAX_LISTED} more (--json lists all)")
    if d["unmapped"]:
        lines.append(f"  UNMAPPED: {len(d['unmapped'])} tensor(s), e.g. {d['unmapped'][0]}")
    if d["expert"]:
        lines.append(f"  expert: {d['expert']} ({d['expert_reason']})")
    return lines


def _text_sections(report: InspectReport) -> list[str]:
    info = report.info
    size = getattr(info.source, "file_size", None)
    lines = [f"File: {info.path or '<state dict>'}" + (f" ({_mb(size)})" if size else "")]
    if info.prefix:
        lines.append(f"Key prefix: {info.prefix}")
    lines += _census_lines(info) + _variant_lines(info)
    lines.append(f"Provenance: {info.provenance}")
    lines += [f"  evidence: {e}" for e in info.evidence]
    lines += list_metadata(info).to_lines()
    lines += _export_lines(info) + _convention_lines(info) + _problem_lines(info)
    lines.append("Verdicts:")
    lines += _verdict_lines("  vanilla ComfyUI 0.29", report.comfyui)
    lines += _verdict_lines("  wan-nvfp4", report.pack)
    lines.append(f"Result: {'usable' if report.usable else 'NOT usable'} (exit code {report.exit_code})")
    return lines


def report_for(info: CheckpointInfo) -> InspectReport:
    """Both verdicts for an already classified checkpoint."""
    view = comfy_view(info.source, info.prefix, info.layers)
    errors = [p.message(info.path) for p in info.errors]
    comfyui = comfyui_verdict(view, info.layers, info.variant.is_wan)
    if hasattr(info.source, "describe"):  # ComfyUI opens one file in WAN names, not shards / diffusers names
        reason = "a sharded / diffusers-format export: ComfyUI's model detection never sees it as WAN"
        comfyui = Verdict(NOT_DETECTED, COMFYUI_OUTCOMES[NOT_DETECTED], (reason,))
    return InspectReport(
        info=info,
        comfyui=comfyui,
        pack=pack_verdict(info.layers, errors, info.variant.is_wan),
    )


def inspect_checkpoint(
    source: str | Path,
    nibble_order: str | None = None,
    scale_layout: str | None = None,
    sidecar_config: dict | None = None,
    scan_block_scales: bool = True,
    override_reason: str = "caller override",
) -> InspectReport:
    """Classify `source` (a path or source object) and judge it; CheckpointError if it cannot be opened."""
    info = classify_checkpoint(
        source,
        nibble_order=nibble_order,
        scale_layout=scale_layout,
        sidecar_config=sidecar_config,
        scan_block_scales=scan_block_scales,
        override_reason=override_reason,
    )
    return report_for(info)
