"""ComfyUI node "WAN NVFP4 Doctor": the inspector's report on a checkpoint, as text shown in the node."""

import folder_paths
from comfy_api.latest import io, ui

from ..bench import gpu_report
from ..checkpoint import CheckpointError, inspect_checkpoint
from ..checkpoint.conventions.reference_match import compare_with_reference
from ..checkpoint.text import printable
from .loader_nodes import FOLDER, PACK_ALIAS, TOOLS_CATEGORY, reference_input, reference_path, unet_input

SEARCH_ALIASES = (
    PACK_ALIAS,
    "doctor",
    "inspect",
    "inspector",
    "nvfp4",
    "fp8",
    "wan",
    "checkpoint info",
    "model info",
    "metadata",
    "why is my output noise",
)

# choice -> run the benchmark? (None: no GPU report)
GPU_REPORTS = {"off": None, "environment + self-check": False, "full (~30 s benchmark)": True}


def doctor_report(path: str, reference_path: str | None = None) -> str:
    """The inspector's text report; with a reference, also which convention the weights really follow."""
    try:
        text = inspect_checkpoint(path).to_text()
    except CheckpointError as e:
        return f"Cannot read this file: {e}"
    if reference_path is not None:
        try:
            text += "\n\nReference check\n" + compare_with_reference(path, reference_path).to_text()
        except CheckpointError as e:
            text += f"\n\nReference check failed: {e}"
    return printable(text, keep_newlines=True)


def gpu_report_text(choice: str) -> str:
    """`wan-nvfp4 gpu` as Markdown (the same report), or '' when off."""
    run_benchmark = GPU_REPORTS[choice]
    if run_benchmark is None:
        return ""
    return gpu_report.to_markdown(gpu_report.build_report("cuda", run_benchmark=run_benchmark))


class WanNVFP4Doctor(io.ComfyNode):
    """Explains a checkpoint: formats, conventions, evidence, problems, what ComfyUI and the pack do."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WanNVFP4Doctor",
            display_name="WAN NVFP4 Doctor",
            category=TOOLS_CATEGORY,
            description="Inspects a WAN checkpoint without loading it: per-layer formats and conventions "
            "with their evidence, problems, and what vanilla ComfyUI and this pack will do with it. With a "
            "reference (the same model in another precision) it decides conventions the file does not state.",
            search_aliases=list(SEARCH_ALIASES),
            inputs=[
                unet_input(
                    tooltip="the WAN model to inspect, from models/diffusion_models (only its header and a "
                    "few small tensors are read; the file is never modified)"
                ),
                reference_input(
                    "optional: the same model in bf16/fp16/fp8; compares a few layers to decide the NVFP4 "
                    "conventions the file does not state"
                ),
                io.Combo.Input(
                    "gpu_report",
                    options=list(GPU_REPORTS),
                    default="off",
                    optional=True,
                    tooltip="also report this GPU (versions, kernel self-check, optional ~30 s benchmark): "
                    "the same as `wan-nvfp4 gpu`, to paste into an issue",
                ),
            ],
            outputs=[
                io.String.Output(
                    "report",
                    tooltip="the report as text (also shown in the node): formats, conventions and their "
                    "evidence, header metadata, problems, and what ComfyUI and this pack do with the file",
                )
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, unet_name, reference_name="none", gpu_report="off") -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, unet_name)
        text = doctor_report(path, reference_path(reference_name))
        gpu_text = gpu_report_text(gpu_report)
        text = f"{text}\n\n{gpu_text}" if gpu_text else text
        return io.NodeOutput(text, ui=ui.PreviewText(text))
