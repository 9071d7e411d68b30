"""What a ComfyUI user sees of the nodes before running them (COMFYUI_PATH): every input and output has a
tooltip, the search finds every node under "WAN NVFP4" and the words users type, the categories, the help
pages served where ComfyUI's frontend looks for them, and the Doctor's report listing the file's metadata.

Checked on a running server (`/object_info` is what the frontend reads), not on the schema objects.
"""

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES

from .comfy_server import comfy_server, get_json, prepare_base_directory, run_graph

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
HELP_DIR = REPO / "nodes" / "web" / "docs"
PACK = "WAN NVFP4"
LOADERS = ("WanNVFP4Loader", "WanNVFP4LoaderAdvanced", "WanNVFP4PairLoader")
# node id -> (category, words a user types that must each be one of its search aliases)
NODES = {
    **dict.fromkeys(LOADERS, ("loaders/WAN NVFP4", (PACK, "nvfp4", "fp8", "wan", "load diffusion model"))),
    "WanNVFP4Doctor": ("utils/WAN NVFP4", (PACK, "doctor", "inspect", "nvfp4", "fp8", "metadata")),
    "WanQuantizeCheckpoint": ("utils/WAN NVFP4", (PACK, "quantize", "convert", "nvfp4", "fp8")),
    "WanRepairCheckpoint": ("utils/WAN NVFP4", (PACK, "repair", "nvfp4", "fp8")),
}
HELP_PAGES = tuple(NODES)
MODEL = "wan_tiny_with_metadata.safetensors"
EXTRA_METADATA = {"modelspec.title": "my tiny WAN", "converter": "made with comfy-kitchen 0.2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_node_help")
    folders = prepare_base_directory(root)
    fx = FIXTURES["comfy_nvfp4"]()
    fx.metadata = {**fx.metadata, **EXTRA_METADATA}
    fx.write(folders["diffusion_models"]).rename(folders["diffusion_models"] / MODEL)
    with comfy_server(root, ["--cpu"]) as s:
        yield s.url


@pytest.fixture(scope="module")
def object_info(server):
    return get_json(server, "/object_info")


def _inputs(info: dict):
    for section in ("required", "optional"):
        yield from info["input"].get(section, {}).items()


@pytest.mark.parametrize("node", NODES)
def test_every_input_and_output_has_a_tooltip(object_info, node):
    info = object_info[node]
    missing = [name for name, spec in _inputs(info) if not str(spec[1].get("tooltip") or "").strip()]
    assert not missing, f"{node}: inputs without a tooltip: {missing}"
    assert len(info["output_tooltips"]) == len(info["output"])
    assert all(str(t or "").strip() for t in info["output_tooltips"]), f"{node}: {info['output_tooltips']}"
    assert info["description"].strip()


@pytest.mark.parametrize("node", NODES)
def test_search_aliases_and_category(object_info, node):
    category, words = NODES[node]
    info = object_info[node]
    assert info["category"] == category
    aliases = {a.lower() for a in info.get("search_aliases") or []}
    missing = [w for w in words if w.lower() not in aliases]
    assert not missing, f"{node}: search aliases {sorted(aliases)} lack {missing}"


def test_every_pack_node_is_found_under_the_pack_name(object_info):
    """The frontend searches name, display_name and search_aliases: "WAN NVFP4" must hit all six nodes."""
    module = object_info[LOADERS[0]]["python_module"]
    pack = {n for n, i in object_info.items() if i["python_module"] == module}
    assert pack == set(NODES)
    for node in pack:
        info = object_info[node]
        fields = [info["name"], info["display_name"], *(info.get("search_aliases") or [])]
        assert any(PACK.lower() in f.lower() for f in fields), node


def _fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, "", ""


def _help_url(info: dict) -> str:
    """Where ComfyUI's frontend (1.47, 1.49) fetches a custom node's help page when no locale page exists:
    /extensions/<custom_nodes folder from python_module, minus any @version>/docs/<node id>.md"""
    parts = info["python_module"].split(".")
    assert parts[0] == "custom_nodes" and len(parts) >= 2, info["python_module"]
    return f"/extensions/{parts[1].split('@')[0]}/docs/{info['name']}.md"


@pytest.mark.parametrize("node", HELP_PAGES)
def test_help_page_is_served_where_the_frontend_looks(server, object_info, node):
    info = object_info[node]
    status, content_type, text = _fetch(server + _help_url(info))
    assert status == 200, f"{_help_url(info)}: HTTP {status}"
    assert "text/html" not in content_type, "the frontend discards an HTML answer as 'not found'"
    assert text.startswith(f"# {info['display_name']}\n")
    documented = [name for name, _ in _inputs(info) if f"**{name}**" not in text]
    assert not documented, f"{node}: help page does not describe {documented}"


def test_help_pages_match_nodes_and_add_no_scripts(server, object_info):
    pages = {p.stem for p in HELP_DIR.glob("*.md")}
    assert set(HELP_PAGES) <= pages <= set(NODES), pages
    web_root = _help_url(object_info[LOADERS[0]]).rsplit("/docs/", 1)[0]
    scripts = [s for s in get_json(server, "/extensions") if s.startswith(web_root + "/")]
    assert not scripts, f"the help folder must not load JavaScript into the frontend: {scripts}"
    assert _fetch(server + web_root + "/docs/NoSuchNode.md")[0] == 404


def test_doctor_report_lists_the_header_metadata(server):
    graph = {"1": {"class_type": "WanNVFP4Doctor", "inputs": {"unet_name": MODEL}}}
    entry = run_graph(server, graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["1"]["text"][0]
    assert "Header metadata: 3 key(s)" in text
    for key in ("_quantization_metadata", *EXTRA_METADATA):
        assert key in text
    assert "comfy-kitchen" in text.split("Header metadata", 1)[1]
