"""Which WAN model a state dict is, from key names and out-dims (packing never changes them).

Mirrors ComfyUI 0.29's `detect_unet_config` WAN branch (COMFYUI.md §2.3) for the structure, then names the
released model: 2.1 T2V 1.3B / 14B, I2V and FLF2V 14B, 2.2 TI2V-5B, 2.2 T2V / I2V A14B, VACE, Fun control /
camera, S2V, HuMo, Animate, SCAIL, WanDancer. Some releases have identical tensors (2.1 T2V-14B and 2.2
T2V-A14B; a 2.1 I2V file without its CLIP branch and 2.2 I2V-A14B): then the file name decides when it says so
(`wan2.2`, `a14b`, `high_noise`, ...), and otherwise the report says the variant is ambiguous. Tiny or
custom models with non-standard dims get their structural variant and a flag.
"""

import json
import math
import re
from dataclasses import dataclass, field

import torch

from .json_text import load_json

# ComfyUI model_type by marker key, in the order ComfyUI tests them (model_detection.py)
MODEL_TYPE_MARKERS = (
    ("vace_patch_embedding.weight", "vace"),
    ("control_adapter.conv.weight", "camera"),
    ("casual_audio_encoder.encoder.final_linear.weight", "s2v"),
    ("audio_proj.audio_proj_glob_1.layer.bias", "humo"),
    ("face_adapter.fuser_blocks.0.k_norm.weight", "animate"),
    ("patch_embedding_mask.weight", "scail2"),
    ("patch_embedding_pose.weight", "scail"),
    ("patch_embedding_global.weight", "wandancer"),
    ("img_emb.proj.0.bias", "i2v"),
)
IMG_EMB_KEY = "img_emb.proj.0.bias"
# key -> the rank `read_dims` needs (ComfyUI indexes these shapes the same way)
MIN_RANKS = {
    "head.modulation": 1,
    "head.head.weight": 1,
    "blocks.0.ffn.0.weight": 1,
    "patch_embedding.weight": 2,
    "img_emb.emb_pos": 2,
}

# ComfyUI supported_models WAN configs in list order: (class, required unet_config entries)
COMFY_CONFIGS = (
    ("WAN22_T2V", {"model_type": "t2v", "out_dim": 48}),
    ("WAN21_T2V", {"model_type": "t2v"}),
    ("WAN21_I2V", {"model_type": "i2v", "in_dim": 36}),
    ("WAN21_FunControl2V", {"model_type": "i2v", "in_dim": 48}),
    ("WAN21_Vace", {"model_type": "vace"}),
    ("WAN21_Camera", {"model_type": "camera", "in_dim": 32}),
    ("WAN22_Camera", {"model_type": "camera_2.2", "in_dim": 36}),
    ("WAN22_S2V", {"model_type": "s2v"}),
    ("WAN21_HuMo", {"model_type": "humo"}),
    ("WAN22_Animate", {"model_type": "animate"}),
    ("WAN21_SCAIL", {"model_type": "scail"}),
    ("WAN21_SCAIL2", {"model_type": "scail2"}),
    ("WAN22_WanDancer", {"model_type": "wandancer", "in_dim": 36}),
)

# released sizes: dim -> (size tag, ffn_dim, num_layers)
SIZE_1_3B = {1536: ("1.3b", 8960, 30)}
SIZE_14B = {5120: ("14b", 13824, 40)}
SIZE_A14B = {5120: ("a14b", 13824, 40)}
SIZE_5B = {3072: ("5b", 14336, 30)}
SIZE_HUMO = {1536: ("1.7b", 8960, 30), 5120: ("17b", 13824, 40)}  # HuMo: Wan2.1 DiT + audio modules


@dataclass(frozen=True)
class Family:
    """Released WAN models sharing one structure. `in_dim`/`img_emb`/`emb_pos` None = not checked."""

    prefix: str
    model_type: str
    in_dim: int | None
    out_dim: int
    sizes: dict
    img_emb: bool | None = False
    emb_pos: bool | None = False


# order = preference when tensors cannot tell releases apart
FAMILIES = (
    Family("wan2.1-t2v", "t2v", 16, 16, SIZE_1_3B | SIZE_14B),
    Family("wan2.2-t2v", "t2v", 16, 16, SIZE_A14B),
    Family("wan2.2-ti2v", "t2v", 48, 48, SIZE_5B),
    Family("wan2.2-i2v", "t2v", 36, 16, SIZE_A14B),
    Family("wan2.1-i2v", "i2v", 36, 16, SIZE_14B, img_emb=True),
    Family("wan2.1-flf2v", "i2v", 36, 16, SIZE_14B, img_emb=True, emb_pos=True),
    Family("wan2.1-fun-control", "i2v", 48, 16, SIZE_1_3B | SIZE_14B, img_emb=True),
    Family("wan2.1-vace", "vace", 16, 16, SIZE_1_3B | SIZE_14B),
    Family("wan2.1-fun-camera", "camera", 32, 16, SIZE_1_3B | SIZE_14B, img_emb=True),
    Family("wan2.2-fun-camera", "camera_2.2", 36, 16, SIZE_A14B),
    Family("wan2.2-s2v", "s2v", None, 16, SIZE_14B, img_emb=None, emb_pos=None),
    Family("wan2.1-humo", "humo", None, 16, SIZE_HUMO, img_emb=None, emb_pos=None),
    Family("wan2.2-animate", "animate", None, 16, SIZE_14B, img_emb=None, emb_pos=None),
    Family("wan2.1-scail", "scail", None, 16, SIZE_14B, img_emb=None, emb_pos=None),
    Family("wan2.1-scail2", "scail2", None, 16, SIZE_14B, img_emb=None, emb_pos=None),
    Family("wan2.2-wandancer", "wandancer", 36, 16, SIZE_14B, img_emb=None, emb_pos=None),
)

SAME_TENSOR_NOTES = {
    frozenset({"wan2.1-t2v-14b", "wan2.2-t2v-a14b"}): "Wan2.1 T2V-14B and each Wan2.2 T2V-A14B expert have "
    "identical tensors; ComfyUI loads both as WAN21_T2V",
}

# file-name hints: kind -> [(pattern, value)]
_SEP = r"(?<![a-z0-9]){}(?![a-z0-9])"
FILENAME_HINTS = {
    "generation": [
        (re.compile(r"wan[\s_.-]?2[\s_.-]?1"), "wan2.1"),
        (re.compile(r"wan[\s_.-]?2[\s_.-]?2"), "wan2.2"),
    ],
    "size": [
        (re.compile(_SEP.format(r"a14b")), "a14b"),
        (re.compile(_SEP.format(r"14b")), "14b"),
        (re.compile(_SEP.format(r"1[._]3b")), "1.3b"),
        (re.compile(_SEP.format(r"5b")), "5b"),
        (re.compile(_SEP.format(r"17b")), "17b"),
        (re.compile(_SEP.format(r"1[._]7b")), "1.7b"),
    ],
    "expert": [
        (re.compile(_SEP.format(r"high(?:[_-]?noise)?")), "high_noise"),
        (re.compile(_SEP.format(r"low(?:[_-]?noise)?")), "low_noise"),
    ],
}
# an A14B expert name implies Wan2.2 A14B
_EXPERT_IMPLIES = {"generation": "wan2.2", "size": "a14b"}


@dataclass(frozen=True)
class WanDims:
    dim: int
    ffn_dim: int
    num_layers: int
    num_heads: int
    in_dim: int
    out_dim: int
    text_dim: int | None = None
    freq_dim: int | None = None
    vace_layers: int = 0
    flf_pos_tokens: int | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class WanVariant:
    """The detected WAN model.

    id: e.g. `wan2.2-ti2v-5b` (`unknown` when the keys are not a WAN DiT); model_type / comfyui_config: what
    ComfyUI 0.29 detects (`comfyui_config` None when ComfyUI has no config for it); candidates: every release
    consistent with the tensors (and the file name, when it says so); ambiguous: several candidates remain;
    standard_dims: the dims are those of a released model; expert: `high_noise`/`low_noise` (from the name).
    """

    id: str
    is_wan: bool
    model_type: str | None = None
    comfyui_config: str | None = None
    dims: WanDims | None = None
    candidates: tuple[str, ...] = ()
    ambiguous: bool = False
    standard_dims: bool = False
    expert: str | None = None
    evidence: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "is_wan": self.is_wan,
            "model_type": self.model_type,
            "comfyui_config": self.comfyui_config,
            "dims": None if self.dims is None else self.dims.to_json(),
            "candidates": list(self.candidates),
            "ambiguous": self.ambiguous,
            "standard_dims": self.standard_dims,
            "expert": self.expert,
            "evidence": self.evidence,
            "notes": list(self.notes),
        }


def _count_blocks(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _in_features(source, key: str) -> int | None:
    """In-features of a Linear weight, undoing nvfp4 packing (uint8 `[N, K/2]`)."""
    if key not in set(source.keys()):
        return None
    shape = source.shape(key)
    if len(shape) != 2:
        return None
    return shape[1] * 2 if source.dtype(key) == torch.uint8 else shape[1]


def read_dims(source, prefix: str = "") -> WanDims:
    """WAN dims the way ComfyUI reads them: out-dims of Linear weights plus the Conv3d in-dim."""
    keys = list(source.keys())
    dim = source.shape(f"{prefix}head.modulation")[-1]
    flf = f"{prefix}img_emb.emb_pos"
    return WanDims(
        dim=dim,
        ffn_dim=source.shape(f"{prefix}blocks.0.ffn.0.weight")[0],
        num_layers=_count_blocks(keys, f"{prefix}blocks."),
        num_heads=dim // 128,
        in_dim=source.shape(f"{prefix}patch_embedding.weight")[1],
        out_dim=source.shape(f"{prefix}head.head.weight")[0] // 4,
        text_dim=_in_features(source, f"{prefix}text_embedding.0.weight"),
        freq_dim=_in_features(source, f"{prefix}time_embedding.0.weight"),
        vace_layers=_count_blocks(keys, f"{prefix}vace_blocks."),
        flf_pos_tokens=source.shape(flf)[1] if flf in keys else None,
    )


def _model_type(keys: set[str], prefix: str) -> str:
    for marker, model_type in MODEL_TYPE_MARKERS:
        if prefix + marker in keys:
            if model_type == "camera" and prefix + IMG_EMB_KEY not in keys:
                return "camera_2.2"
            return model_type
    return "t2v"


def comfyui_config_for(model_type: str, in_dim: int, out_dim: int) -> str | None:
    """The ComfyUI 0.29 supported-model class that would take this structure (first match, like ComfyUI)."""
    facts = {"model_type": model_type, "in_dim": in_dim, "out_dim": out_dim}
    for name, required in COMFY_CONFIGS:
        if all(facts[k] == v for k, v in required.items()):
            return name
    return None


def _family_fits(f: Family, model_type: str, dims: WanDims, img_emb: bool, emb_pos: bool) -> bool:
    checks = (
        (f.model_type, model_type),
        (f.in_dim, dims.in_dim),
        (f.out_dim, dims.out_dim),
        (f.img_emb, img_emb),
        (f.emb_pos, emb_pos),
    )
    return all(want is None or want == have for want, have in checks)


def _candidates(families, dims: WanDims) -> tuple[list[str], bool]:
    """Release ids of `families` whose dims match; all sizes (standard=False) when none matches."""
    exact = []
    for f in families:
        size = f.sizes.get(dims.dim)
        if size is not None and (size[1], size[2]) == (dims.ffn_dim, dims.num_layers):
            exact.append(f"{f.prefix}-{size[0]}")
    if exact:
        return exact, True
    return [f"{f.prefix}-{tag}" for f in families for tag, _, _ in f.sizes.values()], False


def filename_hints(filename: str | None) -> dict[str, str]:
    """Hints the file name gives: generation (`wan2.1`/`wan2.2`), size, expert (`high_noise`/`low_noise`)."""
    if not filename:
        return {}
    name = filename.lower()
    hints = {}
    for kind, patterns in FILENAME_HINTS.items():
        for pattern, value in patterns:
            if pattern.search(name):
                hints[kind] = value
                break
    if "expert" in hints:
        for kind, value in _EXPERT_IMPLIES.items():
            hints.setdefault(kind, value)
    return hints


def _hint_matches(candidate: str, kind: str, value: str) -> bool:
    if kind == "generation":
        return candidate.startswith(value + "-")
    if kind == "size":  # an A14B expert is a 14B model too
        return candidate.endswith("-" + value) or (value == "14b" and candidate.endswith("-a14b"))
    return candidate.endswith("-a14b")  # expert


def _apply_hints(
    candidates: list[str], hints: dict[str, str], notes: list[str]
) -> tuple[list[str], list[str]]:
    used = []
    for kind, value in hints.items():
        kept = [c for c in candidates if _hint_matches(c, kind, value)]
        if kept:
            if len(kept) < len(candidates):
                used.append(f"{kind} {value!r}")
            candidates = kept
        else:
            notes.append(f"file name says {kind} {value!r}, the tensors say otherwise: tensors win")
    return candidates, used


def _nearest(candidates: list[str], dim: int) -> str:
    """For non-standard dims: the candidate whose released dim is nearest (log scale)."""
    sizes = {tag: d for f in FAMILIES for d, (tag, _, _) in f.sizes.items()}

    def distance(c: str) -> float:
        return abs(math.log(sizes[c.rsplit("-", 1)[1]] / max(dim, 1)))

    return min(candidates, key=distance)


def _dims_notes(dims: WanDims) -> list[str]:
    notes = []
    if dims.dim % 128:
        notes.append(f"dim {dims.dim} is not a multiple of 128: ComfyUI derives num_heads = dim // 128")
    if dims.text_dim not in (None, 4096):
        notes.append(f"text_embedding in-dim {dims.text_dim}, ComfyUI hard-codes 4096")
    if dims.freq_dim not in (None, 256):
        notes.append(f"time_embedding in-dim {dims.freq_dim}, ComfyUI hard-codes 256")
    return notes


def detect_variant(source, prefix: str = "", filename: str | None = None, metadata=None) -> WanVariant:
    """Detect the WAN variant of `source` (any object with `keys()` and `shape(key)`)."""
    keys = set(source.keys())
    required = ("head.modulation", "head.head.weight", "blocks.0.ffn.0.weight", "patch_embedding.weight")
    if not all(prefix + k in keys for k in required):
        missing = [k for k in required if prefix + k not in keys]
        return WanVariant("unknown", False, evidence=f"missing WAN keys: {', '.join(missing)}")
    odd = [
        f"{k} {list(source.shape(prefix + k))}"
        for k, rank in MIN_RANKS.items()
        if prefix + k in keys and len(source.shape(prefix + k)) < rank
    ]
    if odd:
        return WanVariant("unknown", False, evidence=f"WAN keys with unexpected shapes: {', '.join(odd)}")
    dims = read_dims(source, prefix)
    model_type = _model_type(keys, prefix)
    img_emb = prefix + IMG_EMB_KEY in keys
    families = [
        f for f in FAMILIES if _family_fits(f, model_type, dims, img_emb, dims.flf_pos_tokens is not None)
    ]
    notes = _dims_notes(dims)
    config = comfyui_config_for(model_type, dims.in_dim, dims.out_dim)
    if config is None:
        notes.append(f"ComfyUI 0.29 has no WAN config for model_type {model_type} with in_dim {dims.in_dim}")
    if metadata and "config" in metadata:
        notes.append("header `config` overrides ComfyUI's detection with its `transformer` section")
        try:
            load_json(metadata["config"])
        except json.JSONDecodeError:
            notes.append("header `config` is not valid JSON")
    structure = f"{model_type}, in/out {dims.in_dim}/{dims.out_dim} channels" + (
        ", img_emb" if img_emb else ""
    )
    structure += ", emb_pos" if dims.flf_pos_tokens is not None else ""
    if not families:
        evidence = f"WAN structure ({structure}) matches no released model"
        return WanVariant(
            f"wan-{model_type}", True, model_type, config, dims, evidence=evidence, notes=tuple(notes)
        )
    candidates, standard = _candidates(families, dims)
    if not standard:
        notes.append(
            f"non-standard dims (dim {dims.dim}, ffn {dims.ffn_dim}, {dims.num_layers} blocks): "
            "structural variant only (a tiny, pruned or custom model)"
        )
    hints = filename_hints(filename)
    candidates, used = _apply_hints(candidates, hints, notes)
    evidence = f"{structure}; dims {'of a released model' if standard else 'non-standard'}"
    if used:
        evidence += f"; file name hint: {', '.join(used)}"
    ambiguous = len(candidates) > 1
    chosen = candidates[0] if standard else _nearest(candidates, dims.dim)
    if ambiguous:
        note = SAME_TENSOR_NOTES.get(frozenset(candidates))
        notes.append(note or f"tensors fit {', '.join(candidates)}; reporting {chosen}")
    if chosen.startswith("wan2.2-i2v-") and not used:
        notes.append(
            "a Wan2.1 I2V-14B file stripped of its CLIP branch (img_emb) would have the same tensors"
        )
    return WanVariant(
        id=chosen,
        is_wan=True,
        model_type=model_type,
        comfyui_config=config,
        dims=dims,
        candidates=tuple(candidates),
        ambiguous=ambiguous,
        standard_dims=standard,
        expert=hints.get("expert") if chosen.endswith("-a14b") else None,
        evidence=evidence,
        notes=tuple(notes),
    )
