"""Streaming writer: readable by the safetensors library, atomic rename, refusals, stale temp cleanup."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from wan_nvfp4.checkpoint.errors import CheckpointError
from wan_nvfp4.checkpoint.reading.safetensors_io import read_header
from wan_nvfp4.checkpoint.writing.writer import (
    PlannedTensor,
    StreamingSafetensorsWriter,
    stale_temp_files,
    temp_path_for,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "blocks.0.w": torch.randn(5, 7, generator=g).to(torch.bfloat16),
        "blocks.0.s": torch.tensor(0.25),
        "blocks.0.fp8": torch.randn(3, 16, generator=g).to(torch.float8_e4m3fn),
        "packed": torch.randint(0, 256, (9, 3), generator=g, dtype=torch.uint8),
        "vec": torch.randn(11, generator=g, dtype=torch.float64),
        "empty": torch.empty(0, 4),
    }


def _plan(ts):
    return [PlannedTensor(k, v.dtype, tuple(v.shape)) for k, v in ts.items()]


def _as_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def test_written_file_reads_back_with_safetensors_library(tmp_path):
    ts = _tensors()
    dst = tmp_path / "out.safetensors"
    with StreamingSafetensorsWriter(dst, _plan(ts), {"note": "x"}) as w:
        for k in reversed(list(ts)):  # any order: each tensor goes to its planned offset
            w.write(k, ts[k])
        w.commit()
    with safe_open(str(dst), framework="pt") as f:
        assert f.metadata() == {"note": "x"}
        assert set(f.keys()) == set(ts)
        for k, v in ts.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and tuple(got.shape) == tuple(v.shape)
            assert torch.equal(_as_bytes(got), _as_bytes(v)), k
    entries, _, _ = read_header(dst)
    for e in entries.values():  # every tensor aligned to its item size
        assert e.start % e.dtype.itemsize == 0
    assert list(tmp_path.iterdir()) == [dst]


def test_write_checks_plan(tmp_path):
    ts = _tensors()
    with StreamingSafetensorsWriter(tmp_path / "o.safetensors", _plan(ts)) as w:
        with pytest.raises(ValueError, match="planned"):
            w.write("blocks.0.w", ts["blocks.0.w"].float())
        with pytest.raises(ValueError, match="not in the output plan"):
            w.write("nope", ts["vec"])
        w.write("vec", ts["vec"])
        with pytest.raises(ValueError, match="twice"):
            w.write("vec", ts["vec"])
        with pytest.raises(RuntimeError, match="never written"):
            w.commit()
    assert list(tmp_path.iterdir()) == []  # aborted: temp removed, nothing at dst


def test_exception_leaves_no_destination_and_no_temp(tmp_path):
    ts = _tensors()
    dst = tmp_path / "o.safetensors"
    with pytest.raises(KeyError), StreamingSafetensorsWriter(dst, _plan(ts)) as w:
        w.write("vec", ts["vec"])
        raise KeyError("boom")
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_refuses_input_as_destination_direct_symlink_and_hardlink(tmp_path):
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"original")
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    hard = tmp_path / "hard.safetensors"
    os.link(src, hard)
    ts = {"a": torch.zeros(2)}
    for dst in (src, link, hard):
        with pytest.raises(CheckpointError, match="same file") as e:
            StreamingSafetensorsWriter(dst, _plan(ts), protect=[src], overwrite=True).open()
        assert str(dst) in str(e.value)
    assert src.read_bytes() == b"original"


def test_existing_destination_needs_overwrite(tmp_path):
    dst = tmp_path / "o.safetensors"
    dst.write_bytes(b"old")
    ts = {"a": torch.arange(4.0)}
    with pytest.raises(CheckpointError, match="already exists"):
        StreamingSafetensorsWriter(dst, _plan(ts)).open()
    with StreamingSafetensorsWriter(dst, _plan(ts), overwrite=True) as w:
        w.write("a", ts["a"])
        w.commit()
    with safe_open(str(dst), framework="pt") as f:
        assert torch.equal(f.get_tensor("a"), ts["a"])


def test_verify_catches_corrupted_bytes(tmp_path):
    ts = {"a": torch.arange(64.0), "b": torch.ones(8)}
    dst = tmp_path / "o.safetensors"
    with StreamingSafetensorsWriter(dst, _plan(ts), spot_checks=4) as w:
        for k, v in ts.items():
            w.write(k, v)
        os.pwrite(w._fd, b"\xff\xff\xff\xff", w.data_start + w.offsets["a"] + 8)  # disk "corruption"
        with pytest.raises(CheckpointError, match="differ"):
            w.commit()
    assert not dst.exists()


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from wan_nvfp4.checkpoint.writing.writer import PlannedTensor, StreamingSafetensorsWriter
    plan = [PlannedTensor(f"t{i}", torch.float32, (256, 256)) for i in range(50)]
    with StreamingSafetensorsWriter(sys.argv[1], plan) as w:
        for i, p in enumerate(plan):
            w.write(p.name, torch.full(p.shape, float(i)))
            print("wrote", i, flush=True)
            time.sleep(0.05)
        w.commit()
    """
)


def test_sigkill_mid_write_leaves_no_destination_and_next_writer_cleans_up(tmp_path):
    dst = tmp_path / "o.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(dst)], stdout=subprocess.PIPE, text=True
    )
    for _ in range(3):
        assert proc.stdout.readline().startswith("wrote")
    proc.kill()
    proc.wait()
    assert not dst.exists()
    leftover = temp_path_for(dst.absolute(), proc.pid)
    assert leftover.exists()  # recognisable by name: .<dst>.wan-nvfp4-partial-<pid>.tmp
    assert stale_temp_files(dst.absolute()) == [leftover]
    ts = {"a": torch.ones(3)}
    with StreamingSafetensorsWriter(dst, _plan(ts)) as w:
        assert w.removed_stale == [leftover]
        w.write("a", ts["a"])
        w.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]


@pytest.mark.parametrize("header_len", [0x0280, 0x0380, 0x0480, 0x0580])
def test_header_length_that_looks_like_a_pickle_magic_still_reads(tmp_path, header_len):
    """A header of 0x380 bytes starts the file with 80 03 (pickle protocol 3's magic): still safetensors."""
    from wan_nvfp4.checkpoint.writing.writer import build_header

    ts = {"a": torch.arange(4.0)}
    base = len(build_header(_plan(ts), {"pad": ""})[0]) - 8
    meta = {"pad": "x" * (header_len - base)}
    header, _ = build_header(_plan(ts), meta)
    assert int.from_bytes(header[:8], "little") == header_len and header[0] == 0x80
    dst = tmp_path / "o.safetensors"
    with StreamingSafetensorsWriter(dst, _plan(ts), meta) as w:
        w.write("a", ts["a"])
        w.commit()
    entries, metadata, _ = read_header(dst)
    assert metadata == meta and entries["a"].shape == (4,)


def test_disk_full_mid_write_is_a_named_error_and_leaves_nothing(tmp_path, monkeypatch):
    """ENOSPC while streaming: a CheckpointError naming the destination and the tensor; no temp file, and an
    existing destination (being overwritten) keeps its old bytes."""
    import errno

    from wan_nvfp4.checkpoint.writing import writer as W

    ts = _tensors()
    dst = tmp_path / "o.safetensors"
    dst.write_bytes(b"old")
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        if offset > 0:  # the header goes through, the first tensor hits a full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(W.os, "pwrite", pwrite)
    with pytest.raises(CheckpointError) as e, StreamingSafetensorsWriter(dst, _plan(ts), overwrite=True) as w:
        w.write("vec", ts["vec"])
    assert str(dst) in str(e.value) and "tensor vec" in str(e.value) and "No space left" in str(e.value)
    assert dst.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [dst.name]


def test_too_little_free_space_is_refused_before_any_work(tmp_path, monkeypatch):
    from wan_nvfp4.checkpoint.writing import writer as W

    real = os.statvfs(tmp_path)
    monkeypatch.setattr(W.os, "statvfs", lambda p: os.statvfs_result((*real[:4], 0, *real[5:])))
    ts = _tensors()
    with pytest.raises(CheckpointError, match="not enough free space") as e:
        StreamingSafetensorsWriter(tmp_path / "o.safetensors", _plan(ts)).open()
    assert "expected" in str(e.value) and "GB free" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_folder_as_destination_is_refused_up_front(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        StreamingSafetensorsWriter(folder, _plan({"a": torch.zeros(2)}), overwrite=True).open()
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_input_reached_through_other_spellings_is_refused(tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    src = sub / "in.safetensors"
    src.write_bytes(b"original")
    (tmp_path / "alias").symlink_to(sub)
    monkeypatch.chdir(tmp_path)
    spellings = ["sub/in.safetensors", "sub/../sub/./in.safetensors", "alias/in.safetensors", str(src)]
    for dst in spellings:
        with pytest.raises(CheckpointError, match="same file"):
            StreamingSafetensorsWriter(
                dst, _plan({"a": torch.zeros(2)}), protect=["sub/in.safetensors"]
            ).open()
    assert src.read_bytes() == b"original"
