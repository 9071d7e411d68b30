"""convert / repair on the command line: write failures end with `error: <file>: ...` and exit 2, never a
traceback, and leave nothing at the destination."""

import errno
import os

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES
from wan_nvfp4.checkpoint.writing import writer as W
from wan_nvfp4.cli import main


def test_disk_full_exits_2_with_the_destination_named(tmp_path, monkeypatch, capsys):
    src = FIXTURES["bf16"]().write(tmp_path / "s")
    dst = tmp_path / "o.safetensors"
    real = os.pwrite

    def pwrite(fd, data, offset):  # the header fits, the first tensor hits a full disk
        if offset:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(W.os, "pwrite", pwrite)
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {dst}") and "No space left on device" in err
    assert not dst.exists() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_folder_destination_exits_2_before_converting(tmp_path, capsys):
    src = FIXTURES["modelopt_nvfp4"]().write(tmp_path / "s")
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["repair", str(src), str(folder), "--overwrite", "--no-progress"]) == 2
    assert "is a folder" in capsys.readouterr().err and folder.is_dir()
