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
from .loader_nodes import FOLDER, TOOLS_CATEGORY


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
            inputs=[
                io.Combo.Input(
                    "source", options=folder_paths.get_filename_list(FOLDER), tooltip="model to convert"
                ),
                io.String.Input("target_name", default="wan_nvfp4.safetensors", tooltip="new file name"),
                io.Combo.Input("format", options=list(TARGETS), default="nvfp4"),
                io.Combo.Input(
                    "layout",
                    options=list(LAYOUTS),
                    default="comfy",
                    tooltip="comfy: loads in vanilla ComfyUI; modelopt: NVIDIA ModelOpt conventions",
                ),
                io.Combo.Input(
                    "preset", options=list(PRESETS), default="wan", tooltip="layers kept in high precision"
                ),
                io.Int.Input("keep_first_blocks", default=0, min=0, max=64),
                io.Int.Input("keep_last_blocks", default=0, min=0, max=64),
                io.Combo.Input("keep_dtype", options=list(KEEP_DTYPES), default="source"),
                io.Boolean.Input(
                    "overwrite", default=False, tooltip="replace an existing target (never the source)"
                ),
            ],
            outputs=[io.String.Output(display_name="report")],
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
