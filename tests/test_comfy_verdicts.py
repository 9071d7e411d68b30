"""The inspector's "what vanilla ComfyUI would do" verdict against what vanilla ComfyUI really does with each
fixture (COMFYUI_PATH): load natively (output matches the oracle), refuse with a size mismatch, refuse with
another error, or load silently with wrong output."""

import pytest

from wan_nvfp4.checkpoint import inspect_checkpoint
from wan_nvfp4.checkpoint.conventions.verdicts import (
    LOADS_NATIVELY,
    LOADS_SILENTLY_WRONG,
    REFUSES_ERROR,
    REFUSES_SIZE_MISMATCH,
)
from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

CORRECT = 2e-3


def vanilla_outcome(fx, path) -> tuple[str, str]:
    """Load `path` exactly like ComfyUI's UNETLoader and judge the result."""
    import comfy.sd

    try:
        patcher = comfy.sd.load_diffusion_model(str(path))
    except Exception as e:  # any refusal counts; the message tells which
        text = str(e)
        return (REFUSES_SIZE_MISMATCH if "size mismatch" in text else REFUSES_ERROR), text[:200]
    inputs = H.forward_inputs(fx.variant)
    err = H.rel_err(H.run(patcher, inputs), H.run(H.vanilla_model(H.oracle_state_dict(fx)), inputs))
    H.unload()
    return (LOADS_NATIVELY if err <= CORRECT else LOADS_SILENTLY_WRONG), f"relative error {err:.3g}"


@pytest.mark.parametrize("name", list(FIXTURES))
def test_inspector_verdict_matches_vanilla_comfyui(tmp_path, name):
    H.comfy()
    fx = FIXTURES[name]()
    path = fx.write(tmp_path)
    real, detail = vanilla_outcome(fx, path)
    assert real == fx.comfyui, f"fixture ground truth disagrees with ComfyUI: {real} ({detail})"
    predicted = inspect_checkpoint(path).comfyui.outcome
    assert predicted == real, f"inspector says {predicted}, vanilla ComfyUI {real} ({detail})"
