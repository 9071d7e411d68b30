"""ComfyUI's own model saving (`comfy.sd.save_checkpoint`, what ModelSave / CheckpointSave run) on a model
this pack loaded (COMFYUI_PATH, CPU): the file reads back right. Where vanilla ComfyUI reads the stored layers
correctly the saved file carries ComfyUI's own markers and vanilla ComfyUI gives our output; otherwise it
refuses the file (never loads it silently wrong) and this pack reads it back exactly."""

import pytest

from wan_nvfp4.checkpoint.fixtures import FIXTURES
from wan_nvfp4.checkpoint.inspect import inspect_checkpoint
from wan_nvfp4.checkpoint.verdicts import LOADS_NATIVELY

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

MAX_REL_ERR = 2e-3
# ComfyUI-native NVFP4 and FP8 (comfy, legacy, Kijai), per-row FP8, plain FP8, foreign NVFP4, mixed
SAVED = [
    "comfy_nvfp4",
    "kijai_fp8",
    "fp8_scale_weight_no_marker",
    "fp8_per_row",
    "fp8_plain",
    "modelopt_nvfp4",
    "lightx2v_nvfp4",
    "mixed",
]
NATIVE_AFTER_SAVE = {"comfy_nvfp4", "kijai_fp8", "fp8_scale_weight_no_marker", "fp8_plain", "mixed"}


@pytest.fixture(scope="module")
def loader():
    H.comfy()
    from wan_nvfp4.nodes import loader

    return loader


@pytest.mark.parametrize("name", SAVED)
def test_saved_model_reads_back_right(loader, tmp_path, name):
    import comfy.sd

    fx = FIXTURES[name]()
    inputs = H.forward_inputs(fx.variant)
    patcher = loader.load_wan_model(fx.write(tmp_path / "in"))
    ours = H.run(patcher, inputs)
    saved = tmp_path / "saved.safetensors"
    comfy.sd.save_checkpoint(str(saved), patcher, metadata={})
    H.unload()
    again = H.run(loader.load_wan_model(saved), inputs)
    H.unload()
    assert H.rel_err(again, ours) <= 1e-5, "this pack must read its own saved model exactly"
    report = inspect_checkpoint(saved)
    assert not report.info.assumed, "the saved file must state every layer's conventions"
    if name in NATIVE_AFTER_SAVE:
        assert report.comfyui.outcome == LOADS_NATIVELY, report.comfyui.reasons[:3]
        vanilla = H.run(comfy.sd.load_diffusion_model(str(saved)), inputs)
        H.unload()
        assert H.rel_err(vanilla, ours) <= MAX_REL_ERR
    else:  # vanilla ComfyUI cannot read the layers as stored: it must refuse, not load them silently wrong
        assert report.comfyui.outcome != LOADS_NATIVELY
        with pytest.raises(Exception):  # noqa: B017  (ComfyUI's own size-mismatch / format error)
            comfy.sd.load_diffusion_model(str(saved))
