"""ComfyUI node "WAN NVFP4 Repair Checkpoint": rewrite a foreign-convention file in `diffusion_models` into
ComfyUI-native form (lossless), so that vanilla ComfyUI loads it too.

Thin wrapper: the work is `checkpoint.writing.repair.repair_checkpoint`; this file maps widgets to options,
drives ComfyUI's progress bar and returns the per-layer report as text.
"""

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..checkpoint.reading.sharded_source import export_label
from ..checkpoint.writing.repair import PER_ROW_FP8, VERIFY_MODES, RepairOptions, repair_checkpoint
from .file_jobs import job_output, progress_bar_callback, target_path
from .loader import AUTO_CHOICE, NIBBLE_ORDER_CHOICES, SCALE_LAYOUT_CHOICES, override
from .loader_nodes import FOLDER, PACK_ALIAS, TOOLS_CATEGORY, reference_input, reference_path, unet_input

OVERRIDES = {"nibble_order": NIBBLE_ORDER_CHOICES, "scale_layout": SCALE_LAYOUT_CHOICES}
OVERRIDE_TIP = "auto: what the file's evidence (or the reference) says; override only what the doctor says"
SEARCH_ALIASES = (
    PACK_ALIAS,
    "repair",
    "fix",
    "nvfp4",
    "fp8",
    "wan",
    "modelopt",
    "lightx2v",
    "convert to comfyui",
    "fix noise",
)


def default_target_name(source: str, path: str | None = None) -> str:
    """`<source>_repaired.safetensors`; for a diffusers export's shard `<pipeline>_<component>_repaired`."""
    label = export_label(path) if path is not None else None
    return f"{label or Path(source).stem}_repaired.safetensors"


class WanRepairCheckpoint(io.ComfyNode):
    """Lossless rewrite of a foreign-convention NVFP4 / FP8 WAN file into ComfyUI's native format."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanRepairCheckpoint",
            display_name="WAN NVFP4 Repair Checkpoint",
            category=TOOLS_CATEGORY,
            description="Rewrites a WAN NVFP4 / FP8 file whose conventions vanilla ComfyUI misreads or "
            "refuses (ModelOpt, LightX2V, metadata-less, markerless FP8; also a sharded diffusers / ModelOpt "
            "export, picked by any one shard) into one ComfyUI-native file: nibble "
            "swap, scale swizzle, metadata, markers, no requantization. Written next to the source in "
            "diffusion_models (atomically; the source is never modified); the dequantized weights are "
            "compared before and after. Returns the per-layer report; a JSON copy is saved next to the new "
            "file.",
            search_aliases=list(SEARCH_ALIASES),
            inputs=[
                unet_input("source", "the quantized WAN model to repair (never modified)"),
                io.String.Input(
                    "target_name", default="", tooltip="new file name; empty: <source>_repaired.safetensors"
                ),
                *(
                    io.Combo.Input(
                        name, options=list(choices), default=AUTO_CHOICE, optional=True, tooltip=OVERRIDE_TIP
                    )
                    for name, choices in OVERRIDES.items()
                ),
                reference_input(
                    "optional: the same model in bf16/fp16/fp8: decides the NVFP4 conventions by comparison"
                ),
                io.Combo.Input(
                    "per_row_fp8",
                    options=list(PER_ROW_FP8),
                    default="keep",
                    tooltip="ComfyUI has no per-row FP8: keep (this pack reads it), requantize per tensor, "
                    "or bf16",
                    optional=True,
                ),
                io.Combo.Input(
                    "verify",
                    options=list(VERIFY_MODES),
                    default="sample",
                    tooltip="compare dequantized weights on a sample of layers or on all of them",
                    optional=True,
                ),
                io.Boolean.Input(
                    "overwrite",
                    default=False,
                    tooltip="replace an existing target (never the source)",
                    optional=True,
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="report",
                    tooltip="per-layer report: what was rewritten and how, and the before/after comparison",
                )
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        source: str,
        target_name: str,
        nibble_order: str = AUTO_CHOICE,
        scale_layout: str = AUTO_CHOICE,
        reference_name: str = "none",
        per_row_fp8: str = "keep",
        verify: str = "sample",
        overwrite: bool = False,
    ) -> io.NodeOutput:
        src = folder_paths.get_full_path_or_raise(FOLDER, source)
        dst = target_path(target_name.strip() or default_target_name(source, src), Path(src))
        options = RepairOptions(
            nibble_order=override(nibble_order),
            scale_layout=override(scale_layout),
            per_row_fp8=per_row_fp8,
            verify=verify,
            overwrite=overwrite,
        )
        progress = progress_bar_callback()
        report = repair_checkpoint(
            src, dst, options, progress=progress, reference=reference_path(reference_name)
        )
        return job_output(report, dst)
