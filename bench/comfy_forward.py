"""One WAN forward on CPU: this pack's loader vs stock ComfyUI (`UNETLoader`) on the same file, one process.

Writes a WAN 2.2 TI2V-5B-sized checkpoint (dim 3072, ffn 14336, `--blocks` transformer blocks; 30 is the real
5B) with the pack's own streaming writer and `convert` in ComfyUI's native layout (NVFP4 with `comfy_quant`
metadata, high_first + swizzled; FP8 `float8_e4m3fn` per tensor), so stock ComfyUI reads it natively. Then,
in this one process, loads it through stock ComfyUI (`comfy.sd.load_diffusion_model`, what `UNETLoader`
calls) and through the pack (`nodes.loader.load_wan_model`, default options), and runs the same forward on
both, interleaved (stock, pack, stock, pack, ...), with seeded inputs in the dtype each model infers in.
It prints the process CPU time (`time.process_time`: all threads of this process, so other people's jobs on
a shared machine disturb it less than wall time) and the wall time of each forward, their medians, and the
ratio pack / stock (< 1: the pack is faster), and checks the two outputs agree.

Run inside ComfyUI's venv:

    COMFYUI_PATH=/path/to/ComfyUI python -m wan_nvfp4.bench.comfy_forward --format nvfp4 [--blocks 30]
    COMFYUI_PATH=/path/to/ComfyUI python -m wan_nvfp4.bench.comfy_forward --format fp8 --blocks 4 --repeat 5

The files are kept in `--dir` (default `/tmp/wan_nvfp4_bench`) and reused by later runs with the same
`--blocks`; `--rebuild` writes them again.
"""

import argparse
import datetime
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from .convert import wan5b_shapes, write_source
from .timing import render_table

FORMATS = ("nvfp4", "fp8")
IN_CH = 48  # WAN 2.2 TI2V-5B latent channels
CLOSE_REL_ERR = 1e-3  # the two outputs differ only by the last-bit rounding of the dequantized weights


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_files(formats, blocks: int, folder: Path, rebuild: bool) -> dict[str, Path]:
    """The ComfyUI-native file of a 5B-shaped model with `blocks` blocks per format, converted from one
    seeded bf16 source (written once, removed after); existing files are reused unless `rebuild`."""
    from ..checkpoint.writing.convert import ConvertOptions, convert_checkpoint

    paths = {fmt: folder / f"wan22_5b_{blocks}blocks_{fmt}.safetensors" for fmt in formats}
    todo = [fmt for fmt, path in paths.items() if rebuild or not path.exists()]
    if not todo:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"wan22_5b_{blocks}blocks_bf16.safetensors"
    print(f"writing {src.name} (bf16, seeded) ...", flush=True)
    write_source(src, blocks)
    try:
        for fmt in todo:
            print(f"converting to {paths[fmt].name} (pack's convert, layout comfy) ...", flush=True)
            options = ConvertOptions(target=fmt, layout="comfy", overwrite=True)
            convert_checkpoint(src, paths[fmt], options, save_report=False)
    finally:
        src.unlink(missing_ok=True)
    return paths


def import_comfy() -> dict:
    """ComfyUI from COMFYUI_PATH, CPU mode."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        raise SystemExit("COMFYUI_PATH is not set: point it at a ComfyUI tree and run with ComfyUI's python")
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    mods = {n.split(".")[-1]: importlib.import_module(n) for n in ("comfy.model_management", "comfy.sd")}
    mods["version"] = _comfy_version(Path(root))
    return mods


def _comfy_version(root: Path) -> str:
    try:
        ns: dict = {}
        exec((root / "comfyui_version.py").read_text(), ns)
        return ns.get("__version__", "unknown")
    except OSError:
        return "unknown"


def make_inputs(frames: int, height: int, width: int, context_tokens: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(1, IN_CH, frames, height, width, generator=g),
        "timestep": torch.tensor([500.0]),
        "context": torch.randn(1, context_tokens, 4096, generator=g),
    }


def forward(comfy: dict, patcher, inputs: dict) -> tuple[float, float, torch.Tensor]:
    """(process CPU seconds, wall seconds, output) of one forward of the patcher's diffusion model."""
    comfy["model_management"].load_models_gpu([patcher], force_full_load=True)
    model = patcher.model
    dtype = model.get_dtype_inference()
    kwargs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.inference_mode():
        cpu0, wall0 = time.process_time(), time.perf_counter()
        y = model.diffusion_model(**kwargs)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu, wall, y.float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_format(comfy: dict, fmt: str, path: Path, inputs: dict, repeat: int) -> dict:
    from ..nodes.loader import load_wan_model

    stock = comfy["sd"].load_diffusion_model(str(path))
    pack = load_wan_model(path)
    dtypes = {"stock": stock.model.get_dtype_inference(), "pack": pack.model.get_dtype_inference()}
    samples: dict[str, list[tuple[float, float]]] = {"stock": [], "pack": []}
    outputs = {}
    for i in range(repeat):
        for name, patcher in (("stock", stock), ("pack", pack)):
            cpu, wall, outputs[name] = forward(comfy, patcher, inputs)
            samples[name].append((cpu, wall))
            print(f"  {fmt} run {i + 1}/{repeat} {name:5}: cpu {cpu:8.2f} s  wall {wall:8.2f} s", flush=True)
    comfy["model_management"].unload_all_models()
    med = {
        n: (statistics.median(c for c, _ in s), statistics.median(w for _, w in s))
        for n, s in samples.items()
    }
    return {
        "format": fmt,
        "dtypes": dtypes,
        "stock": med["stock"],
        "pack": med["pack"],
        "cpu_ratio": med["pack"][0] / med["stock"][0],
        "wall_ratio": med["pack"][1] / med["stock"][1],
        "rel_err": rel_err(outputs["pack"], outputs["stock"]),
        "finite": bool(torch.isfinite(outputs["pack"]).all() and torch.isfinite(outputs["stock"]).all()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=(*FORMATS, "both"), default="both")
    p.add_argument("--blocks", type=int, default=30, help="transformer blocks (30 = the real TI2V-5B)")
    p.add_argument(
        "--repeat", type=int, default=3, help="forwards per loader (interleaved); medians reported"
    )
    p.add_argument("--latent", type=int, nargs=3, default=(4, 16, 16), metavar=("T", "H", "W"))
    p.add_argument("--context", type=int, default=64, help="text tokens of the context")
    p.add_argument("--dir", type=Path, default=Path("/tmp/wan_nvfp4_bench"))
    p.add_argument("--rebuild", action="store_true", help="write the model files again")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)

    comfy = import_comfy()
    formats = FORMATS if args.format == "both" else (args.format,)
    paths = build_files(formats, args.blocks, args.dir, args.rebuild)
    t, h, w = args.latent
    inputs = make_inputs(t, h, w, args.context)
    tokens = t * (h // 2) * (w // 2)
    results = [run_format(comfy, fmt, paths[fmt], inputs, args.repeat) for fmt in formats]

    layers = len([k for k in wan5b_shapes(args.blocks) if k.endswith(".weight")])
    print()
    print(
        f"WAN 2.2 TI2V-5B-sized model (dim 3072, ffn 14336, {args.blocks} blocks, {layers} weights), "
        f"latent {list(inputs['x'].shape)} = {tokens} tokens, context {args.context} tokens; "
        f"median of {args.repeat} forwards each, interleaved"
    )
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
        f"torch {torch.__version__}; ComfyUI {comfy['version']}; {datetime.date.today().isoformat()}"
    )
    header = ["format", "compute", "stock cpu s", "pack cpu s", "cpu pack/stock", "stock wall s",
              "pack wall s", "wall pack/stock", "rel err"]  # fmt: skip
    rows = [
        [
            r["format"],
            str(r["dtypes"]["pack"]).replace("torch.", ""),
            f"{r['stock'][0]:.2f}",
            f"{r['pack'][0]:.2f}",
            f"{r['cpu_ratio']:.3f}",
            f"{r['stock'][1]:.2f}",
            f"{r['pack'][1]:.2f}",
            f"{r['wall_ratio']:.3f}",
            f"{r['rel_err']:.1e}",
        ]
        for r in results
    ]
    print(render_table(header, rows, args.markdown))
    bad = [
        r
        for r in results
        if not r["finite"] or r["rel_err"] > CLOSE_REL_ERR or len(set(r["dtypes"].values())) > 1
    ]
    for r in bad:
        print(
            f"MISMATCH {r['format']}: rel err {r['rel_err']:.2e}, dtypes {r['dtypes']}, finite {r['finite']}"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
