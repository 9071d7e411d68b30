"""Reading WAN checkpoints without ComfyUI: header-only safetensors, per-layer classification, report.

Public API (stable; other modules and the ComfyUI nodes build on it):

- `open_checkpoint(path) -> SafetensorsFile | ShardedSource`: header only; tensors lazily from a copy-on-write
  mmap; pickles refused unread. A sharded / diffusers-format WAN transformer (folder, index JSON or any shard)
  opens as a `ShardedSource` with the same interface, keys in ComfyUI's WAN names.
  `StateDictSource(state_dict, metadata, path)` is the same interface over a dict.
- `classify_checkpoint(source, nibble_order=None, scale_layout=None, sidecar_config=None,
  scan_block_scales=True, find_sidecar_file=True) -> CheckpointInfo`: every Linear as a `LayerSpec`
  (`format` nvfp4/fp8_scaled/fp8/float, `nibble_order`, `scale_layout`, `fp8_granularity`, `tensors`
  role -> key, `evidence`, `assumed`), `variant` (`WanVariant`, `.id` like `wan2.2-ti2v-5b`), `census`,
  `problems` (`Problem`: severity, layer, expected, found), `provenance`. `info.weight(name)` builds the
  kernel-ready weight; `info.raise_for_problems()` raises the first error as a `CheckpointError`.
- `detect_variant(source, prefix="", filename=None) -> WanVariant`.
- `inspect_checkpoint(path_or_source, ...) -> InspectReport` with `.to_text()`, `.to_json()`, `.exit_code`
  and the two verdicts (`comfyui`, `pack`; outcome words in `verdicts`).
- `fixtures.FIXTURES[name](variant=..., seed=...) -> Fixture` (tiny WAN checkpoints in every convention with
  ground truth), `fixtures.write_fixture(name, folder)`, `fixtures.write_fixtures(folder)`.
- `layers.build_weight(spec, get, path)`; `errors.CheckpointError`.
"""

from .conventions.classify import CheckpointInfo, classify_checkpoint, detect_prefix
from .conventions.inspect import InspectReport, inspect_checkpoint
from .errors import CheckpointError, PickleCheckpointError
from .layers import FLOAT, FP8, FP8_SCALED, LAYER_FORMATS, NVFP4, LayerSpec, build_weight
from .problems import ERROR, WARNING, Problem
from .reading.safetensors_io import SafetensorsFile, StateDictSource
from .reading.sharded_source import ShardedSource
from .reading.sharded_source import open_source as open_checkpoint
from .reading.variant import WanDims, WanVariant, detect_variant

__all__ = [
    "ERROR",
    "FLOAT",
    "FP8",
    "FP8_SCALED",
    "LAYER_FORMATS",
    "NVFP4",
    "WARNING",
    "CheckpointError",
    "CheckpointInfo",
    "InspectReport",
    "LayerSpec",
    "PickleCheckpointError",
    "Problem",
    "SafetensorsFile",
    "ShardedSource",
    "StateDictSource",
    "WanDims",
    "WanVariant",
    "build_weight",
    "classify_checkpoint",
    "detect_prefix",
    "detect_variant",
    "inspect_checkpoint",
    "open_checkpoint",
]
