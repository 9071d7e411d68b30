"""ComfyUI side of the pack (the only code that imports ComfyUI): V3 extension with the pack's nodes."""

from comfy_api.latest import ComfyExtension, io

from .doctor_node import WanNVFP4Doctor
from .loader_nodes import WanNVFP4Loader, WanNVFP4LoaderAdvanced, WanNVFP4PairLoader
from .quantize_node import WanQuantizeCheckpoint
from .repair_node import WanRepairCheckpoint

NODES = [
    WanNVFP4Loader,
    WanNVFP4LoaderAdvanced,
    WanNVFP4PairLoader,
    WanNVFP4Doctor,
    WanQuantizeCheckpoint,
    WanRepairCheckpoint,
]


class WanNVFP4Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> WanNVFP4Extension:
    return WanNVFP4Extension()
