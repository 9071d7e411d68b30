"""Bad inputs through the loader node (COMFYUI_PATH): each error names the file and, for layer problems, the
layer, what was expected and what was found; pickles are refused without being unpickled."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from . import comfy_harness as H

pytestmark = pytest.mark.comfyui

LAYER = "blocks.0.self_attn.q"


class _Bomb:
    """Unpickling this creates a marker file: proof that a pickle was (not) loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    c = H.comfy()
    folder = tmp_path_factory.mktemp("bad") / "diffusion_models"
    folder.mkdir()
    c["folder_paths"].add_model_folder_path("diffusion_models", str(folder))
    from wan_nvfp4.nodes.loader_nodes import WanNVFP4Loader

    return WanNVFP4Loader, folder


def _save(folder, name, tensors, metadata=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / name), metadata=metadata)
    return name


def _error(node_cls, name):
    from wan_nvfp4.checkpoint import CheckpointError

    with pytest.raises(CheckpointError) as e:
        node_cls.execute(name)
    return e.value, str(e.value)


def test_missing_global_scale_names_file_and_layer(node):
    cls, folder = node
    fx = FIXTURES["comfy_nvfp4"]()
    tensors = dict(fx.tensors)
    del tensors[f"{LAYER}.weight_scale_2"]
    name = _save(folder, "no_scale2.safetensors", tensors, fx.metadata)
    _, text = _error(cls, name)
    assert "no_scale2.safetensors" in text and LAYER in text and "weight_scale_2" in text


def test_wrong_block_scale_shape_names_layer_expected_found(node):
    cls, folder = node
    fx = FIXTURES["modelopt_nvfp4"]()
    tensors = dict(fx.tensors)
    tensors[f"{LAYER}.weight_scale"] = tensors[f"{LAYER}.weight_scale"][:, :-1]
    name = _save(folder, "bad_scale.safetensors", tensors, fx.metadata)
    err, text = _error(cls, name)
    assert "bad_scale.safetensors" in text and LAYER in text
    assert err.expected is not None and err.found is not None


def test_truncated_file(node):
    cls, folder = node
    fx = FIXTURES["comfy_nvfp4"]()
    name = _save(folder, "truncated.safetensors", fx.tensors, fx.metadata)
    path = folder / name
    os.truncate(path, path.stat().st_size - 1000)
    _, text = _error(cls, name)
    assert "truncated.safetensors" in text and "past the end" in text


def test_not_a_wan_model(node):
    cls, folder = node
    name = _save(folder, "sdxl_like.safetensors", {"input_blocks.0.0.weight": torch.zeros(4, 4)})
    _, text = _error(cls, name)
    assert "sdxl_like.safetensors" in text and "not a WAN" in text


def test_pickle_is_refused_unread(node, tmp_path):
    cls, folder = node
    marker = tmp_path / "unpickled"
    with open(folder / "evil.ckpt", "wb") as f:
        pickle.dump({"x": _Bomb(str(marker))}, f)
    _, text = _error(cls, "evil.ckpt")
    assert "evil.ckpt" in text and "pickle" in text
    assert not marker.exists(), "the pickle must never be loaded"
