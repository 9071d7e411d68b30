"""Read a .safetensors file from its header alone; tensors come lazily from a copy-on-write mmap.

Nothing here unpickles anything: a pickle or torch.save archive is recognised by its first bytes and refused.
"""

import mmap
import os
import stat
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import CheckpointError, PickleCheckpointError
from .header import MAX_HEADER_BYTES, SAFETENSORS_DTYPES, parse_header

DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# first bytes -> what the file really is (refused: loading them means unpickling)
PICKLE_SIGNATURES = (
    (b"PK\x03\x04", "a torch.save zip archive (pickle inside)"),
    (b"\x80\x02", "a pickle (protocol 2)"),
    (b"\x80\x03", "a pickle (protocol 3)"),
    (b"\x80\x04", "a pickle (protocol 4)"),
    (b"\x80\x05", "a pickle (protocol 5)"),
)


class TensorEntry(NamedTuple):
    """One tensor as the header describes it; `start`/`end` are absolute byte offsets in the file.

    A named tuple (immutable, and cheap to build for a header of 100,000 tensors)."""

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


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, which must be a regular file: opening never blocks (O_NONBLOCK: a
    FIFO named `x.safetensors` would otherwise wait for a writer forever) and a FIFO, device or directory is
    refused. The caller closes it."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise CheckpointError(path, f"cannot read file ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise CheckpointError(path, f"cannot read file ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket"}
        found = next((what for test, what in kinds.items() if test(mode)), "a device or special file")
        raise CheckpointError(path, "not a regular file", None, "a regular .safetensors file", found)
    return fd


def read_exactly(fd: int, count: int, offset: int) -> bytes:
    """`count` bytes at `offset` (fewer only at the end of the file)."""
    chunks, done = [], 0
    while done < count:
        chunk = os.pread(fd, count - done, offset + done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def read_header(path: str | Path) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
    """Parse and validate the header: `(entries, metadata, file_size)`. Reads only the header bytes.

    The rules (and why we check them ourselves rather than through `safetensors.safe_open`) are in
    `header.py`; here: only a regular file is opened, a pickle is recognised by its first bytes and refused.
    """
    path = Path(path)
    fd = open_regular(path)
    try:
        file_size = os.fstat(fd).st_size
        head = read_exactly(fd, 9, 0)
        if head[8:9] != b"{":  # a JSON header follows: its length bytes may look like a pickle magic
            _refuse_pickle(path, head)
        if len(head) < 8:
            raise CheckpointError(
                path, "file is too short to be safetensors", None, "at least 8 bytes", f"{len(head)} bytes"
            )
        header_len = int.from_bytes(head[:8], "little")
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(
                path, "header is implausibly large", None, f"<= {MAX_HEADER_BYTES} bytes", str(header_len)
            )
        if header_len > file_size - 8:
            raise CheckpointError(
                path,
                "header length is larger than the file (truncated download, or not a safetensors file)",
                None,
                f"at most {file_size - 8} header bytes",
                f"{header_len}",
            )
        raw = read_exactly(fd, header_len, 8)
    except OSError as e:
        raise CheckpointError(path, f"cannot read file ({e.strerror or e})") from None
    finally:
        os.close(fd)
    data_start = 8 + header_len
    tensors, metadata = parse_header(path, raw, file_size - data_start)
    entries = {
        name: TensorEntry(name, SAFETENSORS_DTYPES[dtype], shape, data_start + begin, data_start + end)
        for name, dtype, shape, begin, end in tensors
    }
    return entries, metadata, file_size


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
        fd = open_regular(self.path)
        try:
            mapped = mmap.mmap(fd, entry.end - start, access=mmap.ACCESS_COPY, offset=start)
        except (OSError, ValueError) as e:  # e.g. the file shrank since its header was read
            raise CheckpointError(
                self.path,
                f"cannot map the tensor's bytes ({getattr(e, 'strerror', None) or e})",
                entry.name,
                kind="tensor",
            ) from None
        finally:
            os.close(fd)
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
