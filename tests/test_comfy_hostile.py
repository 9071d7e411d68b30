"""Hostile files inside a running ComfyUI (COMFYUI_PATH), started with PYTHONIOENCODING=ascii: each file of a
representative subset of the corpus gives a prompt error from the WAN NVFP4 Loader naming the file, nothing
raises UnicodeEncodeError in ComfyUI's logging, and the next prompt on a good file still runs."""

import pytest

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from .comfy_server import base_sampling_graph, comfy_server, prepare_base_directory
from .hostile_corpus import build_corpus

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

GOOD = "wan_tiny_good.safetensors"
SUBSET = (
    "surrogate_tensor_name",
    "surrogate_metadata_value",
    "hostile_key_names",
    "pickle_disguised",
    "truncated",
    "deep_nesting_50000",
    "dtype_list",
    "duplicate_key_first_nan",
    "offsets_gap",
    "data_not_covered",
    "metadata_value_int",
    "block_scale_all_7f",
    "block_scale_negative",
    "scale2_inf",
    "scale2_matrix",
    "fp8_scale_zero",
    "ffn_transposed",
    "block_dims_disagree",
    "comfy_quant_unknown_format",
    "quant_metadata_deep",
    "config_deep",
    "t5_like",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_hostile")
    folders = prepare_base_directory(root)
    models = folders["diffusion_models"]
    FIXTURES["comfy_nvfp4"]().write(models).rename(models / GOOD)
    build_corpus(models, SUBSET)
    with comfy_server(root, ["--cpu"], env={"PYTHONIOENCODING": "ascii"}) as s:
        yield s


def _loader_error(entry: dict) -> str:
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "WanNVFP4Loader", entry["status"]
    return errors[0]["exception_message"]


def test_every_hostile_file_is_a_prompt_error_and_comfyui_keeps_running(server):
    for seed, name in enumerate(SUBSET):
        filename = f"{name}.safetensors"
        message = _loader_error(server.run(base_sampling_graph(filename, seed), timeout=120))
        assert filename in message and message.strip().isprintable(), message
        assert "Traceback" not in message
    log = server.log_text()
    assert "UnicodeEncodeError" not in log and "Logging error" not in log, log[-3000:]
    ok = server.run(base_sampling_graph(GOOD, seed=99))
    assert ok["status"]["status_str"] == "success", "ComfyUI must keep running prompts after hostile files"
