"""Load a WAN checkpoint into ComfyUI's own WanModel, built with this pack's operations.

The header is classified first (`checkpoint.classify_checkpoint`: every Linear's format and conventions, or
the file's problems as a `CheckpointError` naming file and layer); then ComfyUI reads the file itself
(`comfy.utils.load_torch_file`, mmap, no second copy) and builds the model with a per-load operations class
(`linear.make_operations`). Passing custom operations makes ComfyUI skip its own legacy conversion, so the
model-level `scaled_fp8` marker is dropped here (the classifier already used it as evidence).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import comfy.sd
import comfy.supported_models
import comfy.utils
import torch

from ..checkpoint import CheckpointError, classify_checkpoint, open_checkpoint
from ..checkpoint.conventions.reference_match import conventions_with_reference
from ..checkpoint.conventions.verdicts import LOADS_NATIVELY, comfy_view, comfyui_verdict
from ..checkpoint.layers import NVFP4
from ..checkpoint.text import printable
from ..kernels.dispatch import AUTO, PATHS, REFERENCE, TORCH, TRITON_DEQUANT
from ..kernels.native_fp4 import NATIVE_FP4, W4A16, decide_nvfp4
from ..kernels.options import KernelOptions, PathLog
from . import lora, native_fp4
from .linear import LoadPlan, make_operations

LOG = logging.getLogger("wan_nvfp4.nodes")

AUTO_CHOICE = "auto"
COMPUTE_DTYPES = {AUTO_CHOICE: None, "bf16": torch.bfloat16, "fp16": torch.float16}
COMFYUI_NATIVE = "comfyui-native"  # the whole file to ComfyUI's own loader (files it reads correctly)
# auto: ComfyUI's FP4 GEMM for NVFP4 layers where usable (any convention, converted at load), else ours;
# native-fp4: that even where the GEMM is not usable; w4a16: our exact kernels only; a path: forced per call
KERNEL_PATHS = (AUTO, NATIVE_FP4, W4A16, *PATHS, COMFYUI_NATIVE)
NIBBLE_ORDER_CHOICES = (AUTO_CHOICE, "low_first", "high_first")
SCALE_LAYOUT_CHOICES = (AUTO_CHOICE, "linear", "swizzled")
LEGACY_FP8_MARKER = "scaled_fp8"
DEQUANTIZE_PATHS = (REFERENCE, TORCH, TRITON_DEQUANT)  # forced linear paths that also exist for dequantize


@dataclass(frozen=True)
class LoaderOptions:
    """What the Advanced node lets a user choose (hashable, so ComfyUI can re-create the patcher)."""

    compute_dtype: str = AUTO_CHOICE
    kernel_path: str = AUTO
    nibble_order: str = AUTO_CHOICE
    scale_layout: str = AUTO_CHOICE
    lora_mode: str = lora.EXACT
    reference_path: str | None = None  # same model in another precision: decides unstated conventions

    def __post_init__(self):
        choices = {
            "compute_dtype": tuple(COMPUTE_DTYPES),
            "kernel_path": KERNEL_PATHS,
            "nibble_order": NIBBLE_ORDER_CHOICES,
            "scale_layout": SCALE_LAYOUT_CHOICES,
            "lora_mode": lora.LORA_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


def override(choice: str) -> str | None:
    """A convention widget's value as an override: None for `auto` (the classifier validates the rest)."""
    return None if choice == AUTO_CHOICE else choice


def _reference_overrides(path: Path, options: LoaderOptions) -> tuple[str | None, str | None, str]:
    """(nibble_order, scale_layout, reason): explicit choices first, then the reference's decision."""
    nibble, layout = override(options.nibble_order), override(options.scale_layout)
    if options.reference_path is None:
        return nibble, layout, "caller override"
    nibble, layout, match = conventions_with_reference(
        str(path),
        options.reference_path,
        nibble,
        layout,
        hint="run the WAN NVFP4 Doctor with this reference for the per-layer table",
    )
    if match is None or not match.decided:
        return nibble, layout, "caller override"
    return nibble, layout, f"decided by comparison with the reference {Path(options.reference_path).name}"


def classify(path: str | Path, options: LoaderOptions):
    """The file's classification with the caller's overrides; raises CheckpointError for unusable files."""
    nibble, layout, reason = _reference_overrides(Path(path), options)
    info = classify_checkpoint(
        open_checkpoint(path), nibble_order=nibble, scale_layout=layout, override_reason=reason
    )
    info.raise_for_problems()
    return info


def _model_dtype(options: LoaderOptions, info, sd) -> torch.dtype | None:
    """The dtype the model runs in: the user's choice, else what ComfyUI picks for its own quantized files
    (never the fp8 storage dtype of a scaled-fp8 file)."""
    chosen = COMPUTE_DTYPES[options.compute_dtype]
    if chosen is not None or not any(s.is_quantized for s in info.layers.values()):
        return chosen
    return comfy.model_management.unet_dtype(
        model_params=comfy.utils.calculate_parameters(sd),
        supported_dtypes=comfy.supported_models.WAN21_T2V.supported_inference_dtypes,
        weight_dtype=None,
    )


def _honour_compute_dtype(patcher, options: LoaderOptions):
    """An explicit compute dtype is the dtype the model runs in. ComfyUI stores the model in it but
    manual-casts to what it deems fast on the device (fp32 on CPU, fp16 for bf16 on pre-Ampere GPUs); where
    that differs, the choice wins through ComfyUI's own mechanism (the stock ModelComputeDtype node's)."""
    chosen = COMPUTE_DTYPES[options.compute_dtype]
    if chosen is not None and patcher.model.get_dtype_inference() != chosen:
        patcher.set_model_compute_dtype(chosen)
    return patcher


def _plan(path: Path, info, options: LoaderOptions) -> LoadPlan:
    has_nvfp4 = any(spec.format == NVFP4 for spec in info.layers.values())
    # a file without NVFP4 layers runs our kernels (`auto` among them unless a per-call path is forced)
    choice = options.kernel_path if has_nvfp4 or options.kernel_path in PATHS else W4A16
    decision = decide_nvfp4(choice, native_fp4.probe())
    if has_nvfp4:  # why; the path summary (`kernel paths <file>: ...`) then says which ran per layer
        LOG.info("WAN NVFP4: %s: NVFP4 layers: %s", printable(path.name), decision.reason)
    return LoadPlan(
        path=str(path),
        layers=info.layers,
        kernel_options=KernelOptions(path=decision.kernel_path),
        dequant_path=options.kernel_path if options.kernel_path in DEQUANTIZE_PATHS else AUTO,
        lora_mode=options.lora_mode,
        path_log=PathLog(printable(path.name), len(info.layers)),
        nvfp4=decision,
    )


def _load_native(path: Path, info, options: LoaderOptions, disable_dynamic: bool = False):
    """ComfyUI's own loader and MixedPrecisionOps, for files it reads correctly (cuBLAS FP4 on Blackwell)."""
    verdict = comfyui_verdict(
        comfy_view(info.source, info.prefix, info.layers), info.layers, info.variant.is_wan
    )
    if verdict.outcome != LOADS_NATIVELY:
        raise CheckpointError(
            path,
            "ComfyUI's native path cannot read this file correctly",
            verdict.reasons[0].split(":")[0] if verdict.reasons else None,
            "a ComfyUI-native file (kernel_path comfyui-native)",
            verdict.summary,
            hint="use kernel_path auto, or rewrite the file with `wan-nvfp4 repair`",
        )
    dtype = COMPUTE_DTYPES[options.compute_dtype]
    model_options = {} if dtype is None else {"dtype": dtype}
    if _is_sharded(info):  # ComfyUI cannot open a sharded / diffusers export: hand it the renamed dict
        sd, metadata = _read_state_dict(path, info)
        patcher = comfy.sd.load_diffusion_model_state_dict(
            sd, model_options=model_options, metadata=metadata, disable_dynamic=disable_dynamic
        )
    else:
        patcher = comfy.sd.load_diffusion_model(
            str(path), model_options=model_options, disable_dynamic=disable_dynamic
        )
    LOG.info("WAN NVFP4: %s: loaded by ComfyUI's native path (%s)", printable(path.name), info.variant.id)
    return _honour_compute_dtype(patcher, options)


def _is_sharded(info) -> bool:
    return hasattr(info.source, "comfy_state_dict")


def _read_state_dict(path: Path, info) -> tuple[dict, dict]:
    """The state dict in ComfyUI's names: ComfyUI reads a single file itself (mmap); a sharded / diffusers
    export comes from its source, renamed, each tensor mapped lazily from its shard."""
    if _is_sharded(info):
        return info.source.comfy_state_dict(), dict(info.source.metadata)
    return comfy.utils.load_torch_file(str(path), return_metadata=True)


def load_wan_model(path: str | Path, options: LoaderOptions = LoaderOptions(), disable_dynamic: bool = False):
    """A ComfyUI ModelPatcher for the WAN checkpoint at `path`, quantized Linears kept as stored."""
    path = Path(path)
    info = classify(path, options)
    if options.kernel_path == COMFYUI_NATIVE:
        return _load_native(path, info, options, disable_dynamic)
    sd, metadata = _read_state_dict(path, info)
    sd.pop(info.prefix + LEGACY_FP8_MARKER, None)
    model_options = {"custom_operations": make_operations(_plan(path, info, options))}
    dtype = _model_dtype(options, info, sd)
    if dtype is not None:
        model_options["dtype"] = dtype
    patcher = comfy.sd.load_diffusion_model_state_dict(
        sd, model_options=model_options, metadata=metadata, disable_dynamic=disable_dynamic
    )
    if patcher is None:
        raise CheckpointError(
            path, "ComfyUI could not detect the model type", None, "a WAN diffusion model", info.variant.id
        )
    patcher.cached_patcher_init = (load_wan_model, (str(path), options))
    lora.register(patcher)
    LOG.info("WAN NVFP4: %s: %s; %s", printable(path.name), info.variant.id, _format_summary(info))
    return _honour_compute_dtype(patcher, options)


def _format_summary(info) -> str:
    counts: dict[str, int] = {}
    for spec in info.layers.values():
        conv = f" {spec.nibble_order}+{spec.scale_layout}" if spec.nibble_order else ""
        assumed = " (assumed)" if spec.assumed else ""
        label = f"{spec.format}{conv}{assumed}"
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{label}: {n} layers" for label, n in sorted(counts.items()))
