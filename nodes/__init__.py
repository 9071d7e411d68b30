"""ComfyUI side of the pack (the only code that imports ComfyUI): V3 extension with the pack's nodes.

Nothing of ComfyUI is imported here at module level: `comfy_compat` checks first that this ComfyUI has every
API the nodes use; when it lacks one, the extension has no nodes and one log line says what is missing.
"""

from .comfy_compat import log_missing, missing_features


def node_classes() -> list:
    """The pack's node classes (importing them imports ComfyUI)."""
    from .doctor_node import WanNVFP4Doctor
    from .loader_nodes import WanNVFP4Loader, WanNVFP4LoaderAdvanced, WanNVFP4PairLoader
    from .quantize_node import WanQuantizeCheckpoint
    from .repair_node import WanRepairCheckpoint

    return [
        WanNVFP4Loader,
        WanNVFP4LoaderAdvanced,
        WanNVFP4PairLoader,
        WanNVFP4Doctor,
        WanQuantizeCheckpoint,
        WanRepairCheckpoint,
    ]


async def comfy_entrypoint():
    """The V3 extension: the pack's nodes, or none (and one logged line) on a ComfyUI that lacks an API."""
    from comfy_api.latest import ComfyExtension

    missing = missing_features()
    if missing:
        log_missing(missing)
    nodes = [] if missing else node_classes()

    class WanNVFP4Extension(ComfyExtension):
        async def get_node_list(self) -> list:
            return list(nodes)

    return WanNVFP4Extension()
