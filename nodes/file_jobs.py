"""What the file-writing nodes share: the output name inside `diffusion_models`, ComfyUI's progress bar, and
the node result (the report as text, the written path in the UI)."""

import os
from pathlib import Path

import comfy.utils
from comfy_api.latest import io

PROGRESS_STEPS = 1000
OUTPUT_SUFFIXES = (".safetensors", ".sft")


def target_path(name: str, source: Path) -> Path:
    """`name` as a plain file name next to the source, i.e. in the same `diffusion_models` folder."""
    clean = name.strip()
    if not clean or Path(clean).name != clean or clean in (".", ".."):
        raise ValueError(f"target name must be a plain file name (no folders), got {name!r}")
    if not clean.endswith(OUTPUT_SUFFIXES):
        clean += ".safetensors"
    return Path(source).parent / clean


def progress_bar_callback():
    """A `checkpoint.progress` callback driving ComfyUI's progress bar for the running node."""
    bar = comfy.utils.ProgressBar(PROGRESS_STEPS)

    def callback(done: int, total: int, label: str) -> None:
        bar.update_absolute(PROGRESS_STEPS * done // total if total else PROGRESS_STEPS, PROGRESS_STEPS)

    return callback


def job_output(report, dst: Path) -> io.NodeOutput:
    """The job's per-layer report as the node's STRING output; the written file named in the UI."""
    return io.NodeOutput(report.to_text(), ui={"text": [f"wrote {os.fspath(dst)}"]})
