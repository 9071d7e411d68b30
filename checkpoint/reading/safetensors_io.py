"""Read a .safetensors file from its header alone; tensors come lazily from a copy-on-write mmap.

Nothing here unpickles anything: a pickle or torch.save archive is recognised by its first bytes and refused.
"""

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, PickleCheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# first bytes -> what the file really is (refused: loading them means unpickling)
PICKLE_SIGNATURES = (
    (b"PK\x03\x04", "a torch.save zip archive (pickle inside)"),
    (b"\x80\x02", "a pickle (protocol 2)"),
    (b"\x80\x03", "a pickle (protocol 3)"),
    (b"\x80\x04", "a pickle (protocol 4)"),
    (b"\x80\x05", "a pickle (protocol 5)"),
)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; `start`/`end` are absolute byte offsets in the file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _refuse_pickle(path: Path, head: bytes) -> None:
    for magic, what in PICKLE_SIGNATURES:
        if head.startswith(magic):
            raise PickleCheckpointError(
                path,
                f"this is {what}, not a safetensors file",
                expected="a .safetensors file",
                found=what,
                hint="Pickle checkpoints can run code when loaded and are refused; convert it with a tool "
                "you trust, or download the .safetensors release",
            )


def _parse_entry(path: Path, name: str, info, data_start: int, data_size: int) -> TensorEntry:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise CheckpointError(
            path, "malformed header entry", name, "dtype, shape and data_offsets", repr(info), kind="tensor"
        )
    dtype = SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise CheckpointError(
            path,
            "unsupported tensor dtype",
            name,
            "a safetensors dtype torch can read",
            info["dtype"],
            kind="tensor",
        )
    shape = info["shape"]
    offsets = info["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(
            path, "malformed tensor shape", name, "a list of non-negative ints", repr(shape), kind="tensor"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise CheckpointError(
            path, "malformed data_offsets", name, "[begin, end]", repr(offsets), kind="tensor"
        )
    begin, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    want = numel * dtype.itemsize
    if begin < 0 or end < begin or end - begin != want:
        raise CheckpointError(
            path,
            "tensor byte range does not match its shape",
            name,
            f"{want} bytes",
            f"offsets {offsets}",
            kind="tensor",
        )
    if end > data_size:
        raise CheckpointError(
            path,
            "tensor data runs past the end of the file (truncated or corrupt download?)",
            name,
            f"data ending at or before byte {data_size} of the data section",
            f"offsets {offsets}",
            kind="tensor",
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def read_header(path: str | Path) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
    """Parse and validate the header: `(entries, metadata, file_size)`. Reads only the header bytes."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            if head[8:9] != b"{":  # a JSON header follows: its length bytes may look like a pickle magic
                _refuse_pickle(path, head)
            head = head[:8]
            f.seek(len(head))
            if len(head) < 8:
                raise CheckpointError(
                    path,
                    "file is too short to be safetensors",
                    None,
                    "at least 8 bytes",
                    f"{len(head)} bytes",
                )
            header_len = int.from_bytes(head, "little")
            if header_len > file_size - 8:
                raise CheckpointError(
                    path,
                    "header length is larger than the file (truncated download, or not a safetensors file)",
                    None,
                    f"at most {file_size - 8} header bytes",
                    f"{header_len}",
                )
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    path, "header is implausibly large", None, f"<= {MAX_HEADER_BYTES} bytes", str(header_len)
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CheckpointError(path, f"cannot read file ({e.strerror or e})") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            path, "header is not valid JSON (corrupt, or not a safetensors file)", found=str(e)
        ) from e
    if not isinstance(header, dict):
        raise CheckpointError(path, "header is not a JSON object", found=type(header).__name__)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(path, "__metadata__ is not a string map", found=type(metadata).__name__)
    data_start = 8 + header_len
    data_size = file_size - data_start
    entries = {name: _parse_entry(path, name, info, data_start, data_size) for name, info in header.items()}
    return entries, {str(k): str(v) for k, v in metadata.items()}, file_size


class SafetensorsFile:
    """Header-only view of a safetensors file; `tensor(name)` maps that tensor's bytes lazily (no read).

    Each tensor gets its own copy-on-write mapping of just its byte range: a caller that writes to a returned
    tensor never touches the file, the pages go when the tensor does, and a file larger than RAM + swap can be
    read (one private mapping of the whole file would be refused by the kernel's overcommit check).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries, self.metadata, self.file_size = read_header(self.path)

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: each tensor handed out owns its mapping."""

    def keys(self):
        return self.entries.keys()

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name].dtype

    def _map(self, entry: TensorEntry) -> tuple[mmap.mmap, int]:
        """A private mapping of the pages holding `entry`, and the tensor's offset inside it."""
        start = entry.start - entry.start % mmap.ALLOCATIONGRANULARITY
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                mapped = mmap.mmap(fd, entry.end - start, access=mmap.ACCESS_COPY, offset=start)
            finally:
                os.close(fd)
        except OSError as e:
            raise CheckpointError(
                self.path, f"cannot map the tensor's bytes ({e.strerror or e})", entry.name, kind="tensor"
            ) from e
        return mapped, entry.start - start

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name`, backed by its own mapping when its offset is aligned (copied otherwise)."""
        try:
            entry = self.entries[name]
        except KeyError:
            raise CheckpointError(self.path, "tensor not in file", name, kind="tensor") from None
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        mapped, offset = self._map(entry)
        raw = torch.frombuffer(mapped, dtype=torch.uint8, count=entry.nbytes, offset=offset)
        if entry.start % entry.dtype.itemsize:
            raw = raw.clone()
        return raw.view(entry.dtype).reshape(entry.shape)

    def nbytes(self, name: str) -> int:
        return self.entries[name].nbytes


class StateDictSource:
    """The same read interface over an in-memory state dict (e.g. what ComfyUI's loader holds)."""

    def __init__(
        self, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, path=None
    ):
        self.state_dict = state_dict
        self.metadata = dict(metadata or {})
        self.path = None if path is None else Path(path)

    def keys(self):
        return self.state_dict.keys()

    def __contains__(self, name: str) -> bool:
        return name in self.state_dict

    def __len__(self) -> int:
        return len(self.state_dict)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state_dict[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self.state_dict[name].dtype

    def tensor(self, name: str) -> torch.Tensor:
        return self.state_dict[name]

    def nbytes(self, name: str) -> int:
        t = self.state_dict[name]
        return t.numel() * t.element_size()


def open_checkpoint(path: str | Path) -> SafetensorsFile:
    """Open a checkpoint for reading. Only safetensors is accepted; pickles are refused unread."""
    return SafetensorsFile(path)
