"""The two verdicts of the inspector: what vanilla ComfyUI 0.29 does with a file, and what this pack does.

ComfyUI's behaviour is decided per layer from the same facts ComfyUI's loader looks at (COMFYUI.md §1.2-§1.5:
`_quantization_metadata` / `.comfy_quant`, the legacy `scaled_fp8` marker and its `.scale_weight` rename,
module shapes) combined with what the classifier found the layer really is. The file-level outcome is the
worst layer outcome: a refusal beats silent corruption beats a native load.
"""

import json
from dataclasses import dataclass, field

from ...kernels import HIGH_FIRST, LINEAR, SWIZZLED, swizzled_shape
from ..layers import FLOAT, FP8, FP8_SCALED, NVFP4, LayerSpec, read_json_marker
from ..reading.json_text import load_json

# What vanilla ComfyUI does with a file (the words of issue #2 / COMFYUI.md §1.5).
LOADS_NATIVELY = "loads_natively"
LOADS_SILENTLY_WRONG = "loads_silently_wrong"
REFUSES_SIZE_MISMATCH = "refuses_size_mismatch"
REFUSES_ERROR = "refuses_error"
NOT_DETECTED = "not_detected"

COMFYUI_OUTCOMES = {
    LOADS_NATIVELY: "loads natively (correct output)",
    LOADS_SILENTLY_WRONG: "loads silently with wrong output (no error, noisy or broken video)",
    REFUSES_SIZE_MISMATCH: "refuses to load: size mismatch (packed weights without ComfyUI metadata)",
    REFUSES_ERROR: "refuses to load with an error",
    NOT_DETECTED: "refuses: could not detect the model type",
}
# worst first: the file-level outcome is the first one any layer has
_SEVERITY = (NOT_DETECTED, REFUSES_SIZE_MISMATCH, REFUSES_ERROR, LOADS_SILENTLY_WRONG, LOADS_NATIVELY)

# What this pack does.
PACK_LOADS = "loads"
PACK_LOADS_ASSUMED = "loads_with_assumed_conventions"
PACK_REFUSES = "refuses"

PACK_OUTCOMES = {
    PACK_LOADS: "loads: every layer's format and conventions are decided by the file",
    PACK_LOADS_ASSUMED: "loads, reading some layers in an assumed convention (see evidence)",
    PACK_REFUSES: "refuses: the file has problems that make layers unreadable",
}

# ComfyUI 0.29 `QUANT_ALGOS` formats (comfy/quant_ops.py at 4f874c5e)
COMFY_QUANT_FORMATS = ("nvfp4", "float8_e4m3fn", "float8_e5m2", "mxfp8", "int8_tensorwise", "convrot_w4a4")


@dataclass(frozen=True)
class Verdict:
    """One verdict: an outcome word, a one-line summary and the per-layer reasons behind it."""

    outcome: str
    summary: str
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"outcome": self.outcome, "summary": self.summary, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class ComfyView:
    """What ComfyUI's loader sees: layer -> comfy_quant config, and whether the legacy conversion runs."""

    configs: dict[str, dict] = field(default_factory=dict)
    legacy_fp8: bool = False


def comfy_view(source, prefix: str, layers: dict[str, LayerSpec]) -> ComfyView:
    """Replay `comfy.utils.convert_old_quants` on names (reading only the small `.comfy_quant` tensors)."""
    configs: dict[str, dict] = {}
    raw = source.metadata.get("_quantization_metadata")
    if raw is not None:
        try:
            listed = load_json(raw).get("layers", {})
        except (json.JSONDecodeError, AttributeError):
            listed = {}
        for stem, conf in listed.items() if isinstance(listed, dict) else ():
            name = stem[len(prefix) :] if prefix and stem.startswith(prefix) else stem
            configs[name] = conf if isinstance(conf, dict) else {}
    legacy = raw is None and f"{prefix}scaled_fp8" in set(source.keys())
    for name, spec in layers.items():
        key = spec.tensors.get("comfy_quant")
        if key is not None:
            configs[name] = read_json_marker(source.tensor(key))  # ComfyUI fails on anything but an object
        if legacy and spec.tensors.get("scale", "").endswith(".scale_weight"):
            configs.setdefault(name, {"format": "float8_e4m3fn"})
    return ComfyView(configs, legacy)


def _comfy_nvfp4(spec: LayerSpec, conf: dict | None) -> tuple[str, str]:
    if conf is None:
        return REFUSES_SIZE_MISMATCH, "packed nvfp4 weight without ComfyUI metadata: uint8 [N, K/2] vs [N, K]"
    if conf.get("format") != "nvfp4":
        return REFUSES_ERROR, f"packed nvfp4 weight marked as {conf.get('format')!r}"
    has_scales = "block_scale" in spec.tensors and "global_scale" in spec.tensors
    if not has_scales:
        return REFUSES_ERROR, "ComfyUI raises 'Missing NVFP4 scales' (needs weight_scale and weight_scale_2)"
    rows, cols = spec.out_features, spec.in_features // 16
    if spec.scale_layout == LINEAR and swizzled_shape(rows, cols) != (rows, cols):
        return REFUSES_ERROR, f"ComfyUI reads a [{rows}, {cols}] linear block scale as swizzled and fails"
    if (spec.nibble_order, spec.scale_layout) != (HIGH_FIRST, SWIZZLED):
        return (
            LOADS_SILENTLY_WRONG,
            f"ComfyUI reads high_first + swizzled, the file is {spec.nibble_order} + {spec.scale_layout}",
        )
    return LOADS_NATIVELY, "ComfyUI-native nvfp4"


def _comfy_fp8(spec: LayerSpec, conf: dict | None) -> tuple[str, str]:
    scaled = spec.format == FP8_SCALED
    if conf is None:
        if scaled:
            return (
                LOADS_SILENTLY_WRONG,
                "fp8 weight upcast without its scale (scale tensor ignored as unexpected)",
            )
        return LOADS_NATIVELY, "plain fp8 weight, upcast"
    fmt = conf.get("format")
    if fmt not in COMFY_QUANT_FORMATS:
        return REFUSES_ERROR, f"format {fmt!r} is not in ComfyUI 0.29's QUANT_ALGOS"
    if not fmt.startswith("float8"):
        return REFUSES_ERROR, f"fp8 weight marked as {fmt!r}"
    if not scaled:
        return REFUSES_ERROR, "marked float8 but has no weight_scale"
    if spec.fp8_granularity == "row":
        return LOADS_SILENTLY_WRONG, "per-row scale given to ComfyUI's per-tensor fp8 layout"
    return LOADS_NATIVELY, f"ComfyUI {fmt}"


def _comfy_float(spec: LayerSpec, conf: dict | None) -> tuple[str, str]:
    if conf is not None and conf.get("format") in ("nvfp4", "mxfp8"):
        return REFUSES_ERROR, f"float weight marked as {conf.get('format')!r}"
    return LOADS_NATIVELY, "float weight"


_COMFY_BY_FORMAT = {NVFP4: _comfy_nvfp4, FP8_SCALED: _comfy_fp8, FP8: _comfy_fp8, FLOAT: _comfy_float}


def comfyui_verdict(view: ComfyView, layers: dict[str, LayerSpec], is_wan: bool) -> Verdict:
    """What vanilla ComfyUI 0.29 (with comfy-kitchen) would do with the file."""
    if not is_wan:
        return Verdict(NOT_DETECTED, COMFYUI_OUTCOMES[NOT_DETECTED], ("no WAN key structure",))
    per_outcome: dict[str, list[str]] = {}
    for name, spec in layers.items():
        outcome, why = _COMFY_BY_FORMAT[spec.format](spec, view.configs.get(name))
        per_outcome.setdefault(outcome, []).append(f"{name}: {why}")
    outcome = next((o for o in _SEVERITY if o in per_outcome), LOADS_NATIVELY)
    reasons = per_outcome.get(outcome, [])
    summary = COMFYUI_OUTCOMES[outcome]
    if outcome != LOADS_NATIVELY:
        summary += f" ({len(reasons)} of {len(layers)} Linear layers)"
    return Verdict(outcome, summary, tuple(reasons))


def _grouped(layers: dict[str, LayerSpec]) -> list[str]:
    """Assumed layers grouped by their evidence: `N layers (e.g. name): evidence`."""
    groups: dict[str, list[str]] = {}
    for name, spec in layers.items():
        if spec.assumed:
            groups.setdefault(spec.evidence, []).append(name)
    return [f"{len(names)} layer(s) (e.g. {names[0]}): {evidence}" for evidence, names in groups.items()]


def pack_verdict(layers: dict[str, LayerSpec], errors: list[str], is_wan: bool) -> Verdict:
    """What this pack does: refuses on errors, else loads (saying which conventions are assumed)."""
    if not is_wan:
        return Verdict(PACK_REFUSES, "refuses: not a WAN diffusion model", tuple(errors))
    if errors:
        return Verdict(PACK_REFUSES, PACK_OUTCOMES[PACK_REFUSES], tuple(errors))
    counts: dict[str, int] = {}
    for spec in layers.values():
        counts[spec.format] = counts.get(spec.format, 0) + 1
    census = ", ".join(f"{fmt}: {n}" for fmt, n in sorted(counts.items()))
    assumed = _grouped(layers)
    if assumed:
        hint = (
            "if the output is noise, override nibble_order / scale_layout, or decide them with "
            "`wan-nvfp4 inspect FILE --reference SAME_MODEL_BF16`"
        )
        summary = f"{PACK_OUTCOMES[PACK_LOADS_ASSUMED]} ({census}); {hint}"
        return Verdict(PACK_LOADS_ASSUMED, summary, tuple(assumed))
    return Verdict(PACK_LOADS, f"{PACK_OUTCOMES[PACK_LOADS]} ({census})")
