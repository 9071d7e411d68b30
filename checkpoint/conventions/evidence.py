"""File-level provenance evidence, and the rules that turn it into nvfp4 nibble order and scale layout.

Evidence, strongest first (FORMATS.md §5): a caller override; a scale shape that only one layout can have
(WAN's `head.head`, N = 64 or 192, decides the layout for the whole file); LightX2V keys; a ModelOpt producer
(header `quantization_config` or a `hf_quant_config.json` beside the file); ComfyUI metadata
(`_quantization_metadata` or `.comfy_quant`). A layer's own `wan_nvfp4_conventions` tensor (what ComfyUI saves
for a layer this pack loaded) ranks right after the override (after the shape for the layout). With none of
them the tensors cannot tell, and the layer is read in ComfyUI's convention (what comfy-kitchen-based
converters write) and marked `assumed`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from ...kernels import HIGH_FIRST, LINEAR, LOW_FIRST, SWIZZLED, swizzled_shape
from ..problems import ERROR, WARNING, Problem
from ..reading.json_text import load_json
from ..text import printable

SIDECAR_NAMES = ("hf_quant_config.json",)
MODELOPT_PRODUCER = "modelopt"
LIGHTX2V_KEYS = "alpha / input_global_scale / weight_global_scale / input_absmax"  # how the reasons name them


@dataclass(frozen=True)
class Decision:
    """One decided convention: the value, why, and whether it is an assumption."""

    value: str
    reason: str
    assumed: bool = False


@dataclass
class FileEvidence:
    """What the file (and its folder) says about where it comes from."""

    comfy_layers: dict[str, dict] | None = None  # header `_quantization_metadata` layers (no prefix), if any
    comfy_quant_layers: dict[str, dict] = field(default_factory=dict)  # layer -> its `.comfy_quant` config
    modelopt_header: dict | None = None  # header `quantization_config` with producer modelopt
    modelopt_header_where: str = "header quantization_config"  # a sharded export's is its config.json's
    sidecar: dict | None = None  # hf_quant_config.json with producer modelopt, beside the file
    sidecar_where: str = ""
    legacy_marker_elements: int | None = (
        None  # size of a `scaled_fp8` marker; None: no marker; 2: full precision
    )
    shape_layout: Decision | None = None  # scale layout proven by a layer's scale shape, for the whole file
    header_keys: int = 0  # how many `__metadata__` keys the file has (recognised or not)
    problems: list[Problem] = field(default_factory=list)

    @property
    def comfy(self) -> bool:
        return self.comfy_layers is not None or bool(self.comfy_quant_layers)

    @property
    def legacy_marker(self) -> bool:
        """The file has ComfyUI's legacy `scaled_fp8` marker tensor."""
        return self.legacy_marker_elements is not None

    def comfy_conf(self, name: str) -> dict:
        """Layer `name`'s ComfyUI config: the header's entry, else its `.comfy_quant` (as ComfyUI reads)."""
        conf = (self.comfy_layers or {}).get(name)
        if conf is None:
            conf = self.comfy_quant_layers.get(name)
        return conf if isinstance(conf, dict) else {}

    @property
    def comfy_where(self) -> str:
        return "header _quantization_metadata" if self.comfy_layers is not None else "per-layer .comfy_quant"

    @property
    def modelopt(self) -> bool:
        """ModelOpt producer: in the header, or in a sidecar when the file has no ComfyUI metadata."""
        return self.modelopt_header is not None or (self.sidecar is not None and not self.comfy)

    @property
    def modelopt_where(self) -> str:
        return self.modelopt_header_where if self.modelopt_header is not None else self.sidecar_where


def _is_modelopt(config) -> bool:
    producer = config.get("producer") if isinstance(config, dict) else None
    return isinstance(producer, dict) and producer.get("name") == MODELOPT_PRODUCER


def parse_comfy_header(metadata: dict, prefix: str) -> tuple[dict[str, dict] | None, list[Problem]]:
    """Layers listed in `_quantization_metadata`, keyed by name without prefix."""
    raw = metadata.get("_quantization_metadata")
    if raw is None:
        return None, []
    try:
        layers = load_json(raw)["layers"]
        if not isinstance(layers, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        found = printable(raw, 80)
        problem = Problem(
            ERROR,  # ComfyUI's own loader (the comfyui-native path too) fails on it without naming the file
            "header _quantization_metadata is not valid (vanilla ComfyUI fails on it)",
            "_quantization_metadata",
            '{"format_version": "1.0", "layers": {...}}',
            found,
            kind="header key",
        )
        return {}, [problem]
    return {(k[len(prefix) :] if prefix and k.startswith(prefix) else k): v for k, v in layers.items()}, []


def parse_modelopt_header(metadata: dict) -> tuple[dict | None, list[Problem]]:
    raw = metadata.get("quantization_config")
    if raw is None:
        return None, []
    try:
        config = load_json(raw)
    except json.JSONDecodeError:
        problem = Problem(
            ERROR,  # the producer's statement of the conventions cannot be read: nothing may be assumed
            "header quantization_config is not JSON",
            "quantization_config",
            "JSON",
            printable(raw, 80),
            kind="header key",
        )
        return None, [problem]
    return (config if _is_modelopt(config) else None), []


def find_sidecar(path: str | Path | None) -> tuple[dict | None, str]:
    """A ModelOpt `hf_quant_config.json` beside the file: (config, where) or (None, "")."""
    if path is None:
        return None, ""
    folder = Path(path).parent
    for name in SIDECAR_NAMES:
        candidate = folder / name
        if candidate.is_file():
            try:
                config = load_json(candidate.read_bytes())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if _is_modelopt(config):
                return config, f"{name} beside the file"
    return None, ""


def layout_from_shape(out_features: int, in_features: int, scale_shape: tuple[int, ...]) -> str | None:
    """The scale layout a block-scale shape proves, or None when both layouts have that shape (or neither)."""
    linear = (out_features, in_features // 16)
    swizzled = swizzled_shape(*linear)
    if linear == swizzled:
        return None
    numel = 1
    for d in scale_shape:
        numel *= d
    if tuple(scale_shape) == swizzled or (len(scale_shape) == 1 and numel == swizzled[0] * swizzled[1]):
        return SWIZZLED
    if tuple(scale_shape) == linear or (len(scale_shape) == 1 and numel == linear[0] * linear[1]):
        return LINEAR
    return None


STATED_REASON = "the layer's wan_nvfp4_conventions tensor (ComfyUI saved a model this pack had loaded)"


def decide_nibble_order(
    ev: FileEvidence,
    lightx2v: bool,
    override: str | None,
    override_reason: str = "caller override",
    stated: str | None = None,
) -> Decision:
    if override is not None:
        return Decision(override, override_reason)
    if stated is not None:
        return Decision(stated, STATED_REASON)
    if lightx2v:
        return Decision(
            LOW_FIRST,
            f"LightX2V keys ({LIGHTX2V_KEYS}): LightX2V's quantizer packs low-first "
            "(lightx2v_kernel scaled_nvfp4_quant, cvt.e2m1x2 with the even element low)",
        )
    if ev.modelopt:
        return Decision(LOW_FIRST, f"ModelOpt producer ({ev.modelopt_where}): ModelOpt packs low-first")
    if ev.comfy:
        return Decision(HIGH_FIRST, f"ComfyUI metadata ({ev.comfy_where}): comfy-kitchen packs high-first")
    if ev.shape_layout is not None and ev.shape_layout.value == LINEAR:
        return Decision(
            LOW_FIRST,
            "no metadata; the scales are linear, and every known linear-scale producer (ModelOpt, torchao) "
            "packs low-first",
            assumed=True,
        )
    return Decision(
        HIGH_FIRST,
        "no metadata states it: read in ComfyUI's convention (what comfy-kitchen-based converters write)",
        assumed=True,
    )


def decide_scale_layout(
    ev: FileEvidence,
    own_shape: str | None,
    lightx2v: bool,
    override: str | None,
    override_reason: str = "caller override",
    stated: str | None = None,
) -> Decision:
    if override is not None:
        return Decision(override, override_reason)
    if own_shape is not None:
        return Decision(own_shape, "this layer's block-scale shape fits only this layout")
    if stated is not None:
        return Decision(stated, STATED_REASON)
    if ev.shape_layout is not None:
        return ev.shape_layout
    if ev.modelopt and ev.comfy:
        return Decision(
            SWIZZLED, "ModelOpt ComfyUI single-file export (ModelOpt producer + ComfyUI metadata)"
        )
    if ev.modelopt:
        return Decision(LINEAR, f"ModelOpt producer ({ev.modelopt_where}): ModelOpt stores linear scales")
    if ev.comfy:
        return Decision(
            SWIZZLED, f"ComfyUI metadata ({ev.comfy_where}): comfy-kitchen stores swizzled scales"
        )
    if lightx2v:
        return Decision(
            SWIZZLED,
            f"LightX2V keys ({LIGHTX2V_KEYS}): LightX2V's quantizer writes 128x4-swizzled scales "
            "(lightx2v_kernel scaled_nvfp4_quant)",
        )
    return Decision(
        SWIZZLED,
        "no metadata states it: read in ComfyUI's convention (swizzled); WAN shapes fit both layouts",
        assumed=True,
    )


def file_shape_layout(decisive: dict[str, str]) -> tuple[Decision | None, list[Problem]]:
    """One layout proven for the whole file by the layers whose scale shapes decide it (e.g. `head.head`)."""
    layouts = set(decisive.values())
    if not layouts:
        return None, []
    if len(layouts) > 1:
        found = ", ".join(f"{name}: {layout}" for name, layout in sorted(decisive.items()))
        problem = Problem(
            WARNING,
            "block-scale shapes prove different layouts in one file",
            None,
            "one scale layout for every layer",
            found,
        )
        return None, [problem]
    layout = layouts.pop()
    names = sorted(decisive)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    reason = f"decided for the whole file by the block-scale shape of {shown} (fits only {layout})"
    return Decision(layout, reason), []


def provenance_summary(
    ev: FileEvidence, lightx2v: bool, kijai: bool, quantized: bool, stated: bool = False
) -> str:
    """One line naming where the file comes from, from its evidence."""
    parts = []
    if ev.modelopt and ev.comfy:
        parts.append(
            "ModelOpt ComfyUI single-file export (_quantization_metadata + ModelOpt quantization_config)"
        )
    elif ev.modelopt:
        parts.append(f"ModelOpt ({ev.modelopt_where})")
    elif ev.comfy:
        parts.append(f"ComfyUI ({ev.comfy_where})")
    if lightx2v:
        parts.append(f"LightX2V ({LIGHTX2V_KEYS})")
    if ev.legacy_marker:
        parts.append("legacy ComfyUI scaled_fp8 marker")
    if kijai:
        parts.append("Kijai-style .scale_weight without scaled_fp8 marker")
    if stated:
        parts.append("saved by ComfyUI from a model this pack loaded (per-layer wan_nvfp4_conventions)")
    if not parts and quantized and ev.header_keys:
        parts.append(
            f"no recognised provenance metadata ({ev.header_keys} other header key(s): see Header metadata)"
        )
    elif not parts:
        parts.append("no provenance metadata (third-party converter?)" if quantized else "unquantized")
    return " + ".join(parts)
