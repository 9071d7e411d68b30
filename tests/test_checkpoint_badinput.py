"""Bad inputs: each error names the file and the layer (or tensor), what was expected and what was found.

Also: a pickle is refused and never unpickled (a live payload proves it), and reading never modifies a file.
"""

import hashlib
import json
import pickle
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint import (
    CheckpointError,
    PickleCheckpointError,
    SafetensorsFile,
    classify_checkpoint,
    inspect_checkpoint,
)
from wan_nvfp4.checkpoint.layers import build_weight
from wan_nvfp4.checkpoint.tiny import fixtures as F

LAYER = "blocks.0.ffn.0"


def _save(tmp_path, tensors, metadata=None, name="bad.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _comfy(**changes):
    fx = F.FIXTURES["comfy_nvfp4"]()
    tensors = dict(fx.tensors)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value
    return tensors, fx.metadata


def _only_error(info, layer):
    errors = [p for p in info.errors if p.layer == layer]
    assert errors, [p.message(info.path) for p in info.problems]
    return errors[0]


def _assert_names_everything(message: str, path, layer: str, expected: str, found: str):
    assert str(path) in message
    assert layer in message
    assert f"expected {expected}" in message
    assert f"found {found}" in message


# ------------------------------------------------------------------------------------------- file level


def _header_and_data(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_raw(path, header: dict, data: bytes, header_len: int | None = None):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data)


def test_truncated_file_names_the_tensor_that_runs_past_the_end(tmp_path):
    path = F.write_fixture("comfy_nvfp4", tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-1000])
    header, _ = _header_and_data(path)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    with pytest.raises(CheckpointError) as e:
        SafetensorsFile(path)
    assert "truncated" in str(e.value)
    assert str(path) in str(e.value) and last in str(e.value) and "expected data ending" in str(e.value)


def test_header_offsets_past_the_end(tmp_path):
    path = tmp_path / "offsets.safetensors"
    header = {"head.modulation": {"dtype": "F32", "shape": [4], "data_offsets": [1000, 1016]}}
    _write_raw(path, header, b"\0" * 16)
    with pytest.raises(CheckpointError) as e:
        SafetensorsFile(path)
    _assert_names_everything(
        str(e.value),
        path,
        "tensor head.modulation",
        "data ending at or before byte 16 of the data section",
        "offsets [1000, 1016]",
    )


def test_header_length_larger_than_the_file(tmp_path):
    path = tmp_path / "long_header.safetensors"
    _write_raw(
        path, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, header_len=10**6
    )
    with pytest.raises(CheckpointError) as e:
        SafetensorsFile(path)
    msg = str(e.value)
    assert str(path) in msg and "header length is larger than the file" in msg
    assert "found 1000000" in msg and "expected at most" in msg


def test_byte_range_not_matching_the_shape(tmp_path):
    path = tmp_path / "range.safetensors"
    _write_raw(
        path,
        {"blocks.0.ffn.0.weight": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 16]}},
        b"\0" * 16,
    )
    with pytest.raises(CheckpointError) as e:
        SafetensorsFile(path)
    _assert_names_everything(
        str(e.value), path, "tensor blocks.0.ffn.0.weight", "32 bytes", "offsets [0, 16]"
    )


def test_not_json_header(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"{{{{{" + b"\0" * 10)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SafetensorsFile(path)


# ------------------------------------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this touches `marker` (stands for arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _unpickle_in_subprocess(path):
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_is_refused_and_never_unpickled(tmp_path, protocol):
    proof_marker, marker = tmp_path / "proof", tmp_path / "unpickled"
    proof = tmp_path / "proof.ckpt"
    proof.write_bytes(pickle.dumps(_Payload(str(proof_marker)), protocol=protocol))
    _unpickle_in_subprocess(proof)
    assert proof_marker.exists()  # the payload is live: unpickling it runs code

    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=protocol))
    with pytest.raises(PickleCheckpointError) as e:
        SafetensorsFile(path)
    assert str(path) in str(e.value) and f"a pickle (protocol {protocol})" in str(e.value)
    with pytest.raises(PickleCheckpointError):
        classify_checkpoint(path)
    with pytest.raises(PickleCheckpointError):
        inspect_checkpoint(path)
    assert not marker.exists()


def test_torch_save_archive_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2), "payload": _Payload(str(marker))}, path)
    with pytest.raises(PickleCheckpointError, match=r"torch\.save zip archive"):
        inspect_checkpoint(path)
    assert not marker.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "wan_nvfp4", "inspect", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "torch.save zip archive" in proc.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- layers


def test_wrong_block_scale_dtype(tmp_path):
    tensors, meta = _comfy(**{f"{LAYER}__weight_scale": torch.ones(512, 16)})
    path = _save(tmp_path, tensors, meta)
    info = classify_checkpoint(path)
    p = _only_error(info, LAYER)
    _assert_names_everything(
        p.message(path), path, f"layer {LAYER}", "float8_e4m3fn (or its uint8 bytes)", "torch.float32"
    )
    with pytest.raises(CheckpointError) as e:
        info.weight(LAYER)
    assert str(path) in str(e.value) and LAYER in str(e.value) and "float8_e4m3fn" in str(e.value)
    assert inspect_checkpoint(path).exit_code == 1


def test_wrong_block_scale_shape(tmp_path):
    tensors, meta = _comfy(**{f"{LAYER}__weight_scale": torch.ones(512, 12).to(torch.float8_e4m3fn)})
    path = _save(tmp_path, tensors, meta)
    info = classify_checkpoint(path)
    p = _only_error(info, LAYER)
    _assert_names_everything(
        p.message(path), path, f"layer {LAYER}", "[512, 16] for a [512, 256] weight", "[512, 12]"
    )
    with pytest.raises(CheckpointError, match=r"expected \[512, 16\], found \[512, 12\]"):
        info.weight(LAYER)


def test_missing_weight_scale_2(tmp_path):
    tensors, meta = _comfy(**{f"{LAYER}__weight_scale_2": None})
    path = _save(tmp_path, tensors, meta)
    info = classify_checkpoint(path)
    p = _only_error(info, LAYER)
    _assert_names_everything(
        p.message(path),
        path,
        f"layer {LAYER}",
        f"{LAYER}.weight_scale_2, or LightX2V alpha + input_global_scale, or LightX2V weight_global_scale "
        "(fp32 scalars)",
        "none of them",
    )
    with pytest.raises(CheckpointError) as e:
        info.weight(LAYER)
    _assert_names_everything(str(e.value), path, LAYER, "weight_scale_2", "nothing")
    report = inspect_checkpoint(path)
    assert report.exit_code == 1 and report.pack.outcome == "refuses"
    assert report.comfyui.outcome == "refuses_error"  # ComfyUI: "Missing NVFP4 scales"


def test_missing_block_scale(tmp_path):
    tensors, meta = _comfy(**{f"{LAYER}__weight_scale": None})
    path = _save(tmp_path, tensors, meta)
    p = _only_error(classify_checkpoint(path), LAYER)
    _assert_names_everything(
        p.message(path), path, f"layer {LAYER}", f"{LAYER}.weight_scale (float8_e4m3fn)", "no such tensor"
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_bad_global_scale_value(tmp_path, value):
    tensors, meta = _comfy(**{f"{LAYER}__weight_scale_2": torch.tensor(value)})
    path = _save(tmp_path, tensors, meta)
    p = _only_error(classify_checkpoint(path), LAYER)
    assert "finite positive values" in p.expected
    _assert_names_everything(
        p.message(path),
        path,
        f"layer {LAYER}",
        "finite positive values",
        f"1 {p.problem.rsplit(' is ', 1)[1]} value(s) in {LAYER}.weight_scale_2",
    )


def test_nan_block_scale_found_by_the_scan(tmp_path):
    fx = F.FIXTURES["comfy_nvfp4"]()
    scale = fx.tensors[f"{LAYER}.weight_scale"].clone().view(torch.uint8)
    scale[3, 5] = 0x7F
    tensors, meta = _comfy(**{f"{LAYER}__weight_scale": scale.view(torch.float8_e4m3fn)})
    path = _save(tmp_path, tensors, meta)
    assert not classify_checkpoint(path, scan_block_scales=False).errors  # only an explicit opt-out skips it
    info = classify_checkpoint(path)  # every surface (loader, repair, convert, inspect) scans by default
    p = _only_error(info, LAYER)
    _assert_names_everything(
        p.message(path),
        path,
        f"layer {LAYER}",
        "finite e4m3 block scales",
        f"1 NaN byte(s) (0x7f/0xff) in {LAYER}.weight_scale",
    )
    assert inspect_checkpoint(path).exit_code == 1  # the inspector scans by default


def test_nan_fp8_scale(tmp_path):
    fx = F.FIXTURES["kijai_fp8"]()
    tensors = dict(fx.tensors)
    tensors[f"{LAYER}.scale_weight"] = torch.tensor([float("nan")])
    path = _save(tmp_path, tensors)
    p = _only_error(classify_checkpoint(path), LAYER)
    _assert_names_everything(
        p.message(path),
        path,
        f"layer {LAYER}",
        "finite positive values",
        f"1 NaN or Inf value(s) in {LAYER}.scale_weight",
    )


def test_fp8_block_scales_are_refused_with_the_shape(tmp_path):
    fx = F.FIXTURES["comfy_fp8"]()
    tensors = dict(fx.tensors)
    tensors[f"{LAYER}.weight_scale"] = torch.ones(8, 4)
    path = _save(tmp_path, tensors, fx.metadata)
    p = _only_error(classify_checkpoint(path), LAYER)
    _assert_names_everything(
        p.message(path),
        path,
        f"layer {LAYER}",
        "[] or [1] (per tensor), [512] or [512, 1] (per row)",
        "[8, 4]",
    )


def test_k_not_a_multiple_of_16(tmp_path):
    fx = F.FIXTURES["comfy_nvfp4"]()
    tensors = {k: v for k, v in fx.tensors.items() if not k.startswith(f"{LAYER}.")}
    tensors[f"{LAYER}.weight"] = torch.zeros(512, 20, dtype=torch.uint8)  # K = 40
    tensors[f"{LAYER}.weight_scale"] = torch.ones(512, 4).to(torch.float8_e4m3fn)
    tensors[f"{LAYER}.weight_scale_2"] = torch.tensor(1.0)
    path = _save(tmp_path, tensors, fx.metadata)
    p = _only_error(classify_checkpoint(path), LAYER)
    _assert_names_everything(
        p.message(path),
        path,
        f"layer {LAYER}",
        "K a multiple of 16 (packed columns a multiple of 8)",
        "K = 40",
    )


def test_unsupported_weight_dtype(tmp_path):
    tensors, meta = _comfy(**{f"{LAYER}__weight": torch.zeros(512, 256, dtype=torch.int8)})
    path = _save(tmp_path, tensors, meta)
    p = _only_error(classify_checkpoint(path), LAYER)
    _assert_names_everything(
        p.message(path), path, f"layer {LAYER}", "uint8 (nvfp4), float8 or a float dtype", "int8"
    )


def test_extra_and_orphan_scales_are_warnings(tmp_path):
    fx = F.FIXTURES["bf16"]()
    tensors = dict(fx.tensors)
    tensors["head.head.weight_scale_2"] = torch.tensor(1.0)  # a scale on a float layer
    tensors["blocks.0.norm3.weight_scale"] = torch.tensor(1.0)  # a scale on a norm
    tensors["blocks.0.modulation_extra"] = torch.zeros(2, dtype=torch.int64)
    path = _save(tmp_path, tensors)
    info = classify_checkpoint(path)
    assert not info.errors
    messages = [p.message(path) for p in info.warnings]
    assert any(
        "layer head.head: extra tensors on a float layer" in m and "head.head.weight_scale_2" in m
        for m in messages
    )
    assert any("blocks.0.norm3: scale tensors without a 2-D weight" in m for m in messages)
    assert any("unexpected tensor dtype" in m and "int64" in m for m in messages)


def test_non_wan_safetensors(tmp_path):
    path = _save(tmp_path, {"encoder.layer.0.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)})
    info = classify_checkpoint(path)
    assert not info.variant.is_wan and not info.usable
    p = info.errors[0]
    msg = p.message(path)
    assert str(path) in msg and "tensor head.modulation: not a WAN diffusion model" in msg
    assert (
        "expected WAN DiT keys" in msg and "found missing WAN keys" in msg and "encoder.layer.0.weight" in msg
    )
    report = inspect_checkpoint(path)
    assert report.exit_code == 1 and report.comfyui.outcome == "not_detected"


# ------------------------------------------------------------------------------------------- never modified


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["comfy_nvfp4", "kijai_fp8", "modelopt_comfy_single_file"])
def test_reading_never_modifies_the_file(tmp_path, name):
    path = F.write_fixture(name, tmp_path)
    before, mtime = _sha(path), path.stat().st_mtime_ns
    info = classify_checkpoint(path, scan_block_scales=True)
    inspect_checkpoint(path).to_text()
    for layer in info.layers:
        w = info.weight(layer)
        tensors = (
            [w]
            if isinstance(w, torch.Tensor)
            else [t for t in w.__dict__.values() if isinstance(t, torch.Tensor)]
        )
        for t in tensors:
            if t.numel():
                t.reshape(-1).view(torch.uint8)[0] ^= 0xFF  # write into the copy-on-write mapping
    with SafetensorsFile(path) as f:
        for key in list(f.keys()):
            t = f.tensor(key)
            if t.numel():
                t.reshape(-1).view(torch.uint8)[:1].fill_(0)
    assert _sha(path) == before and path.stat().st_mtime_ns == mtime


def test_build_weight_without_a_path_still_names_the_layer():
    fx = F.FIXTURES["comfy_nvfp4"]()
    info = classify_checkpoint(fx.source())
    spec = info.layers[LAYER]
    tensors = dict(fx.tensors)
    tensors.pop(f"{LAYER}.weight_scale_2")
    with pytest.raises(CheckpointError) as e:
        build_weight(spec, tensors.__getitem__, "model.safetensors")
    assert "model.safetensors: layer blocks.0.ffn.0" in str(e.value)


def test_header_length_that_looks_like_a_pickle_magic_is_still_safetensors(tmp_path):
    # a 640-byte header: its length field starts with 0x80 0x02, the bytes of a protocol-2 pickle
    path = tmp_path / "lookalike.safetensors"
    header = {"head.modulation": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    blob = json.dumps(header).encode()
    blob += b" " * (0x0280 - len(blob))
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 4)
    assert path.read_bytes()[:2] == b"\x80\x02"
    with SafetensorsFile(path) as f:
        assert f.shape("head.modulation") == (1,)


def test_format_this_pack_does_not_read_is_an_error(tmp_path):
    fx = F.FIXTURES["comfy_fp8"]()
    meta = json.loads(fx.metadata["_quantization_metadata"])
    meta["layers"][LAYER] = {"format": "mxfp8"}
    path = _save(tmp_path, fx.tensors, {"_quantization_metadata": json.dumps(meta)})
    p = _only_error(classify_checkpoint(path), LAYER)
    _assert_names_everything(p.message(path), path, f"layer {LAYER}", "nvfp4 or float8_e4m3fn", "'mxfp8'")


def test_metadata_format_not_matching_the_tensors_is_a_warning(tmp_path):
    fx = F.FIXTURES["comfy_fp8"]()
    meta = json.loads(fx.metadata["_quantization_metadata"])
    meta["layers"][LAYER] = {"format": "nvfp4"}
    path = _save(tmp_path, fx.tensors, {"_quantization_metadata": json.dumps(meta)})
    info = classify_checkpoint(path)
    assert not info.errors
    msg = next(p.message(path) for p in info.warnings if p.layer == LAYER)
    _assert_names_everything(
        msg, path, f"layer {LAYER}", "nvfp4 tensors for format 'nvfp4'", "fp8_scaled tensors"
    )


# ------------------------------------------------------------------------------ malformed metadata values


def _cq(value) -> torch.Tensor:
    return torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)


MALFORMED = {
    # what ComfyUI itself reads with `.items()` / `.get()`: a list, a number, a string
    "layers_is_a_list": ("comfy_nvfp4", {"_quantization_metadata": '{"layers": []}'}, {}),
    "comfy_quant_is_a_list": ("comfy_nvfp4_comfy_quant", {}, {f"{LAYER}.comfy_quant": _cq([1, 2])}),
    "comfy_quant_is_a_number": ("comfy_nvfp4_comfy_quant", {}, {f"{LAYER}.comfy_quant": _cq(5)}),
    "producer_is_a_string": ("modelopt_nvfp4", {"quantization_config": '{"producer": "modelopt"}'}, {}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_metadata_values_give_a_report_not_a_crash(tmp_path, case):
    name, meta_changes, tensor_changes = MALFORMED[case]
    fx = F.FIXTURES[name]()
    path = _save(tmp_path, {**fx.tensors, **tensor_changes}, {**fx.metadata, **meta_changes})
    report = inspect_checkpoint(path)
    report.to_text(), report.to_json()
    if tensor_changes:  # vanilla ComfyUI fails on a comfy_quant that is not an object; we refuse it too
        assert report.comfyui.outcome == "refuses_error"
        assert not report.usable and any(p.layer == LAYER for p in report.info.errors)


def test_sidecar_with_a_string_producer_is_not_modelopt(tmp_path):
    fx = F.FIXTURES["modelopt_nvfp4_stripped"]()
    path = _save(tmp_path, fx.tensors, fx.metadata)
    (tmp_path / "hf_quant_config.json").write_text('{"producer": "modelopt"}')
    info = classify_checkpoint(path)
    assert "ModelOpt" not in info.provenance and info.layers[LAYER].assumed


@pytest.mark.parametrize(
    "key, shape",
    [("head.modulation", ()), ("patch_embedding.weight", (256,)), ("img_emb.emb_pos", (5,))],
)
def test_wan_keys_with_too_few_dims_are_not_wan(tmp_path, key, shape):
    fx = F.FIXTURES["bf16"]()
    path = _save(tmp_path, {**fx.tensors, key: torch.zeros(shape)})
    info = classify_checkpoint(path)
    assert not info.usable and not info.variant.is_wan
    with pytest.raises(CheckpointError) as e:
        info.raise_for_problems()
    assert str(path) in str(e.value) and key in str(e.value) and "unexpected shapes" in str(e.value)


@pytest.mark.parametrize("byte, problem", [(0x81, "block scales are negative"), (0x80, None)])
def test_block_scale_scan_sign_bytes(tmp_path, byte, problem):
    """-0 (0x80) is a harmless scale, 0x81 a negative one: the scan's fast path must not skip either check."""
    fx = F.FIXTURES["modelopt_nvfp4"]()  # linear scales: the byte lands in the logical scale matrix
    scale = fx.tensors[f"{LAYER}.weight_scale"].clone().view(torch.uint8)
    scale[1, 2] = byte
    tensors = {**fx.tensors, f"{LAYER}.weight_scale": scale.view(torch.float8_e4m3fn)}
    path = _save(tmp_path, tensors, fx.metadata)
    errors = [p.problem for p in classify_checkpoint(path, scan_block_scales=True).errors]
    assert errors == ([problem] if problem else [])


def test_a_file_larger_than_the_address_space_limit_reads_its_small_tensors(tmp_path):
    """Each tensor is mapped on its own: one private mapping of a whole 28 GB file is refused by the kernel
    on a machine with less RAM + swap (here simulated with an address-space limit below the file size)."""
    path = tmp_path / "big.safetensors"
    big = 3 * 2**30  # a sparse 3 GiB bf16 tensor, then a small one at the end of the file
    header = {
        "big": {"dtype": "U8", "shape": [big], "data_offsets": [0, big]},
        "small": {"dtype": "F32", "shape": [2], "data_offsets": [big, big + 8]},
    }
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.seek(8 + len(blob) + big)
        f.write(struct.pack("<2f", 1.5, -2.0))
    code = (
        "import resource, sys, torch\n"
        "from wan_nvfp4.checkpoint import SafetensorsFile\n"
        "vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))\n"
        f"t = SafetensorsFile({str(path)!r}).tensor('small')\n"
        "assert t.tolist() == [1.5, -2.0], t\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
