"""ComfyUI as a server subprocess for end-to-end tests (COMFYUI_PATH), shared by the HTTP and GPU tests.

`comfy_server(root, args)` starts `main.py` on a free loopback port with `root` as `--base-directory`
(models, custom_nodes, output, log all inside it), waits for `/system_stats`, and always stops the process.
The base directory gets the pack (symlinked), a test-only node pack (random conditioning + a memory report
node) and the model folders. `sampling_graph` is the HTTP test's loader -> ModelSamplingSD3 -> KSampler ->
SaveLatent graph with a choice of loader, an optional stock `LoraLoaderModelOnly` and the memory report.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(base: str, route: str):
    with urllib.request.urlopen(base + route, timeout=30) as r:
        return json.loads(r.read())


def post_json(base: str, route: str, body: dict):
    req = urllib.request.Request(
        base + route, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def run_graph(base: str, graph: dict, timeout: float = 240) -> dict:
    prompt_id = post_json(base, "/prompt", {"prompt": graph, "client_id": str(uuid.uuid4())})["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = get_json(base, f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"]["status_str"] in ("success", "error"):
                return entry
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish within {timeout} s")


def base_sampling_graph(unet: str, seed: int) -> dict:
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


TEST_NODE_PACK = "wan_nvfp4_test_nodes"
PACK_LOADER = "WanNVFP4Loader"
ORACLE_LOADER = "UNETLoader"
REPORT_NODE = "WanNVFP4TestMemoryReport"
START_TIMEOUT_S = 180
# graph node ids (those of `base_sampling_graph`, plus ours)
LOADER, SAMPLING, SAMPLER, SAVE, LORA, REPORT = "1", "2", "6", "7", "8", "9"

# Test-only node, appended to the HTTP test's conditioning node: after sampling, how the model's weights were
# held. Dynamic VRAM gives every cast module a VBAR slot `_v`; `_v_signature` stays None while its last fault
# failed (weights streamed into a transient cast buffer), else names the resident pages. Legacy lowvram leaves
# offloaded modules' weights on the CPU and sets `model_lowvram`.
REPORT_NODE_SOURCE = """

class WanNVFP4TestMemoryReport:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "samples": ("LATENT",)}}
    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def report(self, model, samples):
        import json
        cast = [m for m in model.model.modules() if hasattr(m, "comfy_cast_weights")]
        cast = [m for m in cast if isinstance(getattr(m, "weight", None), torch.Tensor)]
        vbar = [m for m in cast if hasattr(m, "_v")]
        info = {
            "patcher": type(model).__name__,
            "dynamic": bool(model.is_dynamic()),
            "cast_modules": len(cast),
            "weights_on_cpu": sum(m.weight.device.type == "cpu" for m in cast),
            "vbar_modules": len(vbar),
            "vbar_streamed": sum(getattr(m, "_v_signature", None) is None for m in vbar),
            "lowvram": bool(getattr(model.model, "model_lowvram", False)),
        }
        return {"ui": {"text": [json.dumps(info)]}}

NODE_CLASS_MAPPINGS["WanNVFP4TestMemoryReport"] = WanNVFP4TestMemoryReport
"""


def prepare_base_directory(root: Path) -> dict[str, Path]:
    """Model folders, the pack (symlink) and the test-only nodes under `root`; returns the model folders."""
    folders = {kind: root / "models" / kind for kind in ("diffusion_models", "loras")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    nodes = root / "custom_nodes"
    (nodes / TEST_NODE_PACK).mkdir(parents=True, exist_ok=True)
    (nodes / TEST_NODE_PACK / "__init__.py").write_text(TEST_NODE + REPORT_NODE_SOURCE)
    if not (nodes / "wan_nvfp4").exists():
        (nodes / "wan_nvfp4").symlink_to(REPO, target_is_directory=True)
    return folders


@dataclass
class ComfyServer:
    """A running ComfyUI: its URL, base directory and log file."""

    url: str
    root: Path
    log: Path

    def run(self, graph: dict, timeout: float = 600) -> dict:
        """POST the graph, wait for it; the `/history` entry (status success or error)."""
        return run_graph(self.url, graph, timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def latent(self, entry: dict, node: str = SAVE) -> torch.Tensor:
        """The latent a SaveLatent node wrote (read from the output folder)."""
        saved = entry["outputs"][node]["latents"][0]
        path = self.root / saved["type"] / saved["subfolder"] / saved["filename"]
        return load_file(str(path))["latent_tensor"].float()


@contextmanager
def comfy_server(
    root: Path, args: Sequence[str], log_name: str = "server.log", env: dict[str, str] | None = None
) -> Iterator[ComfyServer]:
    """ComfyUI started from COMFYUI_PATH with `args` (e.g. `--cpu`) and `env` added to this process's
    environment, always terminated on exit."""
    port = free_port()
    cmd = [
        sys.executable,
        str(Path(os.environ["COMFYUI_PATH"]) / "main.py"),
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-directory",
        str(root),
        "--database-url",
        "sqlite:///:memory:",
        "--disable-auto-launch",
        *args,
    ]
    log = root / log_name
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = ComfyServer(f"http://127.0.0.1:{port}", root, log)
    try:
        _wait_until_serving(proc, server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_serving(proc: subprocess.Popen, server: ComfyServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"ComfyUI exited ({proc.returncode}):\n{server.log_text()[-3000:]}")
        try:
            get_json(server.url, "/system_stats")
            return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not answer in {START_TIMEOUT_S} s:\n{server.log_text()[-3000:]}")
            time.sleep(0.5)


def sampling_graph(
    unet: str,
    seed: int,
    loader: str = PACK_LOADER,
    lora: str | None = None,
    strength: float = 1.0,
    prefix: str = "wan_nvfp4_test",
) -> dict:
    """`loader` -> [LoraLoaderModelOnly] -> ModelSamplingSD3 -> KSampler -> SaveLatent, + memory report."""
    graph = base_sampling_graph(unet, seed)
    if loader != PACK_LOADER:
        graph[LOADER] = {"class_type": loader, "inputs": {"unet_name": unet, "weight_dtype": "default"}}
    if lora is not None:
        graph[LORA] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": [LOADER, 0], "lora_name": lora, "strength_model": strength},
        }
        graph[SAMPLING]["inputs"]["model"] = [LORA, 0]
    graph[SAVE]["inputs"]["filename_prefix"] = prefix
    graph[REPORT] = {"class_type": REPORT_NODE, "inputs": {"model": [SAMPLING, 0], "samples": [SAMPLER, 0]}}
    return graph


def memory_report(entry: dict) -> dict:
    """What the report node saw after sampling (see REPORT_NODE_SOURCE)."""
    return json.loads(entry["outputs"][REPORT]["text"][0])


# ---- the pack's kernel-path log line: "kernel paths <file>: nvfp4: 20 layers (triton-dequant), ..." -------

_PATH_ENTRY = re.compile(r"(?:(?P<fmt>\w+): )?(?P<n>\d+) layers? \((?P<paths>[^)]+)\)")


def kernel_path_lines(log_text: str, filename: str) -> list[dict[str, dict[str, int]]]:
    """Every path summary the pack logged for `filename`, parsed: format -> {paths label: layer count}."""
    marker = f"kernel paths {filename}: "
    lines = []
    for line in log_text.splitlines():
        if marker not in line:
            continue
        parsed: dict[str, dict[str, int]] = {}
        fmt = None
        paths_part = line.split(marker, 1)[1].split("; self-check:", 1)[0]  # the self-check summary follows
        for m in _PATH_ENTRY.finditer(paths_part):
            fmt = m["fmt"] or fmt
            parsed.setdefault(fmt, {})[m["paths"]] = int(m["n"])
        lines.append(parsed)
    return lines
