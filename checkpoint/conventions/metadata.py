"""The file's own `__metadata__`: every key with its size, an escaped preview, what the pack did with it, and
weak hints.

The pack decides conventions from two header keys (`_quantization_metadata`, a ModelOpt
`quantization_config`; evidence.py) and reads `config` for the variant notes. Every other key is only listed,
so the user can read it. Some keys and values name a producer (`comfy-kitchen`, ModelOpt, LightX2V, ...):
those are reported as **hints**, with whether they agree with the conventions the layers are read in, and are
never used to decide anything (a string in a free-form field is not evidence of how the bytes were packed).

    listing = list_metadata(info)      # info: a classified CheckpointInfo
    listing.to_json(); listing.to_lines()
"""

import json
from dataclasses import dataclass

from ...kernels import HIGH_FIRST, LINEAR, LOW_FIRST, SWIZZLED
from ..layers import NVFP4
from ..text import printable

PREVIEW_CHARS = 120
PACK_KEY = "wan_nvfp4"  # what this pack's convert / repair write (writing.output_formats.PROVENANCE_KEY)
KEY_CHARS = 80

EVIDENCE = "evidence"  # a decision in this report cites the key
READ = "read"  # the pack reads the key, but no decision here rests on it
NOT_USED = "not used"

# header keys the pack reads -> (what it is, how the evidence lines cite it when it decided something)
KNOWN_KEYS = {
    "_quantization_metadata": (
        "ComfyUI quantization metadata: per-layer formats",
        "header _quantization_metadata",
    ),
    "quantization_config": (
        "quantization config: evidence when its producer is ModelOpt",
        "header quantization_config",
    ),
    "config": ("model config: ComfyUI builds the model from its `transformer` section", None),
}

# producer -> (its name, the NVFP4 conventions its files use: FORMATS.md §5, README capability matrix)
PRODUCER_CONVENTIONS = {
    "comfyui": ("comfy-kitchen (ComfyUI)", (HIGH_FIRST, SWIZZLED)),
    "modelopt": ("ModelOpt", (LOW_FIRST, LINEAR)),
    "lightx2v": ("LightX2V", (LOW_FIRST, SWIZZLED)),
    "torchao": ("torchao", (LOW_FIRST, LINEAR)),
}

# words in a key or value (lower case) -> (producer, hint)
WORD_HINTS = (
    (("comfy-kitchen", "comfy_kitchen"), "comfyui", "mentions comfy-kitchen"),
    (("modelopt",), "modelopt", "mentions ModelOpt"),
    (("lightx2v",), "lightx2v", "mentions LightX2V"),
    (("torchao",), "torchao", "mentions torchao"),
    (
        ("kijai", "wanvideowrapper"),
        "kijai",
        "mentions Kijai / WanVideoWrapper: Kijai's FP8 files carry .scale_weight per layer (read per tensor)",
    ),
    (
        ("diffusers",),
        "diffusers",
        "mentions diffusers: a diffusers export names its layers differently from ComfyUI's WAN",
    ),
    (("wannvfp4",), "wan-nvfp4", "mentions this pack's nodes: saved from a graph that used them"),
)


# what a key says by itself: (rule on key and value, producer, hint)
KEY_HINTS = (
    (
        lambda key, value: key == "format" and value.strip() == "pt",
        "save_pretrained",
        "`format: pt` is what transformers / diffusers save_pretrained (and ComfyUI's CLIP save node) write; "
        "it says nothing about quantization",
    ),
    (
        lambda key, value: key.startswith("modelspec."),
        "modelspec",
        "ModelSpec model card key (ComfyUI's checkpoint save, kohya sd-scripts and others): identity only, "
        "no quantization convention",
    ),
    (
        lambda key, value: key in ("prompt", "workflow"),
        "comfyui-save",
        "ComfyUI's save nodes store the graph that made the file here",
    ),
    (lambda key, value: key.startswith("ss_"), "kohya", "kohya sd-scripts training metadata"),
    (
        lambda key, value: key == PACK_KEY,
        "wan-nvfp4",
        "written by this pack's convert or repair (tool, version, job and source file name)",
    ),
)


@dataclass(frozen=True)
class MetadataEntry:
    key: str
    value: str
    status: str
    role: str | None

    @property
    def bytes(self) -> int:
        return len(self.value.encode("utf-8", "surrogatepass"))

    def to_json(self) -> dict:
        return {
            "key": printable(self.key, KEY_CHARS),
            "bytes": self.bytes,
            "chars": len(self.value),
            "preview": printable(self.value, PREVIEW_CHARS),
            "truncated": len(printable(self.value, PREVIEW_CHARS + 1)) > PREVIEW_CHARS,
            "status": self.status,
            "role": self.role,
        }


@dataclass(frozen=True)
class MetadataHint:
    key: str
    producer: str
    text: str
    agreement: str | None  # how the hint compares with the conventions the layers are read in

    def to_json(self) -> dict:
        conventions = PRODUCER_CONVENTIONS.get(self.producer, (None, None))[1]
        return {
            "key": printable(self.key, KEY_CHARS),
            "producer": self.producer,
            "hint": self.text,
            "conventions": None
            if conventions is None
            else {"nibble_order": conventions[0], "scale_layout": conventions[1]},
            "agreement": self.agreement,
        }

    def line(self) -> str:
        return f"{printable(self.key, KEY_CHARS)}: {self.text}" + (
            f"; {self.agreement}" if self.agreement else ""
        )


@dataclass(frozen=True)
class MetadataListing:
    entries: tuple[MetadataEntry, ...]
    hints: tuple[MetadataHint, ...]

    def to_json(self) -> dict:
        return {
            "keys": [e.to_json() for e in self.entries],
            "total_bytes": sum(e.bytes for e in self.entries),
            "hints": [h.to_json() for h in self.hints],
        }

    def to_lines(self) -> list[str]:
        if not self.entries:
            return ["Header metadata: none"]
        total = _size(sum(e.bytes for e in self.entries))
        lines = [f"Header metadata: {len(self.entries)} key(s), {total}"]
        for e in self.entries:
            role = f": {e.role}" if e.role else ""
            lines.append(f"  {printable(e.key, KEY_CHARS)} ({_size(e.bytes)}) {e.status}{role}")
            lines.append(f"      {printable(e.value, PREVIEW_CHARS)}")
        if self.hints:
            lines.append("  hints (weak: never used to decide a convention):")
            lines += [f"    - {h.line()}" for h in self.hints]
        return lines


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def _cited(info) -> str:
    """All the evidence text of the report (file lines and every layer's)."""
    return "\n".join([*info.evidence, *(spec.evidence for spec in info.layers.values())])


def _status(key: str, cited: str) -> tuple[str, str | None]:
    known = KNOWN_KEYS.get(key)
    if known is None:
        return NOT_USED, None
    role, citation = known
    return (EVIDENCE if citation is not None and citation in cited else READ), role


def _quant_config_hint(value: str) -> tuple[str, str] | None:
    """A `quantization_config` that did not count as ModelOpt evidence: name what it claims to be."""
    try:
        config = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(config, dict):
        return None
    producer = config.get("producer")
    claim = producer.get("name") if isinstance(producer, dict) else config.get("quant_method")
    if not isinstance(claim, str):
        return None
    return (
        "other",
        f"quantization_config without a ModelOpt producer entry ({printable(claim, 40)}): not read",
    )


def _agreement(producer: str, info) -> str | None:
    """What the hinted producer's convention means next to how this report reads the nvfp4 layers."""
    known = PRODUCER_CONVENTIONS.get(producer)
    nvfp4 = [s for s in info.layers.values() if s.format == NVFP4]
    if known is None or not nvfp4:
        return None
    name, conventions = known
    expected = " + ".join(conventions)
    differs = [s for s in nvfp4 if (s.nibble_order, s.scale_layout) != conventions]
    if not differs:
        return f"{name} writes {expected}: agrees with how the nvfp4 layers are read"
    shown = ", ".join(sorted({f"{s.nibble_order} + {s.scale_layout}" for s in differs}))
    if any(s.assumed for s in differs):
        return (
            f"{name} writes {expected}, but {len(differs)} nvfp4 layer(s) are read as {shown} [ASSUMED]: "
            "if the output is noise, decide with a reference model or override the conventions"
        )
    return f"{name} writes {expected}; stronger evidence decided {shown} for {len(differs)} nvfp4 layer(s)"


def _hints(key: str, value: str, status: str, info) -> list[MetadataHint]:
    found = [(producer, hint) for rule, producer, hint in KEY_HINTS if rule(key, value)]
    if key == "quantization_config" and status != EVIDENCE:
        claim = _quant_config_hint(value)
        if claim is not None:
            found.append(claim)
    if status != EVIDENCE:  # a key that decided something needs no hint about itself
        text = f"{key}\n{value}".lower()
        found += [(producer, hint) for words, producer, hint in WORD_HINTS if any(w in text for w in words)]
    return [MetadataHint(key, producer, hint, _agreement(producer, info)) for producer, hint in found]


def list_metadata(info) -> MetadataListing:
    """Every `__metadata__` key of a classified `CheckpointInfo`, in file order, and the hints."""
    cited = _cited(info)
    entries, hints = [], []
    for key, value in info.metadata.items():
        status, role = _status(key, cited)
        entries.append(MetadataEntry(key, value, status, role))
        hints += _hints(key, value, status, info)
    return MetadataListing(tuple(entries), tuple(hints))
