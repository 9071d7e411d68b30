"""WAN NVFP4: load, inspect, repair and convert NVFP4 / scaled-FP8 WAN checkpoints in ComfyUI.

Importing this package never imports ComfyUI; ComfyUI calls `comfy_entrypoint` (node API V3). A ComfyUI too
old to call it (no `comfy_api.latest`) gets one log line saying so when it imports the pack, not silence.
"""

import sys

__version__ = "0.1.0"

# ComfyUI serves this folder at /extensions/<pack folder>/; the frontend's node help panel reads
# docs/<node id>.md from it (no JavaScript lives there)
WEB_DIRECTORY = "./nodes/web"


async def comfy_entrypoint():
    """ComfyUI V3 entry point: builds the extension only when ComfyUI asks for it."""
    from .nodes import comfy_entrypoint as entrypoint

    return await entrypoint()


if "folder_paths" in sys.modules:  # imported by ComfyUI as a custom node (the CLI and tests never have it)
    from .nodes.comfy_compat import warn_without_node_api

    warn_without_node_api()
