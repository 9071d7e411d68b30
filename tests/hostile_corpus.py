"""A deterministic corpus of malformed and hostile `.safetensors` files, built from the tiny WAN fixtures.

`build_corpus(folder)` writes one file per category (CASES) and returns {name: path}. Each case says what
`wan-nvfp4 inspect` must answer: exit code 1 (EXIT_CODE) with a message naming the file, whether the file
cannot be read at all (UNREADABLE: header, not safetensors, not a regular file) or is read but unusable
(UNUSABLE); and a fragment its message must contain.

Header cases are written byte by byte (`write_raw`): the JSON text is built by hand so that duplicate keys,
JSON escapes of lone surrogates, NaN literals or 50,000 levels of nesting reach the reader exactly as a
hostile producer would write them. Layer cases change one tensor of a valid tiny checkpoint.
"""

import functools
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_nvfp4.checkpoint.reading.safetensors_io import DTYPE_NAMES
from wan_nvfp4.checkpoint.tiny import fixtures as F

UNREADABLE, UNUSABLE = "unreadable", "unusable"  # what the case is; inspect exits EXIT_CODE for both
EXIT_CODE = 1
LAYER = "blocks.0.ffn.0"  # nvfp4 in the comfy fixtures; bf16 in the bf16 fixture
PICKLE_MARKER = "UNPICKLED_MARKER"  # created next to the corpus if the disguised pickle ever runs
MANY_TENSORS = 100_000
HUGE_ELEMENTS = 10**12


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], None]  # writes the file at the given path
    exit_code: int
    fragment: str  # part of the error message


# --------------------------------------------------------------------------------------------- writing


def header_text(pairs, metadata=None) -> str:
    """A JSON object from (key, value) pairs, kept in order and duplicates kept (json.dumps would drop them).
    Values that are `str` are inserted as raw JSON text."""
    items = [] if metadata is None else [("__metadata__", metadata)]
    items += list(pairs)
    body = ", ".join(f"{json.dumps(k)}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in items)
    return "{" + body + "}"


def write_raw(path: Path, text: str | bytes, data: bytes = b"", header_len: int | None = None) -> None:
    blob = text.encode("utf-8") if isinstance(text, str) else text
    size = len(blob) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", size) + blob + data)


def serialize(tensors: dict[str, torch.Tensor]) -> tuple[list[tuple[str, dict]], bytes]:
    """(entries, data) of tensors laid out one after another, as a writer would."""
    entries, chunks, offset = [], [], 0
    for name, t in tensors.items():
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        dtype = DTYPE_NAMES[t.dtype]
        entries.append(
            (name, {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]})
        )
        chunks.append(raw)
        offset += len(raw)
    return entries, b"".join(chunks)


@functools.cache
def _built_fixture(name: str):
    return F.FIXTURES[name]()


def _fixture(name: str = "comfy_nvfp4"):
    """Copies of a tiny fixture's tensor dict and metadata (built once: it quantizes the whole model)."""
    fx = _built_fixture(name)
    return dict(fx.tensors), dict(fx.metadata or {})


def _save(tensors, metadata=None):
    def build(path: Path) -> None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or None)

    return build


def _changed(fixture: str, changes: dict, metadata: dict | None = None):
    """A fixture with tensors replaced (None: removed) and metadata entries replaced."""

    def build(path: Path) -> None:
        tensors, meta = _fixture(fixture)
        for key, value in changes.items():
            if value is None:
                tensors.pop(key)
            else:
                tensors[key] = value(tensors[key]) if callable(value) else value
        meta.update(metadata or {})
        _save(tensors, meta)(path)

    return build


def _raw_fixture(
    edit: Callable[[list, bytes, dict], tuple[list, bytes, dict | str | None]], fixture="comfy_nvfp4"
):
    """The fixture written by hand after `edit(entries, data, metadata)` changed its header."""

    def build(path: Path) -> None:
        tensors, meta = _fixture(fixture)
        entries, data = serialize(tensors)
        entries, data, meta = edit(entries, data, meta)
        write_raw(path, header_text(entries, meta), data)

    return build


def _tiny_header(pairs_text: str, data: bytes = b"\0" * 4) -> Callable[[Path], None]:
    return lambda path: write_raw(path, pairs_text, data)


ONE = '"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'


def _entry(field: str, value: str) -> Callable[[Path], None]:
    info = {"dtype": '"F32"', "shape": "[1]", "data_offsets": "[0, 4]", field: value}
    return _tiny_header('{"a": {' + ", ".join(f'"{k}": {v}' for k, v in info.items()) + "}}")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ----------------------------------------------------------------------------------------- header cases


def _pickle(path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (open, (str(path.parent / PICKLE_MARKER), "w"))

    path.write_bytes(pickle.dumps({"head.modulation": Payload()}, protocol=4))


def _torch_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            zipfile.ZipInfo("archive/data.pkl", (2020, 1, 1, 0, 0, 0)), pickle.dumps({"x": 1}, protocol=2)
        )


def _truncated(path: Path) -> None:
    _changed("comfy_nvfp4", {})(path)
    os.truncate(path, path.stat().st_size - 1000)


def _duplicate(nan_first: bool):
    """`weight_scale_2` listed twice (both with valid offsets); one of them is NaN."""

    def edit(entries, data, meta):
        key = f"{LAYER}.weight_scale_2"
        nan = struct.pack("<f", float("nan"))
        extra = (key, {"dtype": "F32", "shape": [], "data_offsets": [len(data), len(data) + 4]})
        good = next(e for e in entries if e[0] == key)
        rest = [e for e in entries if e[0] != key]
        pair = [extra, good] if nan_first else [good, extra]
        return rest + pair, data + nan, meta

    return _raw_fixture(edit)


def _shift(delta_start: int, delta_end: int, grow: int = 0):
    """Move the second tensor's offsets (a gap or an overlap); `grow` bytes appended to the data."""

    def edit(entries, data, meta):
        name, info = entries[1]
        begin, end = info["data_offsets"]
        entries[1] = (name, {**info, "data_offsets": [begin + delta_start, end + delta_end]})
        return entries, data + b"\0" * grow, meta

    return edit


def _metadata_value(value):
    def edit(entries, data, meta):
        return entries, data, json.dumps({**meta, "bad": "x"}).replace('"x"', json.dumps(value))

    return _raw_fixture(edit)


def _whole_metadata(value_text: str):
    return _raw_fixture(lambda entries, data, meta: (entries, data, value_text))


def _surrogate_key(path: Path) -> None:
    def edit(entries, data, meta):
        name, info = entries[0]
        entries[0] = (name + "\ud800", info)  # json.dumps writes it as the escape \ud800
        return entries, data, meta

    _raw_fixture(edit)(path)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _huge_claim(path: Path) -> None:
    n = 10**6
    entry = {"dtype": "F32", "shape": [n, n], "data_offsets": [0, 4 * n * n]}
    write_raw(path, header_text([("blocks.0.ffn.0.weight", entry)]), b"\0" * 64)


# ------------------------------------------------------------------------------------------ layer cases


def _scale_bytes(fill=None, at=None, byte=None, negate=False):
    def change(t: torch.Tensor) -> torch.Tensor:
        raw = t.clone().view(torch.uint8)
        if fill is not None:
            raw.fill_(fill)
        if at is not None:
            raw[at] = byte
        if negate:
            raw |= 0x80
        return raw.view(torch.float8_e4m3fn)

    return change


def _comfy_scale(role: str, value) -> Callable[[Path], None]:
    return _changed("comfy_nvfp4", {f"{LAYER}.{role}": value})


def _fp8_scale(value) -> Callable[[Path], None]:
    return _changed("comfy_fp8", {f"{LAYER}.weight_scale": value})


def _bf16(changes: dict) -> Callable[[Path], None]:
    return _changed("bf16", changes)


def _quant_metadata(fmt) -> dict:
    _, meta = _fixture("comfy_nvfp4")
    layers = json.loads(meta["_quantization_metadata"])
    layers["layers"][LAYER] = {"format": fmt}
    return {"_quantization_metadata": json.dumps(layers)}


def _comfy_quant_tensor(raw: bytes) -> Callable[[Path], None]:
    return _changed(
        "comfy_nvfp4_comfy_quant",
        {f"{LAYER}.comfy_quant": torch.frombuffer(bytearray(raw), dtype=torch.uint8)},
    )


def _non_wan(tensors: dict[str, torch.Tensor]):
    return _save(tensors)


def _random_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {f"layer{i}.weight": torch.randn(8, 8, generator=g) for i in range(6)}


def _t5_like() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    keys = ["shared.weight", "encoder.final_layer_norm.weight"]
    keys += [f"encoder.block.{i}.layer.0.SelfAttention.{p}.weight" for i in range(2) for p in "qkvo"]
    return {k: torch.randn(16, 16, generator=g).to(torch.bfloat16) for k in keys}


def _many_tiny(path: Path) -> None:
    entries = [
        (f"t.{i}", {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]}) for i in range(MANY_TENSORS)
    ]
    write_raw(path, header_text(entries), bytes(MANY_TENSORS))


def _named_like_an_attack(path: Path) -> None:
    """Not WAN, and its key names carry a terminal escape, a bidi override, a NUL and a newline."""
    names = ["\x1b[2Jwipe.weight", "a\u202eevil.weight", "b\x00nul.weight", "line\nbreak.weight"]
    _save({n: torch.zeros(2) for n in names})(path)


# ---------------------------------------------------------------------------------------------- cases

NVFP4_SCALE_2 = f"{LAYER}.weight_scale_2"

CASES: dict[str, Case] = {
    # not safetensors at all, or not a file
    "pickle_disguised": Case(_pickle, UNREADABLE, "pickle"),
    "torch_zip_disguised": Case(_torch_zip, UNREADABLE, "torch.save zip archive"),
    "empty_file": Case(lambda p: p.write_bytes(b""), UNREADABLE, "too short"),
    "fifo": Case(_fifo, UNREADABLE, "not a regular file"),
    "directory": Case(_directory, UNREADABLE, "found an empty folder"),  # folders are diffusers exports
    # length field and truncation
    "truncated": Case(_truncated, UNREADABLE, "truncated"),
    "header_length_past_eof": Case(
        lambda p: write_raw(p, "{" + ONE + "}", b"\0" * 4, 10**6), UNREADABLE, "header length"
    ),
    "header_too_large": Case(lambda p: write_raw(p, "{}", b"", 100_000_001), UNREADABLE, "implausibly large"),
    "huge_tensor_claim": Case(_huge_claim, UNREADABLE, "runs past the end"),
    # JSON
    "not_json": Case(_tiny_header("{{{{"), UNREADABLE, "not valid JSON"),
    "not_utf8": Case(_tiny_header(b'{"\xff": 1}'), UNREADABLE, "not UTF-8"),
    "utf8_bom": Case(_tiny_header("\ufeff{" + ONE + "}"), UNREADABLE, "not valid JSON"),
    "nan_literal": Case(
        _tiny_header('{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}'), UNREADABLE, "NaN"
    ),
    "trailing_junk": Case(_tiny_header("{" + ONE + "} x"), UNREADABLE, "not valid JSON"),
    "header_is_a_list": Case(_tiny_header("[]"), UNREADABLE, "not a JSON object"),
    "deep_nesting_200": Case(_entry("extra", _nested(200)), UNREADABLE, "nested deeper"),
    "deep_nesting_50000": Case(_entry("extra", _nested(50_000)), UNREADABLE, "nested deeper"),
    "surrogate_tensor_name": Case(_surrogate_key, UNREADABLE, "surrogate"),
    "surrogate_metadata_value": Case(_metadata_value("\udfff"), UNREADABLE, "surrogate"),
    "duplicate_key_first_nan": Case(_duplicate(True), UNREADABLE, "duplicate key"),
    "duplicate_key_last_nan": Case(_duplicate(False), UNREADABLE, "duplicate key"),
    # entries
    "entry_not_an_object": Case(_tiny_header('{"a": [1, 2]}'), UNREADABLE, "malformed header entry"),
    "entry_missing_offsets": Case(
        _tiny_header('{"a": {"dtype": "F32", "shape": [1]}}'), UNREADABLE, "malformed header entry"
    ),
    "dtype_list": Case(_entry("dtype", '["F32"]'), UNREADABLE, "unknown tensor dtype"),
    "dtype_object": Case(_entry("dtype", '{"F32": 1}'), UNREADABLE, "unknown tensor dtype"),
    "dtype_unknown_name": Case(_entry("dtype", '"F33"'), UNREADABLE, "unknown tensor dtype"),
    "dtype_without_torch": Case(
        _tiny_header('{"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}', b"\0"),
        UNREADABLE,
        "unsupported tensor dtype",
    ),
    "shape_of_booleans": Case(_entry("shape", "[true]"), UNREADABLE, "malformed tensor shape"),
    "shape_negative": Case(_entry("shape", "[-1]"), UNREADABLE, "malformed tensor shape"),
    "shape_float": Case(_entry("shape", "[1.0]"), UNREADABLE, "malformed tensor shape"),
    "shape_beyond_u64": Case(_entry("shape", f"[{2**64}]"), UNREADABLE, "malformed tensor shape"),
    "shape_overflow": Case(_entry("shape", f"[{2**62}, 16]"), UNREADABLE, "overflows"),
    "offsets_three": Case(_entry("data_offsets", "[0, 4, 8]"), UNREADABLE, "malformed data_offsets"),
    "offsets_strings": Case(_entry("data_offsets", '["0", "4"]'), UNREADABLE, "malformed data_offsets"),
    "byte_range_not_shape": Case(_entry("shape", "[2]"), UNREADABLE, "does not match its shape"),
    "offsets_overlap": Case(_raw_fixture(_shift(-4, -4)), UNREADABLE, "overlaps"),
    "offsets_gap": Case(_raw_fixture(_shift(4, 4, grow=4)), UNREADABLE, "gap"),
    "data_not_covered": Case(
        _raw_fixture(lambda e, d, m: (e, d + b"\0" * 16, m)), UNREADABLE, "do not cover"
    ),
    # __metadata__
    "metadata_value_int": Case(_metadata_value(1), UNREADABLE, "not a string"),
    "metadata_value_object": Case(_metadata_value({"a": "b"}), UNREADABLE, "not a string"),
    "metadata_value_null": Case(_metadata_value(None), UNREADABLE, "not a string"),
    "metadata_value_zero": Case(_metadata_value(0), UNREADABLE, "not a string"),
    "metadata_value_empty_list": Case(_metadata_value([]), UNREADABLE, "not a string"),
    "metadata_is_a_list": Case(_whole_metadata("[]"), UNREADABLE, "not a string map"),
    "metadata_twice": Case(
        _tiny_header('{"__metadata__": {}, "__metadata__": {}, ' + ONE + "}"), UNREADABLE, "duplicate key"
    ),
    # nvfp4 block scales (read at load, by repair and by inspect)
    "block_scale_one_nan": Case(
        _comfy_scale("weight_scale", _scale_bytes(at=(3, 5), byte=0x7F)), UNUSABLE, "NaN"
    ),
    "block_scale_all_7f": Case(_comfy_scale("weight_scale", _scale_bytes(fill=0x7F)), UNUSABLE, "NaN"),
    "block_scale_all_ff": Case(_comfy_scale("weight_scale", _scale_bytes(fill=0xFF)), UNUSABLE, "NaN"),
    "block_scale_negative": Case(
        _comfy_scale("weight_scale", _scale_bytes(negate=True)), UNUSABLE, "negative"
    ),
    "block_scale_transposed": Case(
        _comfy_scale("weight_scale", lambda t: t.t().contiguous()), UNUSABLE, "shape"
    ),
    "block_scale_float32": Case(_comfy_scale("weight_scale", lambda t: t.float()), UNUSABLE, "wrong dtype"),
    # nvfp4 second-level scale
    "scale2_zero": Case(_comfy_scale("weight_scale_2", torch.tensor(0.0)), UNUSABLE, "zero"),
    "scale2_negative": Case(_comfy_scale("weight_scale_2", torch.tensor(-0.5)), UNUSABLE, "negative"),
    "scale2_inf": Case(_comfy_scale("weight_scale_2", torch.tensor(float("inf"))), UNUSABLE, "NaN or Inf"),
    "scale2_minus_inf": Case(
        _comfy_scale("weight_scale_2", torch.tensor(float("-inf"))), UNUSABLE, "NaN or Inf"
    ),
    "scale2_nan": Case(_comfy_scale("weight_scale_2", torch.tensor(float("nan"))), UNUSABLE, "NaN or Inf"),
    "scale2_matrix": Case(_comfy_scale("weight_scale_2", torch.ones(2, 2)), UNUSABLE, "not a scalar"),
    "scale2_empty": Case(_comfy_scale("weight_scale_2", torch.ones(0)), UNUSABLE, "not a scalar"),
    "scale2_int32": Case(
        _comfy_scale("weight_scale_2", torch.tensor(1, dtype=torch.int32)), UNUSABLE, "dtype"
    ),
    # fp8 weight scale
    "fp8_scale_zero": Case(_fp8_scale(torch.tensor(0.0)), UNUSABLE, "zero"),
    "fp8_scale_inf": Case(_fp8_scale(torch.tensor(float("inf"))), UNUSABLE, "NaN or Inf"),
    "fp8_scale_nan": Case(_fp8_scale(torch.tensor(float("nan"))), UNUSABLE, "NaN or Inf"),
    "fp8_scale_negative": Case(_fp8_scale(torch.tensor(-1.0)), UNUSABLE, "negative"),
    "fp8_scale_int32": Case(_fp8_scale(torch.tensor(1, dtype=torch.int32)), UNUSABLE, "dtype"),
    "fp8_scale_uint8": Case(_fp8_scale(torch.tensor(1, dtype=torch.uint8)), UNUSABLE, "dtype"),
    "fp8_scale_wrong_shape": Case(_fp8_scale(torch.ones(3)), UNUSABLE, "wrong shape"),
    # model structure
    "weight_1d": Case(_bf16({f"{LAYER}.weight": lambda t: t.reshape(-1)}), UNUSABLE, "not 2-D"),
    "ffn_transposed": Case(
        _bf16({f"blocks.{i}.ffn.{j}.weight": (lambda t: t.t().contiguous()) for i in (0, 1) for j in (0, 2)}),
        UNUSABLE,
        "transposed",
    ),
    "block_dims_disagree": Case(
        _bf16({"blocks.1.self_attn.q.weight": lambda t: t[: t.shape[0] // 2]}), UNUSABLE, "dims do not fit"
    ),
    "block_linear_missing": Case(
        _bf16({"blocks.1.cross_attn.k.weight": None}), UNUSABLE, "WAN layer missing"
    ),
    # declared formats and metadata the loaders parse
    "comfy_quant_unknown_format": Case(
        _comfy_quant_tensor(b'{"format": "nvfp5"}'), UNUSABLE, "not supported"
    ),
    "comfy_quant_deep": Case(_comfy_quant_tensor(_nested(5000).encode()), UNUSABLE, "not supported"),
    "comfy_quant_not_json": Case(_comfy_quant_tensor(b"\xff\xfe"), UNUSABLE, "not supported"),
    "quant_metadata_unknown_format": Case(
        _changed("comfy_nvfp4", {}, _quant_metadata("int3")), UNUSABLE, "not supported"
    ),
    "quant_metadata_deep": Case(
        _changed("comfy_nvfp4", {}, {"_quantization_metadata": _nested(5000)}),
        UNUSABLE,
        "_quantization_metadata",
    ),
    "quant_metadata_layers_list": Case(
        _changed("comfy_nvfp4", {}, {"_quantization_metadata": '{"layers": []}'}),
        UNUSABLE,
        "_quantization_metadata",
    ),
    "quantization_config_deep": Case(
        _changed("modelopt_nvfp4", {}, {"quantization_config": _nested(5000)}),
        UNUSABLE,
        "quantization_config",
    ),
    "config_deep": Case(
        _changed("bf16", {}, {"config": '{"transformer": ' + _nested(5000) + "}"}), UNUSABLE, "header config"
    ),
    # not WAN
    "random_tensors": Case(_non_wan(_random_tensors()), UNUSABLE, "not a WAN"),
    "t5_like": Case(_non_wan(_t5_like()), UNUSABLE, "not a WAN"),
    "no_tensors": Case(lambda p: write_raw(p, "{}"), UNUSABLE, "not a WAN"),
    "no_head_modulation": Case(_bf16({"head.modulation": None}), UNUSABLE, "not a WAN"),
    "many_tiny_tensors": Case(_many_tiny, UNUSABLE, "not a WAN"),
    "hostile_key_names": Case(_named_like_an_attack, UNUSABLE, "not a WAN"),
}


def build_case(name: str, folder: Path) -> Path:
    path = folder / f"{name}.safetensors"
    CASES[name].build(path)
    return path


def build_corpus(folder: Path, names=None) -> dict[str, Path]:
    """Every case (or `names`) written into `folder`; the same bytes on every run."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: build_case(name, folder) for name in (names or CASES)}
