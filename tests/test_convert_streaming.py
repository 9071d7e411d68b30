"""convert streams: chunked quantization is bit-identical to the whole-tensor quantizers, peak memory does not
grow with the file, and a conversion killed mid-write leaves no file at the destination."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from wan_nvfp4.checkpoint.sqnr import sqnr_db
from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES
from wan_nvfp4.checkpoint.writing import quantize_layer as ql
from wan_nvfp4.checkpoint.writing.convert import convert_checkpoint
from wan_nvfp4.checkpoint.writing.output_formats import COMFY, MODELOPT
from wan_nvfp4.checkpoint.writing.writer import PlannedTensor, StreamingSafetensorsWriter, temp_path_for
from wan_nvfp4.kernels import dequantize, quantize_fp8, quantize_nvfp4

ck = pytest.importorskip("comfy_kitchen")


@pytest.mark.parametrize("shape", [(100, 96), (129, 48), (1, 16), (256, 4096)])
@pytest.mark.parametrize("layout", [COMFY, MODELOPT], ids=["comfy", "modelopt"])
def test_chunked_nvfp4_is_bit_identical(shape, layout, monkeypatch):
    monkeypatch.setattr(ql, "CHUNK_ELEMENTS", 1000)  # many chunks, ragged last one
    w = (torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 0.1).to(torch.bfloat16)
    got = ql.quantize_layer(w, "nvfp4", layout)
    whole = quantize_nvfp4(w, nibble_order=layout.nibble_order, scale_layout=layout.scale_layout)
    n = shape[0]
    assert torch.equal(got.tensors["weight"][:n], whole.packed)
    assert torch.equal(got.tensors["weight"][n:], torch.zeros_like(got.tensors["weight"][n:]))  # row padding
    assert got.tensors["weight"].shape[0] == (-(-n // 16) * 16 if layout is COMFY else n)
    assert torch.equal(got.tensors["block_scale"].view(torch.uint8), whole.block_scale.view(torch.uint8))
    assert got.sqnr_db == pytest.approx(sqnr_db(w, dequantize(whole)), abs=0.01)  # fp32 sums differ
    if layout is COMFY:  # comfy-kitchen pads to 16 rows the same way
        q, _ = ck.quantize_nvfp4(w, got.tensors["global_scale"], epsilon=0.0, pad_16x=n % 16 != 0)
        assert torch.equal(got.tensors["weight"], q)


@pytest.mark.parametrize("shape", [(100, 96), (7, 5000), (1, 3)])
def test_chunked_fp8_is_bit_identical(shape, monkeypatch):
    monkeypatch.setattr(ql, "CHUNK_ELEMENTS", 1000)
    w = (torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 3).to(torch.bfloat16)
    got = ql.quantize_layer(w, "fp8", COMFY)
    whole = quantize_fp8(w)
    assert torch.equal(got.tensors["weight"].view(torch.uint8), whole.data.view(torch.uint8))
    assert got.tensors["scale"].item() == whole.scale.item() and got.tensors["scale"].shape == ()
    assert got.sqnr_db == pytest.approx(sqnr_db(w, dequantize(whole)), abs=0.01)  # fp32 sums differ


def _write_blocks(path, blocks: int, n: int = 4096, k: int = 256):
    """A WAN-shaped bf16 model (convert refuses what is not WAN): `blocks` blocks of dim k and FFN width n."""
    shapes = {
        "head.modulation": (1, 2, k),
        "head.head.weight": (64, k),
        "patch_embedding.weight": (k, 16, 1, 2, 2),
    }
    for i in range(blocks):
        shapes |= {f"blocks.{i}.{a}.{p}.weight": (k, k) for a in ("self_attn", "cross_attn") for p in "qkvo"}
        shapes |= {f"blocks.{i}.ffn.0.weight": (n, k), f"blocks.{i}.ffn.2.weight": (k, n)}
    plan = [PlannedTensor(name, torch.bfloat16, shape) for name, shape in shapes.items()]
    g = torch.Generator().manual_seed(0)
    with StreamingSafetensorsWriter(path, plan) as w:
        for p in plan:
            w.write(p.name, (torch.randn(p.shape, generator=g) * 0.02).to(torch.bfloat16))
        w.commit()


PEAK_PROBE = textwrap.dedent(
    """
    import json, sys
    from wan_nvfp4.checkpoint.writing.convert import ConvertOptions, convert_checkpoint
    def peak_mb():  # VmHWM: this process image's own high-water mark (ru_maxrss inherits the parent's)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    out = {}
    for label, src in (("warm", sys.argv[1]), ("small", sys.argv[2]), ("large", sys.argv[3])):
        convert_checkpoint(src, src + ".out", ConvertOptions(target=sys.argv[4]), save_report=False)
        out[label] = peak_mb()
    print(json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("target", ["nvfp4", "fp8"])
def test_peak_memory_does_not_grow_with_the_file(target, tmp_path):
    """Converting 24 layers costs about the peak RSS of converting 4 (streaming, not the whole model)."""
    warm, small, large = (
        tmp_path / "warm.safetensors",
        tmp_path / "small.safetensors",
        tmp_path / "large.safetensors",
    )
    _write_blocks(warm, 1, 256, 256)
    _write_blocks(small, 4)
    _write_blocks(large, 24)  # 24 blocks x 5.2 MB bf16 (two 2 MB FFN layers each) = 126 MB
    out = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, str(warm), str(small), str(large), target],
        check=True,
        capture_output=True,
        text=True,
    )
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS MB ({target}): {peaks}, large file {large.stat().st_size / 2**20:.0f} MB")
    layer_mb = 4096 * 1024 * 2 / 2**20
    # 20 more blocks (+105 MB of source) may raise the high-water mark by allocator slack only (measured
    # 0 to 26 MB for nvfp4, 0 to 2 MB for fp8 with 8 MB layers); holding the model would add the whole 105 MB
    assert peaks["large"] - peaks["small"] < 6 * layer_mb, peaks
    # the whole conversion stays below the size of the file it converts (mapped source pages count in RSS
    # until their tensor is released; measured 108 to 130 MB for a 201 MB file of 8 MB layers)
    assert peaks["large"] - peaks["warm"] < large.stat().st_size / 2**20, peaks


KILLED_CONVERSION = textwrap.dedent(
    """
    import sys, time
    from wan_nvfp4.checkpoint.writing.convert import ConvertOptions, convert_checkpoint
    def progress(done, total, label):
        print("progress", done, total, flush=True)
        time.sleep(0.2)
    convert_checkpoint(sys.argv[1], sys.argv[2], ConvertOptions(), progress=progress)
    """
)


def test_conversion_killed_mid_write_leaves_no_destination(tmp_path):
    src = FIXTURES["bf16"]().write(tmp_path / "src")
    before = src.read_bytes()
    dst = tmp_path / "out" / "converted.safetensors"
    dst.parent.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CONVERSION, str(src), str(dst)], stdout=subprocess.PIPE, text=True
    )
    for _ in range(3):  # three layers written into the temp file
        assert proc.stdout.readline().startswith("progress")
    proc.kill()
    proc.wait()
    assert not dst.exists()
    leftover = temp_path_for(dst.absolute(), proc.pid)
    assert leftover.exists() and leftover.parent == dst.parent  # temp file in the target folder, by name
    assert not list(dst.parent.glob("*.json"))  # no report for a run that did not finish
    report = convert_checkpoint(src, dst)  # the next run removes the stale temp file and succeeds
    assert not leftover.exists()
    assert any("stale temp" in n for n in report.notes)
    assert sorted(p.name for p in dst.parent.iterdir()) == [
        "converted.convert-report.json",
        "converted.safetensors",
    ]
    assert src.read_bytes() == before


def test_chunked_sqnr_matches_whole_tensor_sqnr():
    from wan_nvfp4.checkpoint.sqnr import chunked_sqnr_db, db_to_relative_error, relative_error

    g = torch.Generator().manual_seed(5)
    ref = torch.randn(37, 19, generator=g)
    approx = ref + 0.01 * torch.randn(37, 19, generator=g)
    assert chunked_sqnr_db(ref, approx, rows_per_chunk=4) == pytest.approx(sqnr_db(ref, approx), abs=1e-4)
    # hand-computed: SQNR is 20 log10(|ref| / |ref - approx|)
    expected = 20 * torch.log10(ref.norm() / (ref - approx).norm()).item()
    assert sqnr_db(ref, approx) == pytest.approx(expected, abs=1e-4)
    assert db_to_relative_error(sqnr_db(ref, approx)) == pytest.approx(relative_error(ref, approx), rel=1e-4)
    assert chunked_sqnr_db(ref, ref) == float("inf")
