"""End to end over HTTP (COMFYUI_PATH): ComfyUI started headless with the pack in a temporary custom_nodes
folder; API graphs using the loader and the doctor run to success, a bad file gives an `execution_error` that
names the file and layer while the server keeps serving, and every example workflow validates against
`/object_info`."""

import json
from pathlib import Path

import pytest
import torch

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from .comfy_server import TEST_NODE, base_sampling_graph, comfy_server, get_json, run_graph

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
PACK_NODES = {"WanNVFP4Loader", "WanNVFP4LoaderAdvanced", "WanNVFP4PairLoader", "WanNVFP4Doctor"}
GOOD = "wan_tiny_nvfp4.safetensors"
BAD = "wan_tiny_missing_scale.safetensors"
BAD_LAYER = "blocks.1.ffn.2"


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
    with comfy_server(tmp, ["--cpu"]) as s:
        yield {"base": s.url, "log": s.log}


def test_loader_end_to_end_and_errors_keep_serving(server):
    base = server["base"]
    ok = run_graph(base, base_sampling_graph(GOOD, seed=1))
    assert ok["status"]["status_str"] == "success", ok["status"]
    assert ok["outputs"]["7"]["latents"][0]["filename"].startswith("wan_nvfp4_test")

    bad = run_graph(base, base_sampling_graph(BAD, seed=2))
    assert bad["status"]["status_str"] == "error"
    errors = [m[1] for m in bad["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "WanNVFP4Loader"
    message = errors[0]["exception_message"]
    assert BAD in message and BAD_LAYER in message and "weight_scale_2" in message

    again = run_graph(base, base_sampling_graph(GOOD, seed=3))
    assert again["status"]["status_str"] == "success", "ComfyUI must keep serving after a bad file"


def test_doctor_node_shows_the_report(server):
    graph = {"1": {"class_type": "WanNVFP4Doctor", "inputs": {"unet_name": BAD, "reference_name": GOOD}}}
    entry = run_graph(server["base"], graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["1"]["text"][0]
    assert BAD in text and BAD_LAYER in text and "Reference check" in text
    assert "GPU report" not in text  # off by default


def test_doctor_node_adds_the_gpu_report(server):
    inputs = {"unet_name": GOOD, "gpu_report": "environment + self-check"}
    entry = run_graph(server["base"], {"1": {"class_type": "WanNVFP4Doctor", "inputs": inputs}})
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["1"]["text"][0]
    assert GOOD in text and "## WAN NVFP4 GPU report" in text and "| comfyui | " in text
    if not torch.cuda.is_available():
        assert "No NVIDIA GPU (CUDA) is available" in text
    else:
        assert "### Kernel self-check" in text


def test_pack_nodes_in_object_info(server):
    info = get_json(server["base"], "/object_info")
    for node in PACK_NODES | {"WanQuantizeCheckpoint", "WanRepairCheckpoint"}:
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
    info = get_json(server["base"], "/object_info")
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
            if name.endswith("unet") or name == "unet_name":
                # a file the user makes (see the note): tests/test_example_workflows.py checks the rest
                assert isinstance(value, str) and value.endswith(".safetensors"), f"{name}={value!r}"
            elif options is not None:
                assert value in options, f"{node['type']}.{name}={value!r} not in {options}"
