"""Decide a file's NVFP4 conventions by comparing it with the same model in another precision.

For each sampled NVFP4 layer present in both files, a sample of rows is dequantized under every candidate
(2 nibble orders x 2 scale layouts) and compared (SQNR, dB) with the reference's rows (bf16/fp16/fp32 as
stored, scaled FP8 or NVFP4 dequantized). A layer decides when its best candidate reaches `min_sqnr_db` and
beats the runner-up by `margin_db`; the file decides when every compared layer decides the same candidate.
Otherwise the answer is "inconclusive" (for example an unrelated reference: every candidate is noise).
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...kernels import (
    HIGH_FIRST,
    LINEAR,
    LOW_FIRST,
    SWIZZLED,
    dequantize,
    e2m1_decode,
    from_blocked,
    swizzled_shape,
    unpack_nibbles,
)
from ..errors import CheckpointError
from ..layers import FLOAT, FP8_SCALED, NVFP4, LayerSpec, build_weight, global_scale_of
from ..reading.sharded_source import open_source
from ..sqnr import format_db, sqnr_db

INCONCLUSIVE = "inconclusive"
CANDIDATES = tuple((order, layout) for order in (LOW_FIRST, HIGH_FIRST) for layout in (LINEAR, SWIZZLED))
DEFAULT_MARGIN_DB = 6.0
DEFAULT_MIN_SQNR_DB = 10.0


@dataclass
class LayerMatch:
    """SQNR (dB) of every candidate convention on one layer; None where the stored sizes rule it out."""

    name: str
    shape: tuple[int, int]
    rows: int
    sqnr: dict[tuple[str, str], float | None]
    best: tuple[str, str] | None = None
    margin_db: float = 0.0
    decided: bool = False

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "rows_compared": self.rows,
            "sqnr_db": {f"{o}+{s}": _rounded(v) for (o, s), v in self.sqnr.items()},
            "best": None
            if self.best is None
            else {"nibble_order": self.best[0], "scale_layout": self.best[1]},
            "margin_db": _rounded(self.margin_db),
            "decided": self.decided,
        }


def _rounded(v: float | None):
    if v is None:
        return None
    return v if v in (float("inf"), float("-inf")) else round(v, 3)


@dataclass
class ReferenceMatch:
    """The outcome: `nibble_order` / `scale_layout` are the decided values or "inconclusive"."""

    path: str
    reference_path: str
    layers: list[LayerMatch]
    decided: bool
    nibble_order: str
    scale_layout: str
    reason: str
    margin_db: float
    min_sqnr_db: float
    file_conventions: dict = field(default_factory=dict)  # what the file itself says (or assumes)

    def agrees_with_file(self) -> bool | None:
        if not self.decided or not self.file_conventions:
            return None
        fc = self.file_conventions
        return (fc.get("nibble_order"), fc.get("scale_layout")) == (self.nibble_order, self.scale_layout)

    def summary_line(self) -> str:
        if not self.decided:
            return f"reference check: {INCONCLUSIVE} ({self.reason})"
        return (
            f"reference check: decided {self.nibble_order} + {self.scale_layout} "
            f"on {len(self.layers)} layers "
            f"(each best by >= {self.margin_db} dB and >= {self.min_sqnr_db} dB SQNR)"
        )

    def to_json(self) -> dict:
        return {
            "file": self.path,
            "reference": self.reference_path,
            "decided": self.decided,
            "nibble_order": self.nibble_order,
            "scale_layout": self.scale_layout,
            "reason": self.reason,
            "thresholds": {"margin_db": self.margin_db, "min_sqnr_db": self.min_sqnr_db},
            "file_conventions": self.file_conventions,
            "agrees_with_file": self.agrees_with_file(),
            "layers": {m.name: m.to_json() for m in self.layers},
        }

    def to_text(self) -> str:
        heads = [f"{o}+{s}" for o, s in CANDIDATES]
        width = max([len(m.name) for m in self.layers] + [5])
        lines = [f"reference check: {self.path} against {self.reference_path}"]
        lines.append(f"{'layer':<{width}}  " + "  ".join(f"{h:>19}" for h in heads) + "  margin dB  decided")
        for m in self.layers:
            cells = ["n/a" if m.sqnr[c] is None else format_db(m.sqnr[c]) for c in CANDIDATES]
            mark = "yes" if m.decided else "no"
            lines.append(
                f"{m.name:<{width}}  "
                + "  ".join(f"{c:>19}" for c in cells)
                + f"  {m.margin_db:9.2f}  {mark}"
            )
        lines.append(self.summary_line())
        if self.file_conventions:
            fc = self.file_conventions
            said = f"{fc.get('nibble_order')} + {fc.get('scale_layout')}"
            how = "assumed (not all stated by the file)" if fc.get("assumed") else "from the file's evidence"
            agree = self.agrees_with_file()
            verdict = "" if agree is None else (" - agrees" if agree else " - CONTRADICTS the file")
            lines.append(f"the file's own conventions: {said}, {how}{verdict}")
        return "\n".join(lines)


# --- reading rows -------------------------------------------------------------------------------------------
def _rows_of(source, key: str, rows: torch.Tensor) -> torch.Tensor:
    return source.tensor(key)[rows].clone()


def candidate_rows(
    spec: LayerSpec, source, rows: torch.Tensor, order: str, layout: str
) -> torch.Tensor | None:
    """The layer's `rows` dequantized (fp32) reading it as (order, layout); None when sizes rule it out."""
    n, k = spec.out_features, spec.in_features
    cols = k // 16
    scale = source.tensor(spec.tensors["block_scale"])
    scale = scale.view(torch.float8_e4m3fn) if scale.dtype == torch.uint8 else scale
    if layout == LINEAR:
        if scale.numel() != n * cols:
            return None
        logical = scale.reshape(n, cols)
    else:
        rp, cp = swizzled_shape(n, cols)
        if scale.numel() != rp * cp:
            return None
        logical = from_blocked(scale.reshape(rp, cp), n, cols)
    packed = _rows_of(source, spec.tensors["weight"], rows)[:, : k // 2]
    values = e2m1_decode(unpack_nibbles(packed, order)).reshape(len(rows), cols, 16)
    block = logical[rows].float().unsqueeze(-1)
    return ((values * block) * global_scale_of(spec, source.tensor)).reshape(len(rows), k)


def reference_rows(spec: LayerSpec, source, rows: torch.Tensor) -> torch.Tensor:
    """The reference layer's `rows` in fp32 (float as stored; FP8 / NVFP4 dequantized)."""
    if spec.format == FLOAT:
        return _rows_of(source, spec.tensors["weight"], rows).float()
    if spec.format == FP8_SCALED:
        data = _rows_of(source, spec.tensors["weight"], rows).float()
        scale = source.tensor(spec.tensors["scale"]).float()
        scale = scale.reshape(()) if scale.numel() == 1 else scale.reshape(-1)[rows].reshape(-1, 1)
        return data * scale
    if spec.format == NVFP4:  # only the sampled rows, in the reference's own conventions
        return candidate_rows(spec, source, rows, spec.nibble_order, spec.scale_layout)
    return dequantize(build_weight(spec, source.tensor, getattr(source, "path", None)))[rows]


# --- matching -----------------------------------------------------------------------------------------------
def _evenly(items: list, count: int) -> list:
    if count <= 0 or len(items) <= count:
        return list(items)
    step = (len(items) - 1) / max(count - 1, 1)
    return [items[round(i * step)] for i in range(count)]


def _match_layer(spec, source, ref_spec, reference, max_rows, margin_db, min_sqnr_db) -> LayerMatch:
    n = spec.out_features
    rows = torch.tensor(_evenly(list(range(n)), max_rows), dtype=torch.long)
    ref = reference_rows(ref_spec, reference, rows)
    sqnr = {}
    for order, layout in CANDIDATES:
        got = candidate_rows(spec, source, rows, order, layout)
        sqnr[(order, layout)] = None if got is None else sqnr_db(ref, got)
    # NaN (NaN scales or weights) ranks nowhere; two exact candidates (inf, inf) are a tie, not a margin
    ranked = sorted((v, c) for c, v in sqnr.items() if v is not None and not math.isnan(v))
    m = LayerMatch(spec.name, (n, spec.in_features), len(rows), sqnr)
    if ranked:
        best_db, m.best = ranked[-1]
        second = ranked[-2][0] if len(ranked) > 1 else float("-inf")
        m.margin_db = 0.0 if best_db == second else min(best_db - second, 1e9)
        m.decided = best_db >= min_sqnr_db and m.margin_db >= margin_db
    return m


def _open(source_or_path):
    if isinstance(source_or_path, (str, Path)):
        return open_source(source_or_path)
    return source_or_path


def _classify(source):
    from .classify import classify_checkpoint

    return classify_checkpoint(source)


def _file_conventions(specs: list[LayerSpec]) -> dict:
    if not specs:
        return {}
    s = specs[0]
    return {
        "nibble_order": s.nibble_order,
        "scale_layout": s.scale_layout,
        "assumed": any(x.assumed for x in specs),
    }


def match_conventions(
    file,
    reference,
    *,
    max_layers: int = 8,
    max_rows: int = 256,
    margin_db: float = DEFAULT_MARGIN_DB,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
) -> ReferenceMatch:
    """Compare `file`'s NVFP4 layers with `reference` (paths or sources) under every candidate convention."""
    source, ref_source = _open(file), _open(reference)
    info, ref_info = _classify(source), _classify(ref_source)
    nvfp4 = [s for s in info.layers.values() if s.format == NVFP4]
    common = [
        s
        for s in nvfp4
        if s.name in ref_info.layers
        and (ref_info.layers[s.name].out_features, ref_info.layers[s.name].in_features)
        == (s.out_features, s.in_features)
    ]
    sampled = _evenly(common, max_layers)
    layers = [
        _match_layer(s, source, ref_info.layers[s.name], ref_source, max_rows, margin_db, min_sqnr_db)
        for s in sampled
    ]
    decided, reason, best = _verdict(layers, len(nvfp4), margin_db, min_sqnr_db)
    return ReferenceMatch(
        path=str(getattr(source, "path", file)),
        reference_path=str(getattr(ref_source, "path", reference)),
        layers=layers,
        decided=decided,
        nibble_order=best[0] if decided else INCONCLUSIVE,
        scale_layout=best[1] if decided else INCONCLUSIVE,
        reason=reason,
        margin_db=margin_db,
        min_sqnr_db=min_sqnr_db,
        file_conventions=_file_conventions(nvfp4),
    )


def _verdict(layers: list[LayerMatch], nvfp4_count: int, margin_db: float, min_sqnr_db: float):
    if nvfp4_count == 0:
        return False, "the file has no NVFP4 layers", None
    if not layers:
        return False, "no NVFP4 layer of the file has a same-named, same-shaped layer in the reference", None
    weak = [m.name for m in layers if m.best is None or not m.sqnr[m.best] >= min_sqnr_db]
    if weak:
        return (
            False,
            (
                f"best candidate below {min_sqnr_db} dB on {len(weak)} of {len(layers)} layers "
                f"(e.g. {weak[0]}): "
                "the reference does not look like the same model"
            ),
            None,
        )
    close = [m.name for m in layers if not m.margin_db >= margin_db]
    if close:
        return (
            False,
            f"best candidate leads by less than {margin_db} dB on {len(close)} layers (e.g. {close[0]})",
            None,
        )
    bests = {m.best for m in layers}
    if len(bests) > 1:
        return False, f"layers disagree: {sorted(f'{o}+{s}' for o, s in bests)}", None
    best = bests.pop()
    worst_margin = min(m.margin_db for m in layers)
    return True, f"all {len(layers)} compared layers pick it, margin >= {worst_margin:.1f} dB", best


def compare_with_reference(path, reference_path, **kwargs) -> ReferenceMatch:
    """`inspect FILE --reference OTHER` and the doctor node: the full per-layer comparison (bounded)."""
    return match_conventions(path, reference_path, **kwargs)


def decide_conventions(
    file, reference, *, max_layers: int = 4, max_rows: int = 64, **kwargs
) -> ReferenceMatch:
    """Cheap load-time decision (fewer layers and rows); `.nibble_order` / `.scale_layout` feed classify."""
    return match_conventions(file, reference, max_layers=max_layers, max_rows=max_rows, **kwargs)


def conventions_with_reference(
    file, reference, nibble_order: str | None = None, scale_layout: str | None = None, hint: str | None = None
) -> tuple[str | None, str | None, ReferenceMatch | None]:
    """(nibble_order, scale_layout, match): explicit choices win, the reference's decision fills the rest.

    `match` is None when both are explicit (nothing to compare). A file with NVFP4 layers that the comparison
    cannot decide raises CheckpointError (`hint` says what to do next); without NVFP4 layers nothing changes.
    """
    if nibble_order and scale_layout:
        return nibble_order, scale_layout, None
    match = decide_conventions(file, reference)
    if not match.file_conventions:  # no NVFP4 layer: nothing for the reference to decide
        return nibble_order, scale_layout, match
    if not match.decided:
        raise CheckpointError(
            getattr(file, "path", file),
            "the reference could not decide the nibble order and scale layout",
            expected=f"one candidate clearly best on every compared layer of {Path(reference).name}",
            found=f"the comparison did not decide: {match.reason}",
            hint=hint,
            kind="file",
        )
    return nibble_order or match.nibble_order, scale_layout or match.scale_layout, match
