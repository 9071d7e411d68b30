"""Shared test setup: markers that skip cleanly without a GPU or without ComfyUI."""

import os

import pytest
import torch


def _has_cuda_triton() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs an NVIDIA GPU with Triton (CPU-only machine)")
    comfy_path = os.environ.get("COMFYUI_PATH")
    skip_comfy = pytest.mark.skip(reason="COMFYUI_PATH is not set: ComfyUI integration tests skipped")
    cuda_ok = _has_cuda_triton()
    for item in items:
        if "cuda" in item.keywords and not cuda_ok:
            item.add_marker(skip_cuda)
        if "comfyui" in item.keywords and not comfy_path:
            item.add_marker(skip_comfy)
