"""End to end over HTTP (COMFYUI_PATH): ComfyUI started headless with the pack in a temporary custom_nodes
folder; API graphs using the loader and the doctor run to success, a bad file gives an `execution_error` that
names the file and layer while the server keeps serving, and every example workflow validates against
`/object_info`."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from wan_nvfp4.checkpoint.fixtures import FIXTURES

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
PACK_NODES = {"WanNVFP4Loader", "WanNVFP4LoaderAdvanced", "WanNVFP4PairLoader", "WanNVFP4Doctor"}
GOOD = "wan_tiny_nvfp4.safetensors"
BAD = "wan_tiny_missing_scale.safetensors"
BAD_LAYER = "blocks.1.ffn.2"

# a test-only node: random text conditioning (the tiny models have no real text encoder)
TEST_NODE = """
import torch

class RandomWanConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 7, 4096, generator=g), {}]],)

NODE_CLASS_MAPPINGS = {"RandomWanConditioning": RandomWanConditioning}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, route: str):
    with urllib.request.urlopen(base + route, timeout=30) as r:
        return json.loads(r.read())


def _post(base: str, route: str, body: dict):
    req = urllib.request.Request(
        base + route, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _prepare(tmp: Path) -> None:
    models = tmp / "models" / "diffusion_models"
    models.mkdir(parents=True)
    fx = FIXTURES["comfy_nvfp4"](variant="wan2.1-t2v-14b")
    path = fx.write(models)
    path.rename(models / GOOD)
    bad = {k: v for k, v in fx.tensors.items() if k != f"{BAD_LAYER}.weight_scale_2"}
    from safetensors.torch import save_file

    save_file(bad, str(models / BAD), metadata=fx.metadata)
    nodes = tmp / "custom_nodes"
    (nodes / "wan_nvfp4_test_conditioning").mkdir(parents=True)
    (nodes / "wan_nvfp4_test_conditioning" / "__init__.py").write_text(TEST_NODE)
    (nodes / "wan_nvfp4").symlink_to(REPO, target_is_directory=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("comfy_http")
    _prepare(tmp)
    port = _free_port()
    cmd = [
        sys.executable,
        str(Path(os.environ["COMFYUI_PATH"]) / "main.py"),
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(tmp),
        "--database-url",
        "sqlite:///:memory:",
        "--disable-auto-launch",
    ]
    with open(tmp / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"ComfyUI exited ({proc.returncode}):\n{(tmp / 'server.log').read_text()[-3000:]}"
                )
            try:
                _get(base, "/system_stats")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail("ComfyUI did not answer within 120 s")
                time.sleep(0.5)
        yield {"base": base, "log": tmp / "server.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run(base: str, graph: dict, timeout: float = 240) -> dict:
    prompt_id = _post(base, "/prompt", {"prompt": graph, "client_id": str(uuid.uuid4())})["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = _get(base, f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"]["status_str"] in ("success", "error"):
                return entry
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish within {timeout} s")


def _sampling_graph(unet: str, seed: int) -> dict:
    return {
        "1": {"class_type": "WanNVFP4Loader", "inputs": {"unet_name": unet}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "3": {"class_type": "RandomWanConditioning", "inputs": {"seed": 0}},
        "4": {"class_type": "RandomWanConditioning", "inputs": {"seed": 1}},
        "5": {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 64, "height": 64, "length": 5, "batch_size": 1},
        },
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["2", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 3.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["3", 0],
                "negative": ["4", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "7": {
            "class_type": "SaveLatent",
            "inputs": {"samples": ["6", 0], "filename_prefix": "wan_nvfp4_test"},
        },
    }


def test_loader_end_to_end_and_errors_keep_serving(server):
    base = server["base"]
    ok = _run(base, _sampling_graph(GOOD, seed=1))
    assert ok["status"]["status_str"] == "success", ok["status"]
    assert ok["outputs"]["7"]["latents"][0]["filename"].startswith("wan_nvfp4_test")

    bad = _run(base, _sampling_graph(BAD, seed=2))
    assert bad["status"]["status_str"] == "error"
    errors = [m[1] for m in bad["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "WanNVFP4Loader"
    message = errors[0]["exception_message"]
    assert BAD in message and BAD_LAYER in message and "weight_scale_2" in message

    again = _run(base, _sampling_graph(GOOD, seed=3))
    assert again["status"]["status_str"] == "success", "ComfyUI must keep serving after a bad file"


def test_doctor_node_shows_the_report(server):
    graph = {"1": {"class_type": "WanNVFP4Doctor", "inputs": {"unet_name": BAD, "reference_name": GOOD}}}
    entry = _run(server["base"], graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["1"]["text"][0]
    assert BAD in text and BAD_LAYER in text and "Reference check" in text


def test_pack_nodes_in_object_info(server):
    info = _get(server["base"], "/object_info")
    for node in PACK_NODES | {"WanQuantizeCheckpoint"}:
        assert node in info, f"{node} missing from /object_info"
    loader = info["WanNVFP4Loader"]
    assert loader["output"] == ["MODEL"] and GOOD in loader["input"]["required"]["unet_name"][1]["options"]
    assert info["WanNVFP4PairLoader"]["output"] == ["MODEL", "MODEL"]
    assert loader["category"] == "loaders/WAN NVFP4"


def _widget_inputs(node_info: dict) -> list[tuple[str, list]]:
    """(name, spec) of every widget input in the order the frontend stores widgets_values."""
    order = node_info.get("input_order", {})
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = node_info["input"][section][name]
            kind = spec[0]
            if kind == "COMBO" or isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                out.append((name, spec))
    return out


def _combo_options(spec) -> list | None:
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options") if spec[0] == "COMBO" and len(spec) > 1 else None


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_example_workflow_validates_against_object_info(server, workflow):
    info = _get(server["base"], "/object_info")
    graph = json.loads(workflow.read_text())
    assert (workflow.with_suffix(".jpg")).exists(), "every example workflow has a same-name thumbnail"
    assert any(n["type"] in PACK_NODES for n in graph["nodes"]), "uses the pack's loader"
    assert not any(n["type"] == "UNETLoader" for n in graph["nodes"]), "the pack's loader replaces UNETLoader"
    for node in graph["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in info, f"{workflow.name}: node type {node['type']} not in /object_info"
        if node["type"] not in PACK_NODES:
            continue
        widgets = _widget_inputs(info[node["type"]])
        values = node.get("widgets_values", [])
        assert len(values) == len(widgets), f"{node['type']}: {values} vs inputs {[w for w, _ in widgets]}"
        for (name, spec), value in zip(widgets, values, strict=True):
            options = _combo_options(spec)
            if name.endswith("unet") or name == "unet_name" or name == "reference_name":
                assert isinstance(value, str) and value.endswith(".safetensors"), f"{name}={value!r}"
                models = {m["name"] for m in node.get("properties", {}).get("models", [])}
                assert value in models or value == "none", f"{name}={value} has no download entry"
            elif options is not None:
                assert value in options, f"{node['type']}.{name}={value!r} not in {options}"
