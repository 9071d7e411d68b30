"""Streaming, atomic safetensors writer: header first (shapes are known up front), then tensors one by one.

The file is written as `<dir>/.<name>.wan-nvfp4-partial-<pid>.tmp` next to the destination, fsynced, its
header re-read and a sample of tensors re-read and checked against checksums taken while writing; only then
is it renamed onto the destination (`os.replace`, atomic on one filesystem). A kill at any moment leaves no
file at the destination; a stale temp file (its writer process gone) is removed by the next writer that
targets the same folder.
"""

import contextlib
import json
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..reading.safetensors_io import DTYPE_NAMES, read_header

TEMP_SUFFIX = ".tmp"
TEMP_TAG = ".wan-nvfp4-partial-"
HEADER_ALIGN = 8
WRITE_CHUNK = 256 * 1024 * 1024  # largest single pwrite
READ_CHUNK = 16 * 1024 * 1024  # verification reads


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor, known before any data is written."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def temp_path_for(dst: Path, pid: int | None = None) -> Path:
    """The temp file a writer with process id `pid` uses for `dst` (recognisable by its name)."""
    return dst.with_name(f".{dst.name}{TEMP_TAG}{os.getpid() if pid is None else pid}{TEMP_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp_files(dst: Path) -> list[Path]:
    """Temp files left for `dst` by writers that no longer run (killed mid-write)."""
    pattern = re.compile(re.escape(f".{dst.name}{TEMP_TAG}") + r"(\d+)" + re.escape(TEMP_SUFFIX) + "$")
    stale = []
    for entry in dst.parent.iterdir() if dst.parent.is_dir() else ():
        m = pattern.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            stale.append(entry)
    return stale


def check_destination(dst: Path, protect: Iterable[Path] = (), overwrite: bool = False) -> None:
    """Refuse a destination that is (or links to) a protected input, or exists without `overwrite`."""
    for src in protect:
        src = Path(src)
        same = dst.exists() and src.exists() and os.path.samefile(src, dst)
        if same or dst.resolve() == src.resolve():
            raise CheckpointError(
                dst,
                "destination is the input file (directly, via a symlink or a hard link)",
                expected="a new file name",
                found=f"the same file as {src}",
                hint="The input is never overwritten; choose another output name",
                kind="file",
            )
    if dst.is_dir():
        raise CheckpointError(
            dst, "destination is a folder", expected="a file name", found="a folder", kind="file"
        )
    if dst.exists() and not overwrite:
        raise CheckpointError(
            dst,
            "destination already exists",
            expected="a path that does not exist",
            found="an existing file",
            hint="Pass --overwrite to replace it",
            kind="file",
        )
    if not dst.parent.is_dir():
        raise CheckpointError(dst, "destination folder does not exist", found=str(dst.parent), kind="file")


def build_header(plan: list[PlannedTensor], metadata: dict[str, str]) -> tuple[bytes, dict[str, int]]:
    """Serialized header (padded with spaces to 8 bytes) and each tensor's offset in the data section.

    Tensors are laid out by decreasing item size, then name (as the safetensors library does), so every
    tensor starts aligned to its item size.
    """
    names = [p.name for p in plan]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"duplicate output tensor names: {dup[:5]}")
    ordered = sorted(plan, key=lambda p: (-p.dtype.itemsize, p.name))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets, pos = {}, 0
    for p in ordered:
        header[p.name] = {
            "dtype": DTYPE_NAMES[p.dtype],
            "shape": list(p.shape),
            "data_offsets": [pos, pos + p.nbytes],
        }
        offsets[p.name] = pos
        pos += p.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % HEADER_ALIGN)
    return len(raw).to_bytes(8, "little") + raw, offsets


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        n = os.pwrite(fd, data[done : done + WRITE_CHUNK], offset + done)
        if n <= 0:
            raise OSError("short write")
        done += n


def _crc_of_range(fd: int, size: int, offset: int) -> int:
    """crc32 of `size` bytes at `offset`, read in chunks (never the whole tensor at once)."""
    crc, done = 0, 0
    while done < size:
        chunk = os.pread(fd, min(size - done, READ_CHUNK), offset + done)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        done += len(chunk)
    return crc if done == size else -1


class StreamingSafetensorsWriter:
    """Write a planned safetensors file tensor by tensor, atomically.

    with StreamingSafetensorsWriter(dst, plan, metadata, protect=[src]) as w:
        for ...: w.write(name, tensor)
        w.commit()          # fsync, verify, rename; without it the temp file is removed

    Tensors may arrive in any order; each is written at its planned offset.
    """

    def __init__(
        self,
        dst: str | Path,
        plan: list[PlannedTensor],
        metadata: dict[str, str] | None = None,
        *,
        protect: Iterable[str | Path] = (),
        overwrite: bool = False,
        spot_checks: int = 8,
    ):
        self.dst = Path(dst).absolute()
        self.plan = {p.name: p for p in plan}
        self.metadata = dict(metadata or {})
        self.protect = [Path(p) for p in protect]
        self.overwrite = overwrite
        self.spot_checks = spot_checks
        self.header, self.offsets = build_header(plan, self.metadata)
        self.data_start = len(self.header)
        self.total_bytes = sum(p.nbytes for p in plan)
        self.checksums: dict[str, int] = {}
        self.removed_stale: list[Path] = []
        self.tmp: Path | None = None
        self._fd: int | None = None

    # --- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> "StreamingSafetensorsWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()

    def open(self) -> None:
        check_destination(self.dst, self.protect, self.overwrite)
        for stale in stale_temp_files(self.dst):
            stale.unlink(missing_ok=True)
            self.removed_stale.append(stale)
        self._check_free_space()
        self.tmp = temp_path_for(self.dst)
        with self._os_errors("cannot create the output"):
            self._fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            _pwrite_all(self._fd, memoryview(self.header), 0)
            os.ftruncate(self._fd, self.data_start + self.total_bytes)

    def _check_free_space(self) -> None:
        """Refuse before any work when the folder cannot hold the output (the temp file is sparse)."""
        try:
            st = os.statvfs(self.dst.parent)
        except (OSError, AttributeError):
            return
        need, free = self.data_start + self.total_bytes, st.f_bavail * st.f_frsize
        if free < need:
            raise CheckpointError(
                self.dst,
                "not enough free space in the destination folder",
                expected=f"{need / 1e9:.2f} GB free",
                found=f"{free / 1e9:.2f} GB",
                kind="file",
            )

    @contextlib.contextmanager
    def _os_errors(self, what: str, tensor: str | None = None):
        """An OSError (disk full, I/O error, permission) as a CheckpointError naming the destination."""
        try:
            yield
        except OSError as e:
            raise CheckpointError(
                self.dst,
                f"{what} ({e.strerror or e})",
                tensor,
                hint="Nothing was written at the destination; its temp file is removed",
                kind="tensor" if tensor else "file",
            ) from e

    def abort(self) -> None:
        """Close and delete the temp file (no-op after a successful commit)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None

    # --- data ------------------------------------------------------------------------------------------
    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (dtype and shape must match the plan exactly)."""
        if self._fd is None:
            raise RuntimeError("writer is not open")
        planned = self.plan.get(name)
        if planned is None:
            raise ValueError(f"tensor {name!r} is not in the output plan")
        if name in self.checksums:
            raise ValueError(f"tensor {name!r} written twice")
        if tensor.dtype != planned.dtype or tuple(tensor.shape) != planned.shape:
            raise ValueError(
                f"tensor {name}: planned {planned.dtype} {list(planned.shape)}, "
                f"got {tensor.dtype} {list(tensor.shape)}"
            )
        data = tensor_bytes(tensor) if planned.nbytes else memoryview(b"")
        with self._os_errors("cannot write the output", name):
            _pwrite_all(self._fd, data, self.data_start + self.offsets[name])
        self.checksums[name] = zlib.crc32(data)

    def missing(self) -> list[str]:
        return [n for n in self.plan if n not in self.checksums]

    def _spot_check_names(self) -> list[str]:
        names = sorted(self.plan, key=lambda n: -self.plan[n].nbytes)
        picked = names[: max(self.spot_checks // 2, 1)]
        rest = sorted(self.plan)
        step = max(len(rest) // max(self.spot_checks - len(picked), 1), 1)
        picked += rest[::step]
        return list(dict.fromkeys(picked))[: max(self.spot_checks, 1)] if self.plan else []

    def verify(self) -> list[str]:
        """Re-read the temp file's header and a sample of tensors; return the names spot-checked."""
        assert self.tmp is not None and self._fd is not None
        entries, metadata, size = read_header(self.tmp)
        problems = []
        if size != self.data_start + self.total_bytes:
            problems.append(f"file size {size}, expected {self.data_start + self.total_bytes}")
        if metadata != {str(k): str(v) for k, v in self.metadata.items()}:
            problems.append("header metadata differs from what was written")
        for name, p in self.plan.items():
            e = entries.get(name)
            if e is None or e.dtype != p.dtype or e.shape != p.shape:
                problems.append(f"tensor {name}: header entry {e} does not match plan {p}")
        checked = self._spot_check_names()
        for name in checked:
            e = entries[name]
            if _crc_of_range(self._fd, e.nbytes, e.start) != self.checksums[name]:
                problems.append(f"tensor {name}: bytes read back differ from the bytes written")
        if problems:
            raise CheckpointError(
                self.tmp,
                "verification of the written file failed",
                expected="the header and tensors that were written",
                found="; ".join(problems[:5]),
                hint="Nothing was renamed onto the destination; check the disk and try again",
                kind="file",
            )
        return checked

    def commit(self) -> list[str]:
        """fsync, verify, rename onto the destination, fsync the folder. Returns the spot-checked names."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors were never written, e.g. {missing[:3]}")
        assert self._fd is not None and self.tmp is not None
        with self._os_errors("cannot write the output"):
            os.fsync(self._fd)
        checked = self.verify()
        os.close(self._fd)
        self._fd = None
        check_destination(self.dst, self.protect, self.overwrite)
        with self._os_errors("cannot rename the finished output onto the destination"):
            os.replace(self.tmp, self.dst)
        self.tmp = None
        _fsync_dir(self.dst.parent)
        return checked


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, payload) -> Path:
    """Write a small JSON file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_TAG}{os.getpid()}{TEMP_SUFFIX}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
