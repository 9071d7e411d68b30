"""ComfyUI nodes (V3) that load WAN checkpoints: the loader, its Advanced variant and the A14B pair loader."""

import folder_paths
from comfy_api.latest import io

from ..checkpoint import CheckpointError
from ..checkpoint.reading.sharded_source import export_expert
from . import lora
from .loader import (
    AUTO_CHOICE,
    COMPUTE_DTYPES,
    KERNEL_PATHS,
    LOG,
    NIBBLE_ORDER_CHOICES,
    SCALE_LAYOUT_CHOICES,
    LoaderOptions,
    load_wan_model,
)

CATEGORY = "loaders/WAN NVFP4"
TOOLS_CATEGORY = "utils/WAN NVFP4"
FOLDER = "diffusion_models"
NO_REFERENCE = "none"

# what users type in the node search (the frontend matches name, display name and these aliases)
PACK_ALIAS = "WAN NVFP4"
LOADER_ALIASES = (
    PACK_ALIAS,
    "nvfp4",
    "fp8",
    "scaled fp8",
    "wan",
    "wan 2.1",
    "wan 2.2",
    "load diffusion model",
    "unet loader",
    "nvfp4 loader",
)
MODEL_TIP = "the loaded WAN model, weights kept quantized: connect it where Load Diffusion Model's MODEL goes"

# option name -> (choices, default, tooltip): the Advanced settings, shared by the pair loader
ADVANCED_OPTIONS = {
    "compute_dtype": (
        tuple(COMPUTE_DTYPES),
        AUTO_CHOICE,
        "dtype the model runs in (bf16/fp16 are honoured on every device, CPU included); auto picks what "
        "ComfyUI picks for quantized models on this device",
    ),
    "kernel_path": (
        KERNEL_PATHS,
        "auto",
        "auto: NVFP4 layers on ComfyUI's FP4 GEMM (W4A4) where it is usable (Blackwell, torch built "
        "for CUDA 13+, comfy-kitchen's CUDA backend on; any convention, converted at load), else Triton "
        "on NVIDIA GPUs (fused kernel at small M), torch elsewhere; w4a16: exact weights, activations "
        "never quantized (this pack's kernels only); native-fp4: ComfyUI's quantized ops even where the "
        "FP4 GEMM is not usable; or force one path (an error says why if it cannot run here); "
        "comfyui-native: the whole file to ComfyUI's own loader, only for files ComfyUI reads correctly",
    ),
    "nibble_order": (
        NIBBLE_ORDER_CHOICES,
        AUTO_CHOICE,
        "auto: what the file's evidence says; override only for files without metadata (see the doctor)",
    ),
    "scale_layout": (
        SCALE_LAYOUT_CHOICES,
        AUTO_CHOICE,
        "auto: what the file's evidence says; override only for files without metadata (see the doctor)",
    ),
    "lora_mode": (
        lora.LORA_MODES,
        lora.EXACT,
        "exact: LoRA applied to the dequantized weight on every step (no requantization loss); "
        "merge: merged once and requantized, like ComfyUI",
    ),
}


# pair loader: reference input -> which expert it is for
PAIR_REFERENCES = {"high_noise_reference": "high-noise", "low_noise_reference": "low-noise"}


def unet_input(
    name: str = "unet_name",
    tooltip: str = "WAN 2.1/2.2 diffusion model from models/diffusion_models: NVFP4, scaled FP8 or "
    "bf16/fp16, in any producer's convention (ComfyUI, ModelOpt, LightX2V, Kijai, ...); for a sharded "
    "diffusers / ModelOpt export pick any one of its shards",
):
    return io.Combo.Input(name, options=folder_paths.get_filename_list(FOLDER), tooltip=tooltip)


def advanced_inputs() -> list:
    return [
        io.Combo.Input(name, options=list(choices), default=default, optional=True, tooltip=tip)
        for name, (choices, default, tip) in ADVANCED_OPTIONS.items()
    ]


def reference_input(tooltip: str, name: str = "reference_name") -> io.Combo.Input:
    """Optional: the same model in another precision (bf16/fp16/fp8), from `diffusion_models`."""
    options = [NO_REFERENCE, *folder_paths.get_filename_list(FOLDER)]
    tip = f"{tooltip} ({NO_REFERENCE}: the file's own evidence decides)"
    return io.Combo.Input(name, options=options, default=NO_REFERENCE, optional=True, tooltip=tip)


def reference_path(name: str) -> str | None:
    return None if name == NO_REFERENCE else folder_paths.get_full_path_or_raise(FOLDER, name)


def options_from(kwargs: dict, reference_key: str = "reference_name") -> LoaderOptions:
    """The Advanced settings from a node's inputs; the reference from input `reference_key`."""
    chosen = {name: kwargs.get(name, default) for name, (_, default, _) in ADVANCED_OPTIONS.items()}
    return LoaderOptions(**chosen, reference_path=reference_path(kwargs.get(reference_key, NO_REFERENCE)))


def load(unet_name: str, options: LoaderOptions):
    return load_wan_model(folder_paths.get_full_path_or_raise(FOLDER, unet_name), options)


def check_expert_slot(slot: str, path: str) -> None:
    """Refuse a diffusers A14B export component picked for the other expert's input (the pipeline's
    `model_index.json` says which is which: `transformer` is high noise, `transformer_2` low noise)."""
    expert, reason = export_expert(path)
    if expert is not None and expert != slot:
        raise CheckpointError(
            path,
            f"this is the {expert.replace('_', '-')} expert, picked as the {slot.replace('_', '-')} expert",
            None,
            f"the {slot.replace('_', '-')} expert",
            reason,
            hint="swap the two inputs",
            kind="file",
        )


class WanNVFP4Loader(io.ComfyNode):
    """Drop-in for `Load Diffusion Model` (UNETLoader) for NVFP4 / scaled-FP8 / bf16 WAN checkpoints."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanNVFP4Loader",
            display_name="WAN NVFP4 Loader",
            category=CATEGORY,
            description="Loads a WAN 2.1/2.2 diffusion model in any NVFP4 or scaled-FP8 convention (ComfyUI, "
            "ModelOpt, LightX2V, Kijai, ...) with weights kept quantized, fast on any GPU. Conventions come "
            "from the file; exact on-the-fly LoRA.",
            search_aliases=[*LOADER_ALIASES, "wan loader", "unet loader nvfp4"],
            inputs=[unet_input()],
            outputs=[io.Model.Output(tooltip=MODEL_TIP)],
        )

    @classmethod
    def execute(cls, unet_name) -> io.NodeOutput:
        return io.NodeOutput(load(unet_name, LoaderOptions()))


class WanNVFP4LoaderAdvanced(io.ComfyNode):
    """The loader with compute dtype, kernel path, convention overrides and LoRA mode."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanNVFP4LoaderAdvanced",
            display_name="WAN NVFP4 Loader (Advanced)",
            category=CATEGORY,
            description="WAN NVFP4 Loader with compute dtype, kernel path, nibble order / scale layout "
            "overrides, LoRA mode, and an optional reference model that decides conventions the file does "
            "not state.",
            search_aliases=[*LOADER_ALIASES, "advanced", "lora", "kernel", "compute dtype"],
            inputs=[
                unet_input(),
                *advanced_inputs(),
                reference_input(
                    "optional: the same model in bf16/fp16/fp8; compares a few layers at load and reads the "
                    "file in the convention that matches (explicit nibble_order / scale_layout still win)"
                ),
            ],
            outputs=[io.Model.Output(tooltip=MODEL_TIP)],
        )

    @classmethod
    def execute(cls, unet_name, **kwargs) -> io.NodeOutput:
        return io.NodeOutput(load(unet_name, options_from(kwargs)))


class WanNVFP4PairLoader(io.ComfyNode):
    """WAN 2.2 A14B: the high-noise and low-noise experts with the same settings (each its own options)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanNVFP4PairLoader",
            display_name="WAN NVFP4 Loader (2.2 A14B pair)",
            category=CATEGORY,
            description="Loads the two WAN 2.2 A14B experts (high noise, low noise) with the same settings; "
            "each expert can have its own reference (the same expert in another precision) that decides "
            "conventions its file does not state.",
            search_aliases=[*LOADER_ALIASES, "a14b", "high noise", "low noise", "pair", "two experts"],
            inputs=[
                unet_input(
                    "high_noise_unet",
                    "WAN 2.2 A14B high-noise expert (file name usually has high_noise), from "
                    "models/diffusion_models; NVFP4, scaled FP8 or bf16/fp16; of a diffusers / ModelOpt "
                    "export: any shard of transformer/",
                ),
                unet_input(
                    "low_noise_unet",
                    "WAN 2.2 A14B low-noise expert (file name usually has low_noise), from "
                    "models/diffusion_models; NVFP4, scaled FP8 or bf16/fp16; of a diffusers / ModelOpt "
                    "export: any shard of transformer_2/",
                ),
                *advanced_inputs(),
                *(
                    reference_input(
                        f"optional: the {label} expert in bf16/fp16/fp8; compares a few layers at load and "
                        "reads the file in the convention that matches",
                        key,
                    )
                    for key, label in PAIR_REFERENCES.items()
                ),
            ],
            outputs=[
                io.Model.Output(
                    "high_noise_model",
                    display_name="high_noise_model",
                    tooltip="the high-noise expert: to the sampler that runs the first (noisiest) steps",
                ),
                io.Model.Output(
                    "low_noise_model",
                    display_name="low_noise_model",
                    tooltip="the low-noise expert: to the sampler that runs the last (detail) steps",
                ),
            ],
        )

    @classmethod
    def execute(cls, high_noise_unet, low_noise_unet, **kwargs) -> io.NodeOutput:
        high, low = (options_from(kwargs, key) for key in PAIR_REFERENCES)
        for slot, name in (("high_noise", high_noise_unet), ("low_noise", low_noise_unet)):
            check_expert_slot(slot, folder_paths.get_full_path_or_raise(FOLDER, name))
        if high_noise_unet == low_noise_unet:
            LOG.warning(
                "WAN NVFP4 pair loader: %s is selected as both the high-noise and the low-noise expert; "
                "WAN 2.2 A14B has two different experts (and this loads the file twice)",
                high_noise_unet,
            )
        return io.NodeOutput(load(high_noise_unet, high), load(low_noise_unet, low))
