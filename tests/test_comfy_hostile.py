"""Hostile files inside a running ComfyUI (COMFYUI_PATH), started with PYTHONIOENCODING=ascii: every file of
the corpus (a FIFO included) gives a prompt error from the WAN NVFP4 Loader naming the file, nothing raises
UnicodeEncodeError in ComfyUI's logging, and the next prompt on a good file still runs."""

import pytest

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from .comfy_server import base_sampling_graph, comfy_server, prepare_base_directory
from .hostile_corpus import CASES, build_corpus

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

GOOD = "wan_tiny_good.safetensors"
# every case ComfyUI lists in diffusion_models (a directory named x.safetensors is not a file it offers)
CASES_IN_COMFYUI = tuple(name for name in CASES if name != "directory")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_hostile")
    folders = prepare_base_directory(root)
    models = folders["diffusion_models"]
    FIXTURES["comfy_nvfp4"]().write(models).rename(models / GOOD)
    build_corpus(models, CASES_IN_COMFYUI)
    with comfy_server(root, ["--cpu"], env={"PYTHONIOENCODING": "ascii"}) as s:
        yield s


def _loader_error(entry: dict) -> str:
    assert entry["status"]["status_str"] == "error", entry["status"]
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "WanNVFP4Loader", entry["status"]
    return errors[0]["exception_message"]


def test_every_hostile_file_is_a_prompt_error_and_comfyui_keeps_running(server):
    for seed, name in enumerate(CASES_IN_COMFYUI):
        filename = f"{name}.safetensors"
        message = _loader_error(server.run(base_sampling_graph(filename, seed), timeout=120))
        assert filename in message and message.strip().isprintable(), message
        assert "Traceback" not in message
    log = server.log_text()
    assert "UnicodeEncodeError" not in log and "Logging error" not in log, log[-3000:]
    ok = server.run(base_sampling_graph(GOOD, seed=99))
    assert ok["status"]["status_str"] == "success", "ComfyUI must keep running prompts after hostile files"
