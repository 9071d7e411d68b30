"""Read one tensor at a time into private memory, so streaming jobs hold about one layer, not the file.

Tensors from a memory map stay resident (and count as the process's memory) until the map is dropped;
`read_tensor` copies the bytes with `pread` into a fresh buffer that is freed with the tensor, and tells the
kernel it can drop the file pages from its cache.
"""

import contextlib
import ctypes
import ctypes.util
import os

import torch

from ..errors import CheckpointError
from .safetensors_io import open_regular


def read_tensor(source, name: str) -> torch.Tensor:
    """The tensor `name` of `source` as an owning CPU tensor (never a view of the file)."""
    own = getattr(source, "read_tensor", None)  # a source over several files (sharded_source) reads itself
    if own is not None:
        return own(name)
    entries = getattr(source, "entries", None)
    path = getattr(source, "path", None)
    if entries is None or path is None:
        return source.tensor(name)
    try:
        entry = entries[name]
    except KeyError:
        raise CheckpointError(path, "tensor not in file", name, kind="tensor") from None
    out = torch.empty(entry.nbytes, dtype=torch.uint8)
    if entry.nbytes:
        view = memoryview(out.numpy())
        fd = open_regular(path)  # never blocks, even if the path became a FIFO since its header was read
        try:
            done = 0
            while done < entry.nbytes:
                n = os.preadv(fd, [view[done:]], entry.start + done)
                if n <= 0:
                    raise CheckpointError(path, "file ended while reading a tensor", name, kind="tensor")
                done += n
            _drop_cache(fd, entry.start, entry.nbytes)
        except OSError as e:
            raise CheckpointError(
                path, f"cannot read the tensor ({e.strerror or e})", name, kind="tensor"
            ) from None
        finally:
            os.close(fd)
    return out.view(entry.dtype).reshape(entry.shape)


def _drop_cache(fd: int, start: int, length: int) -> None:
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        with contextlib.suppress(OSError):
            advise(fd, start, length, os.POSIX_FADV_DONTNEED)


class TensorReader:
    """`reader(key)` -> owning tensor; the `get` function `layers.build_weight` takes."""

    def __init__(self, source):
        self.source = source

    def __call__(self, name: str) -> torch.Tensor:
        return read_tensor(self.source, name)


_LIBC = None


def release_freed_memory() -> None:
    """Give memory freed by the last layer back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    Without it glibc keeps freed heap pages, and a streaming job's resident memory creeps up layer by layer.
    """
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    trim = getattr(_LIBC, "malloc_trim", None) if _LIBC else None
    if trim is not None:
        trim(0)
