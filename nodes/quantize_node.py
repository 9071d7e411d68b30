"""ComfyUI node "WAN Quantize Checkpoint": convert a model from `diffusion_models` to NVFP4 / FP8 in place.

Thin wrapper: the work is `checkpoint.writing.convert.convert_checkpoint`; this file maps widgets to options,
drives ComfyUI's progress bar and returns the per-layer report as text.
"""

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..checkpoint.writing.convert import KEEP_DTYPES, ConvertOptions, convert_checkpoint
from ..checkpoint.writing.output_formats import LAYOUTS
from ..checkpoint.writing.presets import PRESETS, TARGETS, PresetOptions
from .file_jobs import job_output, progress_bar_callback, target_path
from .loader_nodes import FOLDER, PACK_ALIAS, TOOLS_CATEGORY

SEARCH_ALIASES = (
    PACK_ALIAS,
    "quantize",
    "quantise",
    "convert",
    "nvfp4",
    "fp8",
    "wan",
    "make nvfp4",
    "compress model",
    "save nvfp4",
)


class WanQuantizeCheckpoint(io.ComfyNode):
    """Quantize a bf16/fp16/fp32 or scaled-FP8 WAN model to NVFP4 or FP8 (ComfyUI-native by default)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanQuantizeCheckpoint",
            display_name="WAN Quantize Checkpoint",
            category=TOOLS_CATEGORY,
            description="Converts a WAN diffusion model to NVFP4 or FP8, streaming layer by layer, and "
            "writes the result next to the source in diffusion_models (atomically; the source is never "
            "modified). Returns the per-layer SQNR report; a JSON copy is saved next to the new file.",
            search_aliases=list(SEARCH_ALIASES),
            inputs=[
                io.Combo.Input(
                    "source",
                    options=folder_paths.get_filename_list(FOLDER),
                    tooltip="the WAN model to convert, from models/diffusion_models: bf16/fp16/fp32 or "
                    "scaled FP8 (never modified)",
                ),
                io.String.Input(
                    "target_name",
                    default="wan_nvfp4.safetensors",
                    tooltip="new file name, written in the source's folder (diffusion_models)",
                ),
                io.Combo.Input(
                    "format",
                    options=list(TARGETS),
                    default="nvfp4",
                    tooltip="nvfp4: 4-bit weights with fp8 block scales (about 3.5x smaller than bf16); "
                    "fp8: float8_e4m3fn with one scale per tensor (about 2x smaller)",
                ),
                io.Combo.Input(
                    "layout",
                    options=list(LAYOUTS),
                    default="comfy",
                    tooltip="comfy: loads in vanilla ComfyUI; modelopt: NVIDIA ModelOpt conventions",
                ),
                io.Combo.Input(
                    "preset",
                    options=list(PRESETS),
                    default="wan",
                    tooltip="which layers stay in high precision: wan keeps embeddings, modulation, norms, "
                    "the head and adapters (quality); all quantizes every Linear it can",
                ),
                io.Int.Input(
                    "keep_first_blocks",
                    default=0,
                    min=0,
                    max=64,
                    tooltip="also keep this many of the first transformer blocks in high precision (better "
                    "quality, larger file)",
                ),
                io.Int.Input(
                    "keep_last_blocks",
                    default=0,
                    min=0,
                    max=64,
                    tooltip="also keep this many of the last transformer blocks in high precision (better "
                    "quality, larger file)",
                ),
                io.Combo.Input(
                    "keep_dtype",
                    options=list(KEEP_DTYPES),
                    default="source",
                    tooltip="dtype of the layers kept in high precision: source keeps their dtype (a "
                    "quantized source's kept layers become bf16); or cast them to bf16, fp16 or fp32",
                ),
                io.Boolean.Input(
                    "overwrite", default=False, tooltip="replace an existing target (never the source)"
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="report",
                    tooltip="per-layer report: what was quantized or kept and why, with SQNR (dB)",
                )
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        source: str,
        target_name: str,
        format: str,
        layout: str,
        preset: str,
        keep_first_blocks: int,
        keep_last_blocks: int,
        keep_dtype: str,
        overwrite: bool,
    ) -> io.NodeOutput:
        src = folder_paths.get_full_path_or_raise(FOLDER, source)
        dst = target_path(target_name, Path(src))
        options = ConvertOptions(
            target=format,
            layout=layout,
            preset=PresetOptions(preset, keep_first_blocks, keep_last_blocks),
            keep_dtype=KEEP_DTYPES[keep_dtype],
            overwrite=overwrite,
        )
        return job_output(convert_checkpoint(src, dst, options, progress=progress_bar_callback()), dst)
