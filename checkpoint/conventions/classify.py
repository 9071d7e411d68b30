"""Classify every Linear of a WAN checkpoint: format, conventions, tensors, and the evidence behind them.

Works on any source with the `SafetensorsFile` interface (`keys/shape/dtype/tensor/metadata/path`), e.g. a
`SafetensorsFile` or a `StateDictSource` over ComfyUI's loaded state dict. It decides from the header, key
names, shapes and dtypes, and reads only small tensors (`.comfy_quant`, scalar and per-row scales; block
scales only with `scan_block_scales=True`), never the weights.

    info = classify_checkpoint("model.safetensors")
    info.layers["blocks.0.self_attn.q"]     # LayerSpec: format, nibble_order, scale_layout, evidence, assumed
    info.variant.id                          # "wan2.2-ti2v-5b"
    info.raise_for_problems()                # CheckpointError naming file, layer, expected, found
    w = info.weight("blocks.0.self_attn.q")  # NVFP4Weight | FP8Weight | Tensor, ready for the kernels
"""

from dataclasses import dataclass, field
from pathlib import Path

from ...kernels import NIBBLE_ORDERS, SCALE_LAYOUTS
from ..errors import CheckpointError
from ..layers import (
    FLOAT,
    FP8,
    FP8_SCALED,
    FULL_PRECISION_MM,
    LIGHTX2V_ROLES,
    NVFP4,
    LayerSpec,
    build_weight,
    read_json_marker,
)
from ..problems import ERROR, WARNING, Problem
from ..reading.checks import tensor_numel
from ..reading.layer_keys import RawLayer, discover_layers, natural_key
from ..reading.sharded_source import open_source
from ..reading.validation import checkpoint_problems
from ..reading.variant import WanVariant, detect_variant
from .evidence import (
    FileEvidence,
    decide_nibble_order,
    decide_scale_layout,
    file_shape_layout,
    find_sidecar,
    parse_comfy_header,
    parse_modelopt_header,
    provenance_summary,
)

# ComfyUI format names (`_quantization_metadata` / `.comfy_quant`) this pack reads -> layer formats that fit
COMFY_FORMATS = {
    "nvfp4": (NVFP4,),
    "float8_e4m3fn": (FP8_SCALED,),
    "float8_e5m2": (FP8_SCALED,),
    "float8_e4m3fn_rowwise": (FP8_SCALED,),
    "float8_e5m2_rowwise": (FP8_SCALED,),
}

# ComfyUI's unet_prefix_from_state_dict candidates
PREFIX_CANDIDATES = ("model.diffusion_model.", "model.model.", "net.")
MIN_PREFIXED_KEYS = 5


@dataclass
class CheckpointInfo:
    """Everything the classifier knows about one checkpoint.

    layers: WAN layer name (no prefix) -> LayerSpec; census: dtype -> {"tensors", "bytes"}; problems: every
    Problem found (severity `error` makes the file unusable for the pack); provenance: one line; evidence:
    file-level evidence lines. `source` is the object it was classified from.
    """

    path: Path | None
    prefix: str
    metadata: dict[str, str]
    layers: dict[str, LayerSpec]
    variant: WanVariant
    census: dict[str, dict[str, int]]
    problems: list[Problem]
    provenance: str
    evidence: list[str] = field(default_factory=list)
    source: object = field(default=None, repr=False, compare=False)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def usable(self) -> bool:
        return self.variant.is_wan and not self.errors

    @property
    def assumed(self) -> bool:
        return any(spec.assumed for spec in self.layers.values())

    def format_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for spec in self.layers.values():
            counts[spec.format] = counts.get(spec.format, 0) + 1
        return counts

    def raise_for_problems(self) -> None:
        """Raise the first error as a CheckpointError (names the file, layer, expected and found)."""
        if self.errors:
            raise self.errors[0].to_error(self.path)

    def weight(self, name: str):
        """The kernel-ready weight of layer `name` (NVFP4Weight, FP8Weight or float tensor), validated."""
        return build_weight(self.layers[name], self.source.tensor, self.path)


def detect_prefix(keys) -> str:
    """The model prefix ComfyUI would strip (`model.diffusion_model.` ...) or "" for a bare WAN file."""
    counts = dict.fromkeys(PREFIX_CANDIDATES, 0)
    for k in keys:
        for c in PREFIX_CANDIDATES:
            if k.startswith(c):
                counts[c] += 1
                break
    top = max(counts, key=counts.get)
    return top if counts[top] > MIN_PREFIXED_KEYS else ""


def _census(source) -> dict[str, dict[str, int]]:
    census: dict[str, dict[str, int]] = {}
    for key in list(source.keys()):
        name = str(source.dtype(key)).removeprefix("torch.")
        entry = census.setdefault(name, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += source.nbytes(key) if hasattr(source, "nbytes") else 0
    return dict(sorted(census.items()))


def _check_override(value: str | None, allowed, what: str, path) -> None:
    if value is not None and value not in allowed:
        raise CheckpointError(path, f"unknown {what} override", None, " or ".join(allowed), repr(value))


def _json_tensor(source, key: str) -> dict:
    """A small uint8 tensor of UTF-8 JSON (`.comfy_quant`, `.wan_nvfp4_conventions`); {} when unreadable."""
    return read_json_marker(source.tensor(key))


def _comfy_quant(source, raw: RawLayer) -> dict:
    return _json_tensor(source, raw.tensors["comfy_quant"])


def _stated(source, raw: RawLayer) -> tuple[str | None, str | None]:
    """(nibble_order, scale_layout) a layer's `wan_nvfp4_conventions` tensor states (None: not stated)."""
    conf = _json_tensor(source, raw.tensors["conventions"]) if "conventions" in raw.tensors else {}
    nibble, layout = conf.get("nibble_order"), conf.get("scale_layout")
    return (nibble if nibble in NIBBLE_ORDERS else None), (layout if layout in SCALE_LAYOUTS else None)


def _gather_evidence(
    source, prefix: str, raws: dict[str, RawLayer], sidecar_config, find: bool
) -> FileEvidence:
    ev = FileEvidence(header_keys=len(source.metadata))
    ev.comfy_layers, found = parse_comfy_header(source.metadata, prefix)
    ev.problems += found
    ev.modelopt_header, found = parse_modelopt_header(source.metadata)
    ev.problems += found
    origin = getattr(source, "metadata_origin", {}).get("quantization_config")  # sharded: config.json
    ev.modelopt_header_where = origin or ev.modelopt_header_where
    ev.comfy_quant_layers = {
        n: _comfy_quant(source, r) for n, r in raws.items() if "comfy_quant" in r.tensors
    }
    if sidecar_config is not None:
        ev.sidecar, ev.sidecar_where = sidecar_config, "hf_quant_config given by the caller"
    elif find:
        ev.sidecar, ev.sidecar_where = find_sidecar(getattr(source, "path", None))
    marker = f"{prefix}scaled_fp8"
    ev.legacy_marker_elements = tensor_numel(source, marker) if marker in set(source.keys()) else None
    ev.shape_layout, found = file_shape_layout({n: r.shape_layout for n, r in raws.items() if r.shape_layout})
    ev.problems += found
    if ev.sidecar is not None and ev.comfy and ev.modelopt_header is None:
        ev.problems.append(
            Problem(
                WARNING,
                "hf_quant_config.json beside the file ignored",
                None,
                "no ModelOpt sidecar next to a file with ComfyUI metadata",
                ev.sidecar_where,
                "The file's own ComfyUI metadata wins",
            )
        )
    return ev


def _fp8_evidence(raw: RawLayer, ev: FileEvidence, granularity: str | None) -> str:
    if raw.format == FP8:
        return "fp8 weight without a scale tensor"
    conf = (ev.comfy_layers or {}).get(raw.name)
    scale_name = raw.tensors["scale"].rsplit(".", 1)[1]
    if conf is not None or raw.name in ev.comfy_quant_layers:
        where = ev.comfy_where if conf is not None else "per-layer .comfy_quant"
        text = f"fp8 weight + {scale_name}; ComfyUI metadata ({where})"
    elif ev.legacy_marker and scale_name == "scale_weight":
        text = "fp8 weight + scale_weight; legacy scaled_fp8 marker"
    elif scale_name == "scale_weight":
        text = "fp8 weight + scale_weight without the scaled_fp8 marker (Kijai style)"
    else:
        text = f"fp8 weight + {scale_name}, no metadata"
    return f"{text}; {granularity} scale"


def _granularity(source, raw: RawLayer) -> str | None:
    if raw.format != FP8_SCALED:
        return None
    return "tensor" if tensor_numel(source, raw.tensors["scale"]) == 1 else "row"


def _full_precision_mm(raw: RawLayer, ev: FileEvidence) -> bool:
    """ComfyUI's per-layer `full_precision_matrix_mult`, or what it derives from a legacy marker of 2 elements
    for `scale_weight` layers (comfy/utils.py `convert_old_quants`)."""
    if raw.format == FLOAT:
        return False
    if ev.comfy_conf(raw.name).get(FULL_PRECISION_MM) is True:
        return True
    legacy = ev.comfy_layers is None and ev.legacy_marker_elements == 2
    return legacy and raw.tensors.get("scale", "").endswith(".scale_weight")


def _spec(source, raw: RawLayer, ev: FileEvidence, nibble_order, scale_layout, override_reason) -> LayerSpec:
    common = {
        "name": raw.name,
        "key": raw.key,
        "format": raw.format,
        "out_features": raw.out_features,
        "in_features": raw.in_features,
        "weight_dtype": source.dtype(raw.tensors["weight"]),
        "tensors": raw.tensors,
        "full_precision_mm": _full_precision_mm(raw, ev),
    }
    if raw.format == NVFP4:
        lightx2v = bool(LIGHTX2V_ROLES & raw.tensors.keys())
        stated_nibble, stated_layout = _stated(source, raw)
        nibble = decide_nibble_order(ev, lightx2v, nibble_order, override_reason, stated_nibble)
        layout = decide_scale_layout(
            ev, raw.shape_layout, lightx2v, scale_layout, override_reason, stated_layout
        )
        evidence = (
            f"nibble order {nibble.value}: {nibble.reason}; scale layout {layout.value}: {layout.reason}"
        )
        return LayerSpec(
            **common,
            nibble_order=nibble.value,
            scale_layout=layout.value,
            evidence=evidence,
            assumed=nibble.assumed or layout.assumed,
        )
    if raw.format in (FP8_SCALED, FP8):
        granularity = _granularity(source, raw)
        return LayerSpec(**common, fp8_granularity=granularity, evidence=_fp8_evidence(raw, ev, granularity))
    dtype = str(common["weight_dtype"]).removeprefix("torch.")
    return LayerSpec(**common, evidence=f"{dtype} weight")


def _format_problems(spec: LayerSpec, fmt) -> list[Problem]:
    """A layer's ComfyUI format name against what this pack reads and what the tensors are."""
    fits = COMFY_FORMATS.get(fmt)
    if fits is None:
        return [
            Problem(
                ERROR,
                "quantization format not supported by this pack",
                spec.key,
                " or ".join(COMFY_FORMATS),
                repr(fmt),
            )
        ]
    if spec.format not in fits:
        return [
            Problem(
                WARNING,
                "the ComfyUI metadata format does not match the tensors",
                spec.key,
                f"{' or '.join(fits)} tensors for format {fmt!r}",
                f"{spec.format} tensors",
            )
        ]
    return []


def _metadata_problems(ev: FileEvidence, layers: dict[str, LayerSpec]) -> list[Problem]:
    out = []
    for name in sorted(set(ev.comfy_layers or {}) - set(layers), key=natural_key):
        out.append(
            Problem(
                WARNING,
                "_quantization_metadata lists a layer that is not in the file",
                name,
                "a Linear with this name",
                "no such weight",
            )
        )
    configs = {**ev.comfy_quant_layers, **(ev.comfy_layers or {})}  # the header wins, as in ComfyUI
    for name, conf in configs.items():
        if name in layers:
            out += _format_problems(layers[name], conf.get("format") if isinstance(conf, dict) else None)
    listed = set(configs)
    if ev.comfy:
        for name, spec in layers.items():
            if spec.format == NVFP4 and name not in listed:
                out.append(
                    Problem(
                        WARNING,
                        "packed nvfp4 layer missing from the ComfyUI metadata",
                        spec.key,
                        "listed in _quantization_metadata or with a .comfy_quant tensor",
                        "not listed (vanilla ComfyUI refuses it with a size mismatch)",
                    )
                )
    return out


def _layout_conflicts(ev: FileEvidence) -> list[Problem]:
    if ev.shape_layout is None:
        return []
    stated = decide_scale_layout(
        FileEvidence(
            comfy_layers=ev.comfy_layers,
            comfy_quant_layers=ev.comfy_quant_layers,
            modelopt_header=ev.modelopt_header,
            sidecar=ev.sidecar,
        ),
        None,
        False,
        None,
    )
    if stated.assumed or stated.value == ev.shape_layout.value:
        return []
    return [
        Problem(
            WARNING,
            "block-scale shapes contradict the metadata",
            None,
            f"{stated.value} scales ({stated.reason})",
            f"{ev.shape_layout.value}: {ev.shape_layout.reason}",
            "The shapes win for the scale layout",
        )
    ]


def _summary(
    ev: FileEvidence, layers: dict[str, LayerSpec], nibble_order, scale_layout, override_reason: str
) -> tuple[str, list[str]]:
    """The provenance line and the file-level evidence lines."""
    lightx2v = any(LIGHTX2V_ROLES & s.tensors.keys() for s in layers.values())
    scale_weight = any(s.tensors.get("scale", "").endswith(".scale_weight") for s in layers.values())
    quantized = any(s.is_quantized for s in layers.values())
    stated = any("conventions" in s.tensors for s in layers.values())
    provenance = provenance_summary(ev, lightx2v, scale_weight and not ev.legacy_marker, quantized, stated)
    lines = (
        f"ComfyUI metadata: {ev.comfy_where}" if ev.comfy else "",
        f"ModelOpt producer: {ev.modelopt_where}" if ev.modelopt else "",
        "legacy scaled_fp8 marker" if ev.legacy_marker else "",
        f"scale layout {ev.shape_layout.value}: {ev.shape_layout.reason}" if ev.shape_layout else "",
        f"{override_reason}: nibble_order={nibble_order}" if nibble_order else "",
        f"{override_reason}: scale_layout={scale_layout}" if scale_layout else "",
    )
    return provenance, [line for line in lines if line]


def classify_checkpoint(
    source,
    nibble_order: str | None = None,
    scale_layout: str | None = None,
    sidecar_config: dict | None = None,
    scan_block_scales: bool = True,
    find_sidecar_file: bool = True,
    override_reason: str = "caller override",
) -> CheckpointInfo:
    """Classify every Linear of `source` (a path, `SafetensorsFile` or `StateDictSource`).

    nibble_order / scale_layout: caller overrides for every nvfp4 layer, recorded as evidence with
    `override_reason` (e.g. "decided by comparison with <reference>").
    sidecar_config: a parsed `hf_quant_config.json` (else one beside the file, if `find_sidecar_file`).
    scan_block_scales: read the nvfp4 block scales to find NaN / negative values (default; they are 1/16
    of a weight's elements). Every usability check is `reading.validation.checkpoint_problems`.
    """
    if isinstance(source, (str, Path)):
        source = open_source(source, strict=False)  # unmapped tensors of an export become problems
    path = getattr(source, "path", None)
    _check_override(nibble_order, NIBBLE_ORDERS, "nibble order", path)
    _check_override(scale_layout, SCALE_LAYOUTS, "scale layout", path)
    problems: list[Problem] = list(getattr(source, "problems", ()))  # a sharded export's mapping problems
    prefix = detect_prefix(source.keys())
    raws = discover_layers(source, prefix, problems)
    ev = _gather_evidence(source, prefix, raws, sidecar_config, find_sidecar_file)
    problems += ev.problems
    layers = {
        name: _spec(source, raw, ev, nibble_order, scale_layout, override_reason)
        for name, raw in raws.items()
    }
    name = getattr(source, "variant_name", None) or (None if path is None else Path(path).name)
    variant = detect_variant(source, prefix, name, source.metadata)
    checked = checkpoint_problems(source, prefix, layers, variant, scan_block_scales)
    first = checked[:1] if not variant.is_wan else []  # "not a WAN model" is the error to raise
    problems = (
        first + problems + checked[len(first) :] + _metadata_problems(ev, layers) + _layout_conflicts(ev)
    )
    provenance, evidence = _summary(ev, layers, nibble_order, scale_layout, override_reason)
    return CheckpointInfo(
        path=None if path is None else Path(path),
        prefix=prefix,
        metadata=dict(source.metadata),
        layers=layers,
        variant=variant,
        census=_census(source),
        problems=problems,
        provenance=provenance,
        evidence=evidence,
        source=source,
    )
