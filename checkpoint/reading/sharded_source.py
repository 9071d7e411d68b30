"""A sharded diffusers-format WAN transformer (NVIDIA ModelOpt exports, `*-Diffusers` repos) as one source
in ComfyUI's WAN names, with the `SafetensorsFile` read interface.

A diffusers transformer is a folder: `config.json`, `diffusion_pytorch_model-0000k-of-0000n.safetensors`
shards and `diffusion_pytorch_model.safetensors.index.json` (`weight_map`: tensor -> shard file), or one
unsharded `diffusion_pytorch_model.safetensors`. ModelOpt records its quantization in `config.json`
`quantization_config` (NVIDIA/Model-Optimizer `modelopt/torch/export/unified_export_hf.py`
`_export_diffusers_checkpoint`; the shards' own headers hold only `{"format": "pt"}`); this source presents
it as the header key `quantization_config`, exactly what a ModelOpt single file carries, so the classifier's
ModelOpt rules apply unchanged. Original-WAN-named sharded repos (Wan-AI's own) are read the same way with
their names kept.

Only headers are read when opening (each shard through `SafetensorsFile`, which validates it); tensors come
lazily, one at a time. Every tensor is accounted for: mapped, split (a fused projection), or ignored as
diffusers ignores it (`norm_added_q`); a tensor that maps to nothing is an error naming shard and key
(`strict=True`) or a `Problem` in `.problems` (`strict=False`, for the inspector).
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..problems import ERROR, WARNING, Problem
from . import diffusers_names as names
from .safetensors_io import SafetensorsFile
from .stream_read import read_tensor

INDEX_SUFFIX = ".safetensors.index.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.safetensors$")
CONFIG_NAME = "config.json"
PIPELINE_INDEX = "model_index.json"
NAMING_DIFFUSERS = "diffusers"
NAMING_WAN = "wan"  # original WAN names (Wan-AI repos), identical to ComfyUI's
WAN_MARKER_KEYS = ("head.head.weight", "head.modulation")
WAN_CLASSES = (*names.WAN_DIFFUSERS_CLASSES, "WanModel")  # WanModel: Wan-AI's original sharded repos
# pipeline component -> expert (diffusers pipeline_wan.py: `transformer` runs t >= boundary_ratio * 1000,
# the high-noise stage; `transformer_2` runs below it, the low-noise stage)
PIPELINE_EXPERTS = {"transformer": "high_noise", "transformer_2": "low_noise"}


@dataclass(frozen=True)
class MappedTensor:
    """Where one ComfyUI-named tensor lives: shard, diffusers key, and its row part if the tensor is fused."""

    shard: SafetensorsFile
    key: str
    part: int = 0
    parts: int = 1  # > 1: rows [part * n / parts, (part + 1) * n / parts) of a fused projection
    split: bool = False  # False for a fused projection's scalars, which every part shares


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"cannot read the {what}", None, "valid JSON", str(e), kind="file") from e


def _index_beside(folder: Path) -> Path | None:
    preferred = folder / (DIFFUSERS_WEIGHTS + INDEX_SUFFIX)
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("*" + INDEX_SUFFIX))
    return found[0] if found else None


def find_export(path: str | Path) -> tuple[Path | None, list[Path]]:
    """(index or None, shard files) when `path` is a sharded / diffusers transformer, else (None, []).

    `path` may be the folder, its index JSON, or any one shard (the others come from the index beside it).
    A shard named `-0000k-of-0000n` without an index beside it is an error (the rest cannot be found).
    """
    path = Path(path)
    if path.is_dir():
        index = _index_beside(path)
        if index is not None:
            return index, []
        single = path / (DIFFUSERS_WEIGHTS + ".safetensors")
        if single.is_file():
            return None, [single]
        raise CheckpointError(
            path,
            "no diffusers transformer in this folder",
            None,
            f"{DIFFUSERS_WEIGHTS}{INDEX_SUFFIX} with its shards, or {DIFFUSERS_WEIGHTS}.safetensors",
            ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "an empty folder",
            hint="for a pipeline folder pick its transformer/ (or transformer_2/) subfolder",
            kind="file",
        )
    if path.name.endswith(INDEX_SUFFIX):
        return path, []
    if path.suffix != ".safetensors":
        return None, []
    index = _index_beside(path.parent)
    if index is not None:
        data = _read_json(index, "shard index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        listed = set(weight_map.values()) if isinstance(weight_map, dict) else set()
        if path.name in listed:
            return index, []
    if SHARD_NAME.search(path.name):
        raise CheckpointError(
            path,
            "this is one shard of a sharded model, and no index beside it lists it",
            None,
            f"a *{INDEX_SUFFIX} beside it whose weight_map names {path.name}",
            f"index {index.name} does not name it" if index is not None else "no index file",
            hint="keep the shards and their index JSON together in one folder",
            kind="file",
        )
    if path.name == DIFFUSERS_WEIGHTS + ".safetensors" and (path.parent / CONFIG_NAME).is_file():
        return None, [path]
    return None, []


def pipeline_expert(folder: Path) -> tuple[str | None, str]:
    """The A14B expert a pipeline component folder holds, from the pipeline's `model_index.json`.

    Returns (`high_noise` | `low_noise` | None, reason)."""
    role = PIPELINE_EXPERTS.get(folder.name)
    pipeline = folder.parent / PIPELINE_INDEX
    if role is None or not pipeline.is_file():
        return None, ""
    config = _read_json(pipeline, "pipeline model_index.json")
    if not isinstance(config, dict):
        return None, ""
    second = config.get("transformer_2")
    has_second = isinstance(second, list) and any(second)
    boundary = config.get("boundary_ratio")
    if not has_second or boundary is None:
        return None, ""
    stage = "t >= boundary" if role == "high_noise" else "t < boundary"
    return role, (
        f"{folder.name}/ of a two-expert pipeline ({PIPELINE_INDEX}: boundary_ratio {boundary}; "
        f"diffusers runs `{folder.name}` for {stage}: the {role.replace('_', '-')} expert)"
    )


def _variant_name(folder: Path, expert: str | None) -> str:
    """File-name hints for the variant detector: the export's folder names and the expert."""
    return " ".join([folder.parent.name, folder.name, expert or ""]).strip()


def _safe_shard_name(index: Path, name, key: str) -> str:
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise CheckpointError(
            index, "the index names a shard outside its folder", key, "a file name", repr(name), kind="tensor"
        )
    return name


class ShardedSource:
    """One diffusers / original-WAN transformer spread over shards, read as one file in ComfyUI names.

    `path`: the index JSON (or the single weights file); `files`: the shard paths; `naming`: `diffusers` or
    `wan`; `mapping`: ComfyUI key -> "shard: source key" (`[i/n]` for a fused part); `ignored`; `problems`
    (unmapped keys when not strict); `expert` and `expert_reason` (A14B pipeline components);
    `variant_name` (file-name hints for the variant detector).
    """

    def __init__(self, path: str | Path, strict: bool = True):
        index, singles = find_export(path)
        if index is None and not singles:
            raise CheckpointError(path, "not a sharded or diffusers transformer", kind="file")
        self.path = index or singles[0]
        self.folder = self.path.parent
        self.problems: list[Problem] = []
        self.ignored: list[str] = []
        self.metadata_origin: dict[str, str] = {}  # metadata key -> where it really comes from
        shard_keys = self._read_index(index) if index is not None else None
        if shard_keys is None:
            shard_keys = {singles[0].name: None}
        self.shards = {name: self._open_shard(name, keys) for name, keys in shard_keys.items()}
        self.files = [s.path for s in self.shards.values()]
        self.file_size = sum(s.file_size for s in self.shards.values())
        self.config = self._read_config()
        self.naming = self._naming()
        self._tensors: dict[str, MappedTensor] = {}
        for shard in self.shards.values():
            for key in list(shard.keys()):
                self._add(shard, key, strict)
        self.metadata = self._metadata()
        self.expert, self.expert_reason = pipeline_expert(self.folder)
        self.variant_name = _variant_name(self.folder, self.expert)

    # --- opening and validation ---------------------------------------------------------------------------
    def _read_index(self, index: Path) -> dict[str, list[str]]:
        data = _read_json(index, "shard index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(
                index, "the index has no weight_map", None, '{"weight_map": {tensor: shard}}', kind="file"
            )
        by_shard: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            by_shard.setdefault(_safe_shard_name(index, shard, key), []).append(key)
        for shard, keys in by_shard.items():
            if not (index.parent / shard).is_file():
                raise CheckpointError(
                    index,
                    f"shard {shard} named by the index is missing",
                    keys[0],
                    f"{shard} beside the index ({len(keys)} tensors in it)",
                    "no such file",
                    hint="an incomplete download? fetch every shard the index names",
                    kind="tensor",
                )
        return by_shard

    def _open_shard(self, name: str, listed: list[str] | None) -> SafetensorsFile:
        shard = SafetensorsFile(self.folder / name)
        if listed is None:
            return shard
        listed_set, present = set(listed), set(shard.keys())
        for key in listed:
            if key not in present:
                raise CheckpointError(
                    shard.path,
                    "tensor listed in the index is not in its shard",
                    key,
                    f"{key} in {name} (as {self.path.name} says)",
                    "no such tensor in the shard",
                    kind="tensor",
                )
        for key in list(shard.keys()):
            if key not in listed_set:
                raise CheckpointError(
                    shard.path,
                    "tensor in the shard is not where the index says",
                    key,
                    f"only the tensors {self.path.name} assigns to {name}",
                    f"{key} (the index {'puts it elsewhere' if key in self._index_keys() else 'omits it'})",
                    kind="tensor",
                )
        return shard

    def _index_keys(self) -> set[str]:
        return set(_read_json(self.path, "shard index").get("weight_map", {}))

    def _read_config(self) -> dict:
        path = self.folder / CONFIG_NAME
        if not path.is_file():
            return {}
        config = _read_json(path, "transformer config.json")
        if not isinstance(config, dict):
            raise CheckpointError(path, "config.json is not a JSON object", kind="file")
        cls = config.get("_class_name")
        if cls is not None and cls not in WAN_CLASSES:
            raise CheckpointError(
                path,
                "not a WAN diffusers transformer",
                "_class_name",
                " or ".join(WAN_CLASSES),
                repr(cls),
                hint="this pack loads WAN 2.1/2.2 video transformers only",
                kind="config key",
            )
        return config

    def _naming(self) -> str:
        keys = {k for shard in self.shards.values() for k in list(shard.keys())}
        return NAMING_WAN if any(k in keys for k in WAN_MARKER_KEYS) else NAMING_DIFFUSERS

    def _unmapped(self, shard: SafetensorsFile, key: str, strict: bool) -> None:
        why = (
            "a WanTransformer3DModel tensor (diffusers names; table in checkpoint/reading/diffusers_names.py)"
            if self.naming == NAMING_DIFFUSERS
            else "a WAN tensor"
        )
        problem = Problem(
            ERROR,
            f"tensor in shard {shard.path.name} maps to no ComfyUI WAN name",
            key,
            why,
            f"{key} {list(shard.shape(key))} {str(shard.dtype(key)).removeprefix('torch.')}",
            "the file is not a WAN transformer, or has extra tensors this pack does not know",
            kind="tensor",
        )
        if strict:
            raise problem.to_error(shard.path)
        self.problems.append(problem)

    def _put(self, comfy: str, tensor: MappedTensor) -> None:
        if comfy in self._tensors:
            old = self._tensors[comfy]
            raise CheckpointError(
                tensor.shard.path,
                "two tensors map to the same ComfyUI name",
                comfy,
                "one source tensor per ComfyUI tensor",
                f"{old.shard.path.name}: {old.key} and {tensor.shard.path.name}: {tensor.key}",
                hint="a fused projection and its unfused parts are both present",
                kind="tensor",
            )
        self._tensors[comfy] = tensor

    def _add(self, shard: SafetensorsFile, key: str, strict: bool) -> None:
        if self.naming == NAMING_WAN:
            self._put(key, MappedTensor(shard, key))
            return
        if names.is_ignored(key):
            self.ignored.append(key)
            self.problems.append(
                Problem(
                    WARNING,
                    "tensor ignored, as diffusers ignores it (_keys_to_ignore_on_load_unexpected)",
                    key,
                    kind="tensor",
                )
            )
            return
        parts = names.fused_parts(key)
        if parts is not None:
            self._add_fused(shard, key, parts)
            return
        comfy = names.comfy_key(key)
        if comfy is None:
            self._unmapped(shard, key, strict)
        else:
            self._put(comfy, MappedTensor(shard, key))

    def _add_fused(self, shard: SafetensorsFile, key: str, parts: tuple[str, ...]) -> None:
        stem = key.rsplit(".", 1)[0]
        weight_key = stem + ".weight"
        weight_shard = next((s for s in self.shards.values() if weight_key in s), shard)
        rows = weight_shard.shape(weight_key)[0] if weight_key in weight_shard else None
        shape = shard.shape(key)
        split = bool(shape) and shape[0] == rows
        if split and rows % len(parts):
            raise CheckpointError(
                shard.path,
                "fused projection rows do not split evenly",
                key,
                f"a multiple of {len(parts)} rows",
                str(rows),
                kind="tensor",
            )
        for i, comfy in enumerate(parts):
            self._put(comfy, MappedTensor(shard, key, i, len(parts), split))

    def _metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        for shard in self.shards.values():
            for k, v in shard.metadata.items():
                meta.setdefault(k, v)
        quant = self.config.get("quantization_config")
        if isinstance(quant, dict) and "quantization_config" not in meta:
            meta["quantization_config"] = json.dumps(quant)
            self.metadata_origin["quantization_config"] = f"{CONFIG_NAME} quantization_config"
        return meta

    # --- the SafetensorsFile read interface ------------------------------------------------------------
    def __enter__(self) -> "ShardedSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: each tensor handed out owns its mapping."""

    def keys(self):
        return self._tensors.keys()

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def _where(self, name: str) -> MappedTensor:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(self.path, "tensor not in the model", name, kind="tensor") from None

    def shape(self, name: str) -> tuple[int, ...]:
        t = self._where(name)
        shape = t.shard.shape(t.key)
        return (shape[0] // t.parts, *shape[1:]) if t.split else shape

    def dtype(self, name: str) -> torch.dtype:
        t = self._where(name)
        return t.shard.dtype(t.key)

    def nbytes(self, name: str) -> int:
        t = self._where(name)
        return t.shard.nbytes(t.key) // (t.parts if t.split else 1)

    def _part(self, t: MappedTensor, full: torch.Tensor) -> torch.Tensor:
        if not t.split:
            return full
        n = full.shape[0] // t.parts
        return full[t.part * n : (t.part + 1) * n]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name`, lazily mapped from its shard (a row slice of a fused projection)."""
        t = self._where(name)
        return self._part(t, t.shard.tensor(t.key))

    def read_tensor(self, name: str) -> torch.Tensor:
        """The tensor `name` as an owning CPU tensor (for streaming jobs; see `stream_read`)."""
        t = self._where(name)
        full = read_tensor(t.shard, t.key)
        return self._part(t, full).clone() if t.split else full

    def comfy_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor under its ComfyUI name, each lazily mapped (what `load_torch_file` would give)."""
        return {name: self.tensor(name) for name in self._tensors}

    @property
    def mapping(self) -> dict[str, str]:
        """ComfyUI key -> where it comes from (`shard: key`, `[i/n]` for a part of a fused projection)."""
        out = {}
        for name, t in self._tensors.items():
            part = f" [{t.part + 1}/{t.parts}]" if t.parts > 1 else ""
            out[name] = f"{t.shard.path.name}: {t.key}{part}"
        return out

    def describe(self) -> dict:
        """What the inspector reports about the export."""
        fused = sorted({t.key for t in self._tensors.values() if t.parts > 1})
        renamed = sum(1 for name, t in self._tensors.items() if name != t.key)
        return {
            "naming": self.naming,
            "index": self.path.name if self.path.name.endswith(INDEX_SUFFIX) else None,
            "shards": [p.name for p in self.files],
            "class": self.config.get("_class_name"),
            "tensors": len(self._tensors),
            "renamed": renamed,
            "fused_split": fused,
            "ignored": list(self.ignored),
            "unmapped": [p.layer for p in self.problems if p.severity == ERROR],
            "expert": self.expert,
            "expert_reason": self.expert_reason,
            "mapping": self.mapping,
        }


def open_source(path: str | Path, strict: bool = True):
    """A `ShardedSource` when `path` is a sharded / diffusers transformer (folder, index or any shard), else
    the plain `SafetensorsFile`."""
    index, singles = find_export(path)
    if index is None and not singles:
        return SafetensorsFile(path)
    return ShardedSource(path, strict=strict)


def export_folder(path: str | Path) -> Path | None:
    """The transformer folder when `path` is a sharded / diffusers export (folder, index or shard)."""
    index, singles = find_export(path)
    found = index or (singles[0] if singles else None)
    return None if found is None else found.parent


def export_expert(path: str | Path) -> tuple[str | None, str]:
    """(`high_noise` | `low_noise` | None, reason) for an A14B pipeline export's transformer."""
    folder = export_folder(path)
    return (None, "") if folder is None else pipeline_expert(folder)


def export_label(path: str | Path) -> str | None:
    """A file-name stem for an export (`<pipeline>_<component>[_<expert>]`), None for a plain file."""
    folder = export_folder(path)
    if folder is None:
        return None
    if folder.name not in PIPELINE_EXPERTS:
        return folder.name
    expert, _ = pipeline_expert(folder)
    return "_".join(p for p in (folder.parent.name, folder.name, expert) if p)
