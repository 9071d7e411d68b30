"""The safetensors header, validated exactly as strictly as the safetensors library (or more).

The rules are those of the format (huggingface/safetensors README, "Format") as its Rust parser enforces them
(`safetensors/src/tensor.rs`: `SafeTensors::read_metadata`, `Metadata::validate`, serde types `HashMetadata`,
`TensorInfo`, `Dtype`), each refused here with a message naming the file and, where there is one, the tensor:

- 8-byte little-endian header length N <= 100,000,000 bytes, and 8 + N <= file size;
- the header is UTF-8 JSON (serde_json: no NaN/Infinity, no lone surrogate escapes, nesting < 128 levels),
  one object; `__metadata__` (at most once) is null or an object of string -> string;
- every other entry is an object with `dtype` (one of the library's names), `shape` (non-negative integers
  < 2^64) and `data_offsets` (exactly two such integers); unknown extra fields are ignored, as there;
- sorted by offsets, each tensor begins where the previous one ended (no gap, no overlap; the first at 0),
  `end - begin` = elements x dtype bits / 8 (a whole number of bytes), and the last one ends exactly at the
  end of the file.

Stricter than the library, on purpose: a duplicate key anywhere in the header is refused (serde keeps the
last of two identical tensor entries, so a file could say one thing to one reader and another to the next),
and dtypes torch cannot hold (F4, F6_*) are refused with their name.
"""

import torch

from ..errors import CheckpointError
from .json_text import check_nesting, load_json

MAX_HEADER_BYTES = 100_000_000  # safetensors MAX_HEADER_SIZE
MAX_USIZE = 2**64 - 1
METADATA_KEY = "__metadata__"
ENTRY_FIELDS = ("dtype", "shape", "data_offsets")

# every dtype name of the safetensors format -> bits per element
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_TORCH_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "C64": "complex64",
}
# safetensors dtype name -> torch dtype, for those this torch has
SAFETENSORS_DTYPES = {
    name: getattr(torch, attr) for name, attr in _TORCH_NAMES.items() if hasattr(torch, attr)
}


def _usizes(values: list) -> bool:
    """Every value an integer in [0, 2^64) (`bool` is not an int here: serde refuses it)."""
    return not values or (
        {type(v) for v in values} == {int} and min(values) >= 0 and max(values) <= MAX_USIZE
    )


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tensor_error(path, name: str, problem: str, expected: str, found: str) -> CheckpointError:
    return CheckpointError(path, problem, name, expected, found, kind="tensor")


def _parse_info(path, name: str, info) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype name, shape, begin, end) of one header entry, every field type-checked."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise _tensor_error(
            path, name, "malformed header entry", "dtype, shape and data_offsets", _short(info)
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _tensor_error(
            path, name, "unknown tensor dtype", "a safetensors dtype name (F32, BF16, U8, ...)", _short(dtype)
        )
    if dtype not in SAFETENSORS_DTYPES:
        raise _tensor_error(
            path, name, "unsupported tensor dtype", "a safetensors dtype torch can read", dtype
        )
    if not (type(shape) is list and _usizes(shape)):
        raise _tensor_error(
            path, name, "malformed tensor shape", "a list of non-negative integers", _short(shape)
        )
    if not (type(offsets) is list and len(offsets) == 2 and _usizes(offsets)):
        raise _tensor_error(
            path, name, "malformed data_offsets", "[begin, end], non-negative integers", _short(offsets)
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def _nbytes(path, name: str, dtype: str, shape: tuple[int, ...]) -> int:
    bits = DTYPE_BITS[dtype]
    for d in shape:
        bits *= d
    if bits > MAX_USIZE:
        raise _tensor_error(
            path, name, "tensor size overflows", "a size below 2^64 bits", f"shape {list(shape)}"
        )
    if bits % 8:
        raise _tensor_error(
            path, name, "tensor is not a whole number of bytes", "bits % 8 == 0", f"{bits} bits"
        )
    return bits // 8


def parse_metadata(path, value) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(
            path,
            "__metadata__ is not a string map",
            METADATA_KEY,
            "an object",
            type(value).__name__,
            kind="header key",
        )
    for key, text in value.items():
        if not isinstance(text, str):
            raise CheckpointError(
                path,
                "__metadata__ value is not a string",
                f"{METADATA_KEY}.{key}",
                "a string",
                f"{type(text).__name__} {_short(text, 40)}",
                kind="header key",
            )
    return dict(value)


def parse_header(path, raw: bytes, data_size: int):
    """`(tensors, metadata)` from the header bytes: tensors = [(name, dtype name, shape, begin, end)] in
    file order, offsets relative to the data section of `data_size` bytes. Raises CheckpointError."""
    try:
        header = load_json(raw, check_depth=False)
        for info in header.values() if isinstance(header, dict) else ():
            extra = len(info) > len(ENTRY_FIELDS) if isinstance(info, dict) else False
            if extra:  # unknown fields are ignored (as by the library), but their nesting is checked
                check_nesting([v for k, v in info.items() if k not in ENTRY_FIELDS], depth=2)
    except ValueError as e:
        raise CheckpointError(
            path, "header is not valid JSON (corrupt, or not a safetensors file)", found=str(e)
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object", found=type(header).__name__)
    metadata = parse_metadata(path, header.pop(METADATA_KEY, None))
    tensors = []
    for name, info in header.items():
        dtype, shape, begin, end = _parse_info(path, name, info)
        want = _nbytes(path, name, dtype, shape)
        if end > data_size:
            raise _tensor_error(
                path,
                name,
                "tensor data runs past the end of the file (truncated or corrupt download?)",
                f"data ending at or before byte {data_size} of the data section",
                f"offsets {[begin, end]}",
            )
        if end < begin or end - begin != want:
            raise _tensor_error(
                path,
                name,
                "tensor byte range does not match its shape",
                f"{want} bytes",
                f"offsets {[begin, end]}",
            )
        tensors.append((name, dtype, shape, begin, end))
    _check_layout(path, tensors, data_size)
    return tensors, metadata


def _check_layout(path, tensors, data_size: int) -> None:
    """Sorted by offsets, the tensors tile the data section exactly (Metadata::validate + read_metadata)."""
    end = 0
    for name, _, _, begin, stop in sorted(tensors, key=lambda t: (t[3], t[4])):
        if begin != end:
            what = "overlaps the previous tensor" if begin < end else "leaves a gap after the previous tensor"
            raise _tensor_error(
                path,
                name,
                f"tensor data {what} (invalid data_offsets)",
                f"data beginning at byte {end} of the data section",
                f"offsets {[begin, stop]}",
            )
        end = stop
    if end != data_size:
        raise CheckpointError(
            path,
            "the tensors do not cover the file's data section (bytes after the last tensor)",
            None,
            f"data ending at byte {data_size} of the data section",
            f"the last tensor ends at byte {end}",
        )
