"""The example workflows as a user meets them: ComfyUI's own frontend in headless Chromium.

A ComfyUI server (COMFYUI_PATH, `--cpu`) serves the pack; Chromium opens its page at 1920x1080, opens each
example through the template browser (Templates → the pack → its card), and reads the loaded graph through
the page's `app`: no missing node types, no overlapping nodes, every node at least its computed size, every
widget inside its node and drawn whole (label and value, no ellipsis), and a zoom at which the canvas draws
text. A screenshot of each workflow is saved (path printed). A last test types "WAN NVFP4" into the node
search box and expects all six pack nodes.

Needs Debian's `chromium` + `chromium-driver` and the `selenium` package; skipped with the reason otherwise.
Model files are empty placeholders (the lists only need the names), so no Missing Models overlay covers
the canvas.
"""

import json
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest

from .comfy_server import comfy_server, prepare_base_directory

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
)
from selenium.webdriver import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.comfyui]

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))
PACK_DIR = "wan_nvfp4"  # the pack's folder name under custom_nodes (prepare_base_directory)
PACK_NODES = {
    "WAN NVFP4 Loader",
    "WAN NVFP4 Loader (Advanced)",
    "WAN NVFP4 Loader (2.2 A14B pair)",
    "WAN NVFP4 Doctor",
    "WAN Quantize Checkpoint",
    "WAN NVFP4 Repair Checkpoint",
}
VIEWPORT = (1920, 1080)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
TIMEOUT_S = 60


def _binary(*names: str) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


def _tiny_png(path: Path, width: int = 64, height: int = 64) -> None:
    """A grey RGB PNG (LoadImage's example.png)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _model_names(workflow: dict) -> set[str]:
    return {
        value
        for node in workflow["nodes"]
        for value in node.get("widgets_values") or []
        if isinstance(value, str) and value.endswith(".safetensors")
    }


def _placeholders(root: Path) -> None:
    """Empty files under every model folder for every model name the workflows use, and example.png."""
    names = set().union(*(_model_names(json.loads(w.read_text())) for w in WORKFLOWS))
    for folder in ("diffusion_models", "text_encoders", "vae", "loras"):
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / "models" / folder / name).touch()
    (root / "input").mkdir(exist_ok=True)
    _tiny_png(root / "input" / "example.png")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A ComfyUI server and a Chromium page on it (1920x1080), both stopped at the end."""
    chromium = _binary("chromium", "chromium-browser")
    driver_bin = _binary("chromedriver")
    if chromium is None or driver_bin is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    root = tmp_path_factory.mktemp("comfy_browser")
    prepare_base_directory(root)
    _placeholders(root)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={root / 'chromium-profile'}", "--window-size=1920,1080"):
        options.add_argument(flag)
    with comfy_server(root, ["--cpu"]) as server:
        driver = webdriver.Chrome(options=options, service=Service(driver_bin))
        try:
            width, height = VIEWPORT
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            driver.get(server.url)
            _wait(driver, "return !!(window.app && app.graph && app.canvas && app.canvas.ds)", "the app")
            yield driver
        finally:
            driver.quit()


def _wait(driver, script: str, what: str, *args, timeout: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        result = driver.execute_script(script, *args)
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


# The element whose own text is `arguments[0]` (soft hyphens ignored), innermost first; visible ones only.
FIND_BY_TEXT = """
const norm = s => (s || '').replace(/\\u00ad/g, '').trim();
const scope = arguments[1] ? document.querySelector(arguments[1]) : document.body;
if (!scope) return null;
const hits = [...scope.querySelectorAll('*')].filter(e => norm(e.innerText) === arguments[0]
    && ![...e.children].some(c => norm(c.innerText) === arguments[0]) && e.getClientRects().length);
return hits[0] || null;
"""


def _click_text(driver, text: str, scope: str | None = None) -> None:
    element = _wait(driver, FIND_BY_TEXT, f"'{text}' on the page", text, scope)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _open_template(driver, name: str, shot: Path) -> list[str]:
    """Templates (sidebar) → the pack's category → the workflow's card, as a user clicks them; the card's
    text lines (title, description, ...), read before the click, with a screenshot of the cards."""
    dialog = "[role=dialog]"
    if not driver.execute_script(FIND_BY_TEXT, PACK_DIR, dialog):
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        _click_text(driver, "Templates")
    _click_text(driver, PACK_DIR, dialog)
    card = _wait(
        driver,
        "return document.querySelector(arguments[0])",
        f"the card of {name}",
        f'[data-testid="template-workflow-{name}"]',
    )
    images = "return [...document.querySelectorAll('[role=dialog] img')].every(i => i.complete)"
    _wait(driver, images, "the thumbnails")
    driver.save_screenshot(str(shot))
    lines = [line.strip() for line in card.text.splitlines() if line.strip()]
    card.click()
    return lines


# Everything the checks need, read from the live graph after a full redraw that records every text the
# canvas draws (truncated labels/values are drawn cut, without their last characters).
READ_GRAPH = """
const [fileSizes] = arguments;
const canvas = app.canvas, graph = app.graph;
const drawn = new Set();
const proto = CanvasRenderingContext2D.prototype, fillText = proto.fillText;
proto.fillText = function (text, ...rest) {
  drawn.add(String(text));
  return fillText.call(this, text, ...rest);
};
try { canvas.setDirty(true, true); canvas.draw(true, true); } finally { proto.fillText = fillText; }
const area = canvas.visible_area;
const nodes = graph._nodes.map(n => {
  const min = n.computeSize();
  return {
    id: String(n.id), type: n.type, title: n.title, mode: n.mode,
    registered: n.type in LiteGraph.registered_node_types, errors: !!n.has_errors,
    bounds: [...n.boundingRect], size: [...n.size], min: [min[0], min[1]], file: fileSizes[String(n.id)],
    widgets: (n.widgets || []).map(w => {
      const el = w.element, r = el && el.getBoundingClientRect();
      return {
        name: w.name, type: w.type, label: w.label || w.name, hidden: !!(w.hidden || w.options?.hidden),
        value: typeof w._displayValue === 'string' ? w._displayValue : null,
        top: w.y ?? w.last_y, height: w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT,
        dom: el ? {shown: el.isConnected && el.getClientRects().length > 0 && r.width > 2 && r.height > 2,
                   scrolls: [el, ...el.querySelectorAll('*')].some(e => {
                     const s = getComputedStyle(e);  // an invisible editor (opacity 0) may scroll
                     return e.scrollHeight > e.clientHeight + 2 && ['auto', 'scroll'].includes(s.overflowY)
                         && s.visibility !== 'hidden' && s.opacity !== '0';
                   })} : null,
      };
    }),
  };
});
return {scale: canvas.ds.scale, lowQuality: !!canvas.low_quality, threshold: canvas._lowQualityZoomThreshold,
        area: [area[0], area[1], area[2], area[3]], drawn: [...drawn], nodes};
"""


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _inside(inner, outer) -> bool:
    return (
        inner[0] >= outer[0]
        and inner[1] >= outer[1]
        and inner[0] + inner[2] <= outer[0] + outer[2]
        and inner[1] + inner[3] <= outer[1] + outer[3]
    )


def _problems(graph: dict, workflow: dict) -> list[str]:
    """What a user would see wrong, one line each."""
    problems = []
    nodes = graph["nodes"]
    if {n["id"] for n in nodes} != {str(n["id"]) for n in workflow["nodes"]}:
        problems.append("the loaded graph's nodes differ from the file's")
    drawn = set(graph["drawn"])
    for n in nodes:
        where = f"{n['type']} #{n['id']}"
        if not n["registered"] or n["errors"]:
            problems.append(f"{where}: missing node type")
        w, h = n["file"]
        if w + 0.5 < n["min"][0] or h + 0.5 < n["min"][1]:
            problems.append(f"{where}: file size {n['file']} smaller than its widgets need {n['min']}")
        if not _inside(n["bounds"], graph["area"]):
            problems.append(f"{where}: outside the opening view")
        for widget in n["widgets"]:
            name = f"{where}.{widget['name']}"
            if widget["name"].startswith("$$"):
                continue  # the frontend's own (image preview), not an input
            if widget["hidden"]:
                continue  # hidden by the node's own definition (e.g. SaveVideo's codec in 0.33)
            if widget["top"] is None or widget["top"] + widget["height"] > n["size"][1] + 0.5:
                problems.append(f"{name}: below the node's bottom edge")
            elif widget["dom"] is not None:
                if not widget["dom"]["shown"]:
                    problems.append(f"{name}: its element is not shown")
                elif widget["dom"]["scrolls"]:
                    problems.append(f"{name}: its text does not fit (scrolls)")
            elif n["mode"] == 0 or widget["type"] != "button":
                cut = [text for text in (widget["label"], widget["value"]) if text and text not in drawn]
                if cut:
                    problems.append(f"{name}: not drawn whole: {cut}")
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            if _overlap(a["bounds"], b["bounds"]):
                problems.append(f"{a['type']} #{a['id']} overlaps {b['type']} #{b['id']}")
    if graph["lowQuality"] or graph["scale"] < graph["threshold"]:
        problems.append(
            f"opens at zoom {graph['scale']:.2f}: below {graph['threshold']:.2f} no text is drawn"
        )
    return problems


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_example_opens_cleanly_from_the_template_browser(page, workflow, tmp_path):
    data = json.loads(workflow.read_text())
    page.execute_script("app.graph.clear()")
    cards = tmp_path / "template browser.png"
    card = _open_template(page, workflow.stem, cards)
    print(f"screenshot: {cards}")
    # the frontend's card: the file name as title; 1.47 adds the same with -/_ as spaces as description
    # (1.49 shows the title only); other lines are the frontend's own badges ("Node graph")
    named = [line for line in card if "WAN" in line]
    assert workflow.stem in named, f"card text {card} ({cards})"
    assert set(named) <= {workflow.stem, re.sub(r"[-_]", " ", workflow.stem)}, f"card text {card} ({cards})"
    _wait(page, "return app.graph._nodes.length === arguments[0]", "the workflow's nodes", len(data["nodes"]))
    _wait(
        page,
        "return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
        "paint",
    )
    sizes = {str(n["id"]): n["size"] for n in data["nodes"]}
    graph = page.execute_script(READ_GRAPH, sizes)
    shot = tmp_path / f"{workflow.stem}.png"
    page.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    problems = _problems(graph, data)
    assert not problems, f"{workflow.name} as opened (screenshot {shot}):\n" + "\n".join(problems)


def test_node_search_finds_every_pack_node(page):
    """Double-click on the empty canvas opens the node search; "WAN NVFP4" must list all six nodes."""
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    page.execute_script("app.graph.clear()")
    canvas = page.find_element(By.ID, "graph-canvas")
    ActionChains(page).move_to_element_with_offset(canvas, 0, 0).double_click().perform()
    _wait(
        page, "return document.activeElement && document.activeElement.tagName === 'INPUT'", "the search box"
    )
    page.switch_to.active_element.send_keys("WAN NVFP4")
    found, previous = [], None
    deadline = time.monotonic() + TIMEOUT_S
    while found != previous or not found:  # the list settles after the query's debounce
        if time.monotonic() > deadline:
            break
        previous, found = found, page.execute_script(READ_OPTIONS)
        time.sleep(0.5)
    names = {item.splitlines()[0].strip() for item in found if item.strip()}
    assert sorted(PACK_NODES - names) == [], f"'WAN NVFP4' in the node search lists {sorted(names)}"


READ_OPTIONS = (
    "return [...document.querySelectorAll('[role=option]')].map(e => e.innerText.replace(/\\u00ad/g, ''))"
)
