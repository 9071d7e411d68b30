"""How a quantized Linear is written: tensor names, dtypes, shapes per (layout, target), header metadata.

comfy    (default) ComfyUI-native: NVFP4 high_first, rows padded to 16, swizzled scales, `weight_scale_2`;
         FP8 `float8_e4m3fn` + fp32 scalar `weight_scale`; header `_quantization_metadata`. Vanilla ComfyUI
         0.29 loads it natively.
modelopt NVIDIA/ModelOpt: NVFP4 low_first, linear `[N, K/16]` scales, `weight_scale_2`; header
         `quantization_config` (producer `modelopt`). Vanilla ComfyUI refuses NVFP4 in this layout; this pack
         loads it. FP8 tensors are the same in both layouts, so FP8 files get `_quantization_metadata` too.
"""

import json
from collections.abc import Collection
from dataclasses import dataclass

import torch

from ...kernels import HIGH_FIRST, LINEAR, LOW_FIRST, SWIZZLED, swizzled_shape
from ..layers import FULL_PRECISION_MM
from .presets import FP8_TARGET, NVFP4_TARGET
from .writer import PlannedTensor

QUANT_METADATA_KEY = "_quantization_metadata"
MODELOPT_METADATA_KEY = "quantization_config"
PROVENANCE_KEY = "wan_nvfp4"
# header keys that describe the source's quantization and are replaced by the output's own
REPLACED_METADATA_KEYS = (QUANT_METADATA_KEY, MODELOPT_METADATA_KEY)

# tensor suffix (after the layer stem) for each role the writer emits
SUFFIXES = {
    "weight": ".weight",
    "block_scale": ".weight_scale",
    "global_scale": ".weight_scale_2",
    "scale": ".weight_scale",
    "input_scale": ".input_scale",
}


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class OutputLayout:
    """Conventions of one output layout."""

    name: str
    nibble_order: str
    scale_layout: str
    pad_rows_to: int  # NVFP4 packed rows are padded to a multiple of this
    comfy_format: dict[str, str]  # target -> ComfyUI `format` string
    modelopt_algo: dict[str, str]  # target -> ModelOpt quant_algo

    def nvfp4_shapes(self, n: int, k: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        scale_shape = swizzled_shape(n, k // 16) if self.scale_layout == SWIZZLED else (n, k // 16)
        return {
            "weight": (torch.uint8, (round_up(n, self.pad_rows_to), k // 2)),
            "block_scale": (torch.float8_e4m3fn, scale_shape),
            "global_scale": (torch.float32, ()),
        }

    def fp8_shapes(self, n: int, k: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        return {"weight": (torch.float8_e4m3fn, (n, k)), "scale": (torch.float32, ())}

    def plan_layer(self, stem: str, target: str, n: int, k: int) -> dict[str, PlannedTensor]:
        """role -> planned output tensor for a layer quantized to `target`."""
        shapes = self.nvfp4_shapes(n, k) if target == NVFP4_TARGET else self.fp8_shapes(n, k)
        return {role: PlannedTensor(stem + SUFFIXES[role], dt, shape) for role, (dt, shape) in shapes.items()}


COMFY = OutputLayout(
    name="comfy",
    nibble_order=HIGH_FIRST,
    scale_layout=SWIZZLED,
    pad_rows_to=16,
    comfy_format={NVFP4_TARGET: "nvfp4", FP8_TARGET: "float8_e4m3fn"},
    modelopt_algo={NVFP4_TARGET: "NVFP4", FP8_TARGET: "FP8"},
)
MODELOPT = OutputLayout(
    name="modelopt",
    nibble_order=LOW_FIRST,
    scale_layout=LINEAR,
    pad_rows_to=1,
    comfy_format=COMFY.comfy_format,
    modelopt_algo={NVFP4_TARGET: "W4A16_NVFP4", FP8_TARGET: "FP8"},
)
LAYOUTS = {layout.name: layout for layout in (COMFY, MODELOPT)}


def comfy_layer_conf(fmt: str, full_precision_mm: bool = False) -> dict:
    """One layer's ComfyUI config (`_quantization_metadata` entry / `.comfy_quant`)."""
    return {"format": fmt, FULL_PRECISION_MM: True} if full_precision_mm else {"format": fmt}


def comfy_quant_metadata(layers: dict[str, str], full_precision: Collection[str] = ()) -> str:
    """`_quantization_metadata` for {layer stem as in the file: ComfyUI format string}; the stems in
    `full_precision` keep the source's `full_precision_matrix_mult`."""
    confs = {stem: comfy_layer_conf(fmt, stem in full_precision) for stem, fmt in layers.items()}
    return json.dumps({"format_version": "1.0", "layers": confs}, separators=(",", ":"))


def modelopt_quant_config(algo: str, excluded: list[str], version: str) -> str:
    """ModelOpt hf_quant_config JSON (`quantization_config` header) for a single-algorithm file."""
    return json.dumps(
        {
            "producer": {"name": "modelopt", "version": f"compatible; written by wan-nvfp4 {version}"},
            "quantization": {
                "quant_algo": algo,
                "kv_cache_quant_algo": None,
                "group_size": 16,
                "exclude_modules": excluded,
            },
        },
        separators=(",", ":"),
    )


def output_metadata(
    source_metadata: dict[str, str],
    layout: OutputLayout,
    quantized: dict[str, str],
    excluded: list[str],
    target: str | None,
    provenance: dict,
    version: str,
    full_precision: Collection[str] = (),
) -> dict[str, str]:
    """The output header: the source's metadata minus its quantization keys, plus ours and provenance.

    quantized: layer stem -> ComfyUI format string of every quantized layer written; full_precision: the stems
    whose source asked for full-precision matmul (LayerSpec.full_precision_mm).
    """
    meta = {k: v for k, v in source_metadata.items() if k not in REPLACED_METADATA_KEYS}
    if quantized and (layout.name == COMFY.name or target == FP8_TARGET):
        # FP8 tensors are the same in both layouts, so ComfyUI's metadata is right for either; NVFP4 in
        # ModelOpt conventions must NOT carry it (vanilla ComfyUI would read low_first+linear as native)
        meta[QUANT_METADATA_KEY] = comfy_quant_metadata(quantized, frozenset(full_precision))
    if quantized and layout.name == MODELOPT.name and target is not None:
        meta[MODELOPT_METADATA_KEY] = modelopt_quant_config(layout.modelopt_algo[target], excluded, version)
    meta[PROVENANCE_KEY] = json.dumps(provenance, separators=(",", ":"))
    return meta
