"""Tiny seeded WAN checkpoints in every convention the pack reads, each knowing its ground truth.

One seeded bf16 tiny WAN model per variant (ComfyUI `WanModel` key names, dim a multiple of 128 so ComfyUI's
detection works, text_dim 4096 and freq_dim 256 as ComfyUI hard-codes them, 2 blocks) is written in every
convention. Each fixture records, while it is built, what every Linear really is (format, nibble order, scale
layout, fp8 granularity, whether the file states it), its variant and what vanilla ComfyUI 0.29 does with it
(COMFYUI.md §1.5). Nothing here asks the classifier: the truth comes from how the file was made.

    fx = FIXTURES["comfy_nvfp4"]()                 # default variant, seed 0
    path = fx.write(folder)                        # -> folder/wan2.2-ti2v-5b_comfy_nvfp4.safetensors
    paths = write_fixtures(folder)                 # every convention
    fx.reference["blocks.0.ffn.0.weight"]          # the bf16 source every fixture was made from
"""

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...kernels import HIGH_FIRST, LINEAR, LOW_FIRST, SWIZZLED, quantize_fp8, quantize_nvfp4
from ..conventions.verdicts import LOADS_NATIVELY, LOADS_SILENTLY_WRONG, REFUSES_ERROR, REFUSES_SIZE_MISMATCH
from ..layers import FLOAT, FP8, FP8_SCALED, FULL_PRECISION_MM, NVFP4, json_marker, read_json_marker
from ..reading.safetensors_io import StateDictSource
from .tiny_wan import (  # noqa: F401  (re-exported: the fixtures API)
    CLIP_DIM,
    DEFAULT_VARIANT,
    FREQ_DIM,
    TEXT_DIM,
    TINY_VARIANTS,
    TinyWan,
    linear_shapes,
    seeded_generator,
    tiny_wan_state_dict,
)

SIDECAR_NAME = "hf_quant_config.json"
COMFY_PREFIX = "model.diffusion_model."


# ------------------------------------------------------------------------------------------------------
# conventions


@dataclass(frozen=True)
class LayerTruth:
    """What one Linear of a fixture really is (from how it was written)."""

    format: str
    nibble_order: str | None = None
    scale_layout: str | None = None
    fp8_granularity: str | None = None
    assumed: bool = False  # True when the file does not state every convention of this layer


def _is_block_linear(name: str) -> bool:
    return name.startswith("blocks.")


USER_EXTRA_LINEARS = ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2")
USER_EXTRA_LINEARS += ("time_projection.1", "head.head")


def _plan_blocks(fmt: str) -> Callable[[str], str]:
    """The WAN preset of real converters: block Linears quantized; embeddings, head, img_emb, VACE kept."""
    return lambda name: fmt if _is_block_linear(name) else FLOAT


def _plan_user(name: str) -> str:
    """The user's file (issue #2 item 6): every block Linear plus the text/time embeddings and head."""
    return NVFP4 if _is_block_linear(name) or name in USER_EXTRA_LINEARS else FLOAT


def _plan_kijai(name: str) -> str:
    """Kijai keeps norm/bias/time_/patch_embedding/img_emb/modulation/text_embedding: head.head is fp8."""
    return FP8_SCALED if _is_block_linear(name) or name == "head.head" else FLOAT


def _plan_linear_no_metadata(name: str) -> str:
    return NVFP4 if _is_block_linear(name) or name == "head.head" else FLOAT


_MIXED_FORMATS = (("self_attn.", NVFP4), ("cross_attn.", FP8_SCALED), ("ffn.0", NVFP4))


def _plan_mixed(name: str) -> str:
    """nvfp4 self-attention and ffn.0, fp8 cross-attention, ffn.2 and everything outside blocks float."""
    if not _is_block_linear(name):
        return FLOAT
    return next((fmt for part, fmt in _MIXED_FORMATS if part in name), FLOAT)


@dataclass(frozen=True)
class Convention:
    """How one fixture is written. Every field is a fact about the file the builder makes."""

    name: str
    description: str
    plan: Callable[[str], str]  # layer name -> format written
    comfyui: str  # what vanilla ComfyUI 0.29 does (COMFYUI.md §1.5)
    nvfp4_style: str = "comfy"  # a key of _NVFP4_SCALE_TENSORS: which tensors hold the scales
    fp8_style: str = "comfy"  # comfy | legacy | row | plain
    nibble_order: str = HIGH_FIRST
    scale_layout: str = SWIZZLED
    metadata: tuple[str, ...] = ()  # comfy_header | comfy_quant | modelopt_header | modelopt_sidecar
    marker: bool = False  # legacy `scaled_fp8` marker tensor
    prefix: str = ""
    other_dtype: torch.dtype = torch.bfloat16  # dtype of every tensor that is not quantized data or a scale
    fp8_scale_shape: tuple[int, ...] = ()
    input_scale: bool = False
    assumed: bool = False  # the file does not state every convention of its nvfp4 layers
    misread: bool = False  # an honest reader following the evidence rules reads it wrongly (no evidence)
    filename_prefix: str = ""


CONVENTIONS = {
    c.name: c
    for c in (
        Convention(
            "bf16", "plain bf16 (the source of every other fixture)", _plan_blocks(FLOAT), LOADS_NATIVELY
        ),
        Convention(
            "comfy_nvfp4",
            "ComfyUI-native NVFP4: high-first, swizzled scales, header _quantization_metadata",
            _plan_blocks(NVFP4),
            LOADS_NATIVELY,
            metadata=("comfy_header",),
        ),
        Convention(
            "comfy_nvfp4_comfy_quant",
            "ComfyUI-native NVFP4 with per-layer .comfy_quant tensors and input_scale",
            _plan_blocks(NVFP4),
            LOADS_NATIVELY,
            metadata=("comfy_quant",),
            input_scale=True,
        ),
        Convention(
            "modelopt_nvfp4",
            "ModelOpt NVFP4: low-first, linear scales, input_scale, quantization_config header",
            _plan_blocks(NVFP4),
            REFUSES_SIZE_MISMATCH,
            nvfp4_style="modelopt",
            nibble_order=LOW_FIRST,
            scale_layout=LINEAR,
            metadata=("modelopt_header",),
            input_scale=True,
        ),
        Convention(
            "modelopt_nvfp4_sidecar",
            "ModelOpt NVFP4 with hf_quant_config.json beside the file, no header metadata",
            _plan_blocks(NVFP4),
            REFUSES_SIZE_MISMATCH,
            nvfp4_style="modelopt",
            nibble_order=LOW_FIRST,
            scale_layout=LINEAR,
            metadata=("modelopt_sidecar",),
            input_scale=True,
        ),
        Convention(
            "modelopt_comfy_single_file",
            "ModelOpt ComfyUI single-file export: low-first, swizzled, both metadata, model.diffusion_model.",
            _plan_blocks(NVFP4),
            LOADS_SILENTLY_WRONG,
            nvfp4_style="modelopt",
            nibble_order=LOW_FIRST,
            scale_layout=SWIZZLED,
            metadata=("comfy_header", "modelopt_header"),
            prefix=COMFY_PREFIX,
            input_scale=True,
        ),
        Convention(
            "lightx2v_nvfp4",
            "LightX2V NVFP4 (calibrated): low-first, swizzled, alpha + input_global_scale, no weight_scale_2",
            _plan_blocks(NVFP4),
            REFUSES_SIZE_MISMATCH,
            nvfp4_style="lightx2v",
            nibble_order=LOW_FIRST,
            scale_layout=SWIZZLED,
        ),
        Convention(
            "lightx2v_nvfp4_converter",
            "LightX2V converter NVFP4: low-first, swizzled, weight_global_scale (2688 / amax) + input_absmax",
            _plan_blocks(NVFP4),
            REFUSES_SIZE_MISMATCH,
            nvfp4_style="lightx2v_converter",
            nibble_order=LOW_FIRST,
            scale_layout=SWIZZLED,
        ),
        Convention(
            "user_replica",
            "the user's file: comfy-kitchen converted (high-first, swizzled), no metadata, no input_scale, "
            "rest fp16, embeddings and head quantized too",
            _plan_user,
            REFUSES_SIZE_MISMATCH,
            other_dtype=torch.float16,
            assumed=True,
        ),
        Convention(
            "nvfp4_linear_no_metadata",
            "third-party NVFP4 without metadata: low-first, linear scales, head.head quantized",
            _plan_linear_no_metadata,
            REFUSES_SIZE_MISMATCH,
            nvfp4_style="modelopt",
            nibble_order=LOW_FIRST,
            scale_layout=LINEAR,
            assumed=True,
        ),
        Convention(
            "modelopt_nvfp4_stripped",
            "ModelOpt NVFP4 with its metadata stripped: nothing in the file tells its conventions",
            _plan_blocks(NVFP4),
            REFUSES_SIZE_MISMATCH,
            nvfp4_style="modelopt",
            nibble_order=LOW_FIRST,
            scale_layout=LINEAR,
            assumed=True,
            misread=True,
        ),
        Convention(
            "comfy_fp8",
            "ComfyUI FP8: float8_e4m3fn weights, fp32 scalar weight_scale, _quantization_metadata",
            _plan_blocks(FP8_SCALED),
            LOADS_NATIVELY,
            metadata=("comfy_header",),
        ),
        Convention(
            "legacy_scaled_fp8",
            "legacy ComfyUI scaled_fp8: marker tensor, .scale_weight per layer",
            _plan_blocks(FP8_SCALED),
            LOADS_NATIVELY,
            fp8_style="legacy",
            marker=True,
        ),
        Convention(
            "kijai_fp8",
            "Kijai fp8_e4m3fn_scaled: scaled_fp8 marker, scale_weight [1], everything else fp32",
            _plan_kijai,
            LOADS_NATIVELY,
            fp8_style="legacy",
            marker=True,
            other_dtype=torch.float32,
            fp8_scale_shape=(1,),
        ),
        Convention(
            "fp8_scale_weight_no_marker",
            "fp8 + .scale_weight without the scaled_fp8 marker",
            _plan_blocks(FP8_SCALED),
            LOADS_SILENTLY_WRONG,
            fp8_style="legacy",
        ),
        Convention(
            "fp8_per_row",
            "per-row FP8 (weight_scale [N]) marked float8_e4m3fn_rowwise per layer (convert_to_quant style)",
            _plan_blocks(FP8_SCALED),
            REFUSES_ERROR,
            fp8_style="row",
            metadata=("comfy_quant",),
        ),
        Convention(
            "fp8_plain",
            "plain fp8 weights without any scale",
            _plan_blocks(FP8),
            LOADS_NATIVELY,
            fp8_style="plain",
        ),
        Convention(
            "mixed",
            "mixed per layer: nvfp4 + fp8 + float, ComfyUI-native, _quantization_metadata",
            _plan_mixed,
            LOADS_NATIVELY,
            metadata=("comfy_header",),
        ),
    )
}

# `comfy_quant` / `_quantization_metadata` format names per written layer kind
_COMFY_FORMAT_NAMES = {NVFP4: "nvfp4", FP8_SCALED: "float8_e4m3fn", "fp8_row": "float8_e4m3fn_rowwise"}
_MODELOPT_PRODUCER = {"name": "modelopt", "version": "0.47.0"}


def _input_scale(name: str, seed: int) -> torch.Tensor:
    """A plausible calibrated activation scale (amax_x / 2688), fp32 scalar."""
    amax = 2.0 + 4.0 * torch.rand((), generator=seeded_generator(seed, name + ".input_scale"))
    return (amax / 2688.0).float()


def _comfy_scales(conv: Convention, global_scale, input_scale) -> dict[str, torch.Tensor]:
    out = {"weight_scale_2": global_scale.reshape(())}
    return {**out, "input_scale": input_scale} if conv.input_scale else out


# nvfp4_style -> the second-level and activation scale tensors (global_scale = ComfyUI's weight_scale_2)
_NVFP4_SCALE_TENSORS = {
    "comfy": _comfy_scales,
    "modelopt": _comfy_scales,
    # LightX2V after calibration (tools/convert/add_scale_to_models.py): alpha = 1 / (igs * wgs)
    "lightx2v": lambda conv, g, s: {"alpha": (s * g).reshape(1), "input_global_scale": (1.0 / s).reshape(1)},
    # LightX2V's converter (quant.py: weight_global_scale = 2688 / amax) + a calibrated input_absmax
    "lightx2v_converter": lambda conv, g, s: {
        "weight_global_scale": (1.0 / g).reshape(()),
        "input_absmax": (s * 2688.0).reshape(()),
    },
}


def _nvfp4_tensors(conv: Convention, name: str, w: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    q = quantize_nvfp4(w.float(), nibble_order=conv.nibble_order, scale_layout=conv.scale_layout)
    scales = _NVFP4_SCALE_TENSORS[conv.nvfp4_style](conv, q.global_scale, _input_scale(name, seed))
    return {"weight": q.packed, "weight_scale": q.block_scale, **scales}


def _fp8_tensors(conv: Convention, name: str, w: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    if conv.fp8_style == "plain":
        return {"weight": w.float().to(torch.float8_e4m3fn)}
    q = quantize_fp8(w.float(), granularity="row" if conv.fp8_style == "row" else "tensor")
    if conv.fp8_style == "row":
        return {"weight": q.data, "weight_scale": q.scale.float()}
    scale = q.scale.float().reshape(conv.fp8_scale_shape)
    out = {"weight": q.data, "scale_weight" if conv.fp8_style == "legacy" else "weight_scale": scale}
    if conv.input_scale:
        out["input_scale"] = _input_scale(name, seed)
    return out


def _layer_truth(conv: Convention, fmt: str) -> LayerTruth:
    if fmt == NVFP4:
        return LayerTruth(NVFP4, conv.nibble_order, conv.scale_layout, assumed=conv.assumed)
    if fmt == FP8_SCALED:
        return LayerTruth(FP8_SCALED, fp8_granularity="row" if conv.fp8_style == "row" else "tensor")
    if fmt == FP8:
        return LayerTruth(FP8)
    return LayerTruth(FLOAT)


def _written_format(conv: Convention, planned: str) -> str:
    return FP8 if planned == FP8_SCALED and conv.fp8_style == "plain" else planned


def _comfy_format_name(conv: Convention, fmt: str) -> str:
    return _COMFY_FORMAT_NAMES["fp8_row" if fmt == FP8_SCALED and conv.fp8_style == "row" else fmt]


def _hf_quant_config(kept: list[str]) -> dict:
    return {
        "producer": dict(_MODELOPT_PRODUCER),
        "quantization": {
            "quant_algo": "NVFP4",
            "kv_cache_quant_algo": None,
            "group_size": 16,
            "exclude_modules": sorted(kept),
        },
    }


@dataclass
class Fixture:
    """One tiny checkpoint in one convention, with its ground truth.

    tensors/metadata: exactly what the file holds; sidecars: file name -> text written beside it;
    layers: Linear name (no prefix) -> LayerTruth; reference: the bf16 source (no prefix);
    comfyui: what vanilla ComfyUI 0.29 does with the file (a `verdicts` outcome word).
    """

    convention: Convention
    variant: str
    seed: int
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    layers: dict[str, LayerTruth]
    reference: dict[str, torch.Tensor]
    sidecars: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.convention.name

    @property
    def prefix(self) -> str:
        return self.convention.prefix

    @property
    def comfyui(self) -> str:
        return self.convention.comfyui

    @property
    def filename(self) -> str:
        tag = TINY_VARIANTS[self.variant].filename_tag
        return f"{self.variant}{'_' + tag if tag else ''}_{self.name}.safetensors"

    @property
    def sidecar_config(self) -> dict | None:
        text = self.sidecars.get(SIDECAR_NAME)
        return None if text is None else json.loads(text)

    def source(self) -> StateDictSource:
        """The fixture as an in-memory source (pass `sidecar_config=fx.sidecar_config` to classify it)."""
        return StateDictSource(self.tensors, self.metadata, path=self.filename)

    def write(self, folder: str | Path) -> Path:
        """Write the file (and its sidecars) into `folder`; a fixture with sidecars gets its own subfolder."""
        from safetensors.torch import save_file

        folder = Path(folder) / self.name if self.sidecars else Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for sidecar, text in self.sidecars.items():
            (folder / sidecar).write_text(text)
        path = folder / self.filename
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(path), metadata=self.metadata)
        return path


def build_fixture(conv: Convention, variant: str = DEFAULT_VARIANT, seed: int = 0) -> Fixture:
    """Write the seeded tiny model of `variant` in convention `conv` (in memory)."""
    c = TINY_VARIANTS[variant]
    reference = tiny_wan_state_dict(variant, seed)
    linears = linear_shapes(c)
    tensors: dict[str, torch.Tensor] = {}
    truth: dict[str, LayerTruth] = {}
    layer_meta: dict[str, dict] = {}
    for name in linears:
        fmt = _written_format(conv, conv.plan(name))
        truth[name] = _layer_truth(conv, fmt)
        w = reference[f"{name}.weight"]
        if fmt == NVFP4:
            parts = _nvfp4_tensors(conv, name, w, seed)
        elif fmt in (FP8_SCALED, FP8):
            parts = _fp8_tensors(conv, name, w, seed)
        else:
            parts = {"weight": w.to(conv.other_dtype)}
        parts["bias"] = reference[f"{name}.bias"].to(conv.other_dtype)
        if fmt in (NVFP4, FP8_SCALED):
            layer_meta[conv.prefix + name] = {"format": _comfy_format_name(conv, fmt)}
            if "comfy_quant" in conv.metadata:
                parts["comfy_quant"] = json_marker(layer_meta[conv.prefix + name])
        tensors |= {f"{conv.prefix}{name}.{role}": t for role, t in parts.items()}
    linear_keys = {f"{n}.{r}" for n in linears for r in ("weight", "bias")}
    for key, t in reference.items():
        if key not in linear_keys:
            tensors[conv.prefix + key] = t.to(conv.other_dtype)
    if conv.marker:
        tensors[conv.prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    metadata: dict[str, str] = {}
    sidecars: dict[str, str] = {}
    if "comfy_header" in conv.metadata:
        metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layer_meta})
    kept = [conv.prefix + n for n, t in truth.items() if t.format == FLOAT]
    if "modelopt_header" in conv.metadata:
        metadata["quantization_config"] = json.dumps(_hf_quant_config(kept))
    if "modelopt_sidecar" in conv.metadata:
        sidecars[SIDECAR_NAME] = json.dumps(_hf_quant_config(kept), indent=2)
    return Fixture(conv, variant, seed, tensors, metadata, truth, reference, sidecars)


def with_full_precision_mm(fx: Fixture, layers) -> Fixture:
    """A copy of `fx` (ComfyUI metadata: header and / or `.comfy_quant`) whose quantized `layers` (no prefix)
    ask for full-precision matmul, `full_precision_matrix_mult: true`, as ComfyUI writes it."""
    tensors, metadata = dict(fx.tensors), dict(fx.metadata)
    header = json.loads(metadata["_quantization_metadata"]) if "_quantization_metadata" in metadata else None
    for name in layers:
        stem = fx.prefix + name
        if header is not None:
            header["layers"][stem][FULL_PRECISION_MM] = True
        if f"{stem}.comfy_quant" in tensors:
            conf = read_json_marker(tensors[f"{stem}.comfy_quant"])
            tensors[f"{stem}.comfy_quant"] = json_marker({**conf, FULL_PRECISION_MM: True})
    if header is not None:
        metadata["_quantization_metadata"] = json.dumps(header)
    return dataclasses.replace(fx, tensors=tensors, metadata=metadata)


FIXTURES: dict[str, Callable[..., Fixture]] = {
    name: functools.partial(build_fixture, conv) for name, conv in CONVENTIONS.items()
}


def write_fixture(name: str, folder: str | Path, variant: str = DEFAULT_VARIANT, seed: int = 0) -> Path:
    """Build fixture `name` and write it into `folder`; returns the file's path."""
    return FIXTURES[name](variant=variant, seed=seed).write(folder)


def write_fixtures(
    folder: str | Path, names=None, variant: str = DEFAULT_VARIANT, seed: int = 0
) -> dict[str, Path]:
    """Write several fixtures (all by default) into `folder`: name -> path."""
    return {name: write_fixture(name, folder, variant, seed) for name in names or FIXTURES}
