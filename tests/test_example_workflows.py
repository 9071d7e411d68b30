"""The example workflows as files: what the template browser shows (title = file name), the model entries the
Missing Models panel turns into Download buttons, and the note every example carries.

ComfyUI's frontend (1.47, 1.49) shows a custom pack's template with its file name as the card title and the
same name, `-`/`_` read as spaces, as its description; an `index.json` would be listed as a workflow called
"index". The frontend offers a Download button only for a model entry (`properties.models`) whose name is the
value of a widget on an active node. The browser test checks how they open.
"""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "example_workflows"
WORKFLOWS = sorted(FOLDER.glob("*.json"))
NOTE_TYPES = {"MarkdownNote", "Note"}
LOADERS = {"WanNVFP4Loader", "WanNVFP4LoaderAdvanced", "WanNVFP4PairLoader"}
OFFICIAL = "https://huggingface.co/Comfy-Org/"
INACTIVE = {2, 4}  # never / bypass: the frontend skips these nodes' models
# what a card title may hold: readable words, no raw snake_case file name
TITLE = re.compile(r"^WAN 2\.[12] [0-9A-Z]+ [a-z ]+ \(NVFP4\)$")


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _note(workflow: dict) -> str:
    notes = [n for n in workflow["nodes"] if n["type"] in NOTE_TYPES]
    assert len(notes) == 1, "one note per example"
    return notes[0]["widgets_values"][0]


def _models(node: dict) -> list[str]:
    return [v for v in node.get("widgets_values") or [] if isinstance(v, str) and v.endswith(".safetensors")]


def test_examples_exist_with_thumbnails_and_no_index():
    assert len(WORKFLOWS) == 4
    assert not (FOLDER / "index.json").exists(), "ComfyUI would list index.json as a workflow named 'index'"
    for path in WORKFLOWS:
        assert path.with_suffix(".jpg").is_file(), f"{path.name}: same-name .jpg thumbnail"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_card_title_is_readable(path):
    assert TITLE.match(path.stem), f"{path.stem!r} is the card title and description"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_model_entries_are_official_downloads_of_selected_files(path):
    for node in _load(path)["nodes"]:
        selected = set(_models(node))
        for entry in node.get("properties", {}).get("models", []):
            where = f"{path.name}: {node['type']} #{node['id']} {entry.get('name')}"
            assert entry["url"].startswith(OFFICIAL), f"{where}: only official downloads get a URL"
            assert entry["url"].endswith("/" + entry["name"]), f"{where}: URL names another file"
            assert entry.get("directory"), f"{where}: no directory (no Download button)"
            assert entry["name"] in selected, f"{where}: not a widget value, the frontend ignores it"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_loaders_name_nvfp4_files_without_download_and_the_note_explains_them(path):
    workflow = _load(path)
    note = _note(workflow)
    loaders = [n for n in workflow["nodes"] if n["type"] in LOADERS]
    assert loaders
    making = note.split("**Make the NVFP4", 1)[-1].split("**What to expect", 1)[0]
    assert "target_name" in making
    for node in loaders:
        names = _models(node)
        assert names and all(n.endswith("_nvfp4.safetensors") for n in names), f"{path.name}: {names}"
        assert not node.get("properties", {}).get("models"), "the pack's NVFP4 files are not downloadable"
        for name in names:
            assert f"models/diffusion_models/{name}" in note, f"{path.name}: the note says where {name} goes"
            assert f"`{name}`" in making, f"{path.name}: the note says how to make {name}"
    for topic in (
        "WAN Quantize Checkpoint",
        "WAN NVFP4 Doctor",
        "WAN NVFP4 Repair Checkpoint",
        "VRAM",
        "steps",
    ):
        assert topic in note, f"{path.name}: the note covers {topic}"
    sources = re.findall(r"\[([^\]]+_fp16\.safetensors)\]\((https://[^)]+)\)", note)
    assert sources and all(url.startswith(OFFICIAL) and url.endswith("/" + name) for name, url in sources)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_note_names_every_model_file_the_graph_uses(path):
    workflow = _load(path)
    note = _note(workflow)
    used = {m for n in workflow["nodes"] if n.get("mode", 0) not in INACTIVE for m in _models(n)}
    assert sorted(m for m in used if m not in note) == []
