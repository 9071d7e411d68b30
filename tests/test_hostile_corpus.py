"""The hostile corpus (`hostile_corpus.py`) on every surface: `inspect` and `inspect --json` exit with the
case's code and a message naming the file (never a traceback), `repair` and `convert` write nothing and exit
2, the loaders' gate (`classify_checkpoint(...).raise_for_problems()`, what `nodes.loader.classify` runs)
raises a CheckpointError naming the file. A disguised pickle never runs; nothing blocks on a FIFO; an ASCII
terminal gets escapes, not `UnicodeEncodeError`; memory stays bounded on a 10^12-element claim.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wan_nvfp4.checkpoint import CheckpointError, classify_checkpoint
from wan_nvfp4.cli import main

from .hostile_corpus import (
    CASES,
    EXIT_CODE,
    MANY_TENSORS,
    PICKLE_MARKER,
    UNREADABLE,
    UNUSABLE,
    build_case,
    build_corpus,
)

REPO = Path(__file__).resolve().parents[1]
IN_PROCESS = sorted(n for n in CASES if n != "fifo")  # the FIFO runs in a subprocess with a timeout
SUBPROCESS_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("hostile"))


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _digest(path: Path) -> str:
    if not path.is_file():
        return "dir" if path.is_dir() else "special"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corpus_has_40_categories_and_is_deterministic(corpus, tmp_path):
    assert len(CASES) >= 40
    assert {c.exit_code for c in CASES.values()} == {UNREADABLE, UNUSABLE}
    again = build_corpus(tmp_path / "again")
    same_bytes = [n for n in CASES if n != "pickle_disguised"]  # its payload names its own folder
    assert [_digest(again[n]) for n in same_bytes] == [_digest(corpus[n]) for n in same_bytes]


@pytest.mark.parametrize("name", IN_PROCESS)
def test_inspect_refuses_with_the_file_named(corpus, name, capsys):
    case, path = CASES[name], corpus[name]
    assert main(["inspect", str(path)]) == EXIT_CODE
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    assert case.fragment in text and str(path) in text
    if case.exit_code == UNREADABLE:
        assert out.err.startswith(f"error: {path}: ")
    else:
        assert "NOT usable (exit code 1)" in out.out

    assert main(["inspect", "--json", str(path)]) == EXIT_CODE
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is False and report["exit_code"] == EXIT_CODE
    messages = [report["error"]] if "error" in report else [p["message"] for p in report["problems"]]
    assert any(case.fragment in m and str(path) in m for m in messages), messages


@pytest.mark.parametrize("name", IN_PROCESS)
def test_repair_and_convert_write_nothing(corpus, name, tmp_path, capsys):
    path = corpus[name]
    before = _listing(path.parent)
    for command in ("repair", "convert"):
        dst = tmp_path / f"{command}.safetensors"
        assert main([command, str(path), str(dst), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: ") and "Traceback" not in err
        assert not dst.exists() and _listing(tmp_path) == []
    assert _listing(path.parent) == before


@pytest.mark.parametrize("name", IN_PROCESS)
def test_loader_gate_raises_a_checkpoint_error(corpus, name):
    """`nodes.loader.classify` is `classify_checkpoint(open_checkpoint(path))` + `raise_for_problems()`;
    the ComfyUI test runs the real node on a subset."""
    path = corpus[name]
    with pytest.raises(CheckpointError) as e:
        info = classify_checkpoint(path)
        assert CASES[name].fragment in " ".join(p.message(path) for p in info.errors)
        info.raise_for_problems()
    assert str(e.value).startswith(f"{path}: ")
    assert str(e.value).isprintable()


def test_error_messages_escape_hostile_key_names(corpus, capsys):
    path = corpus["hostile_key_names"]
    main(["inspect", str(path)])
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\u202e" not in text and "\x00" not in text
    assert "\\x1b[2Jwipe.weight, a\\u202eevil.weight, b\\x00nul.weight, ..." in text


def _driver(paths: list[Path]) -> str:
    return textwrap.dedent(
        f"""
        import json, sys
        from wan_nvfp4.cli import main
        codes = {{}}
        for path in {[str(p) for p in paths]!r}:
            codes[path] = [main(["inspect", path]), main(["inspect", "--json", path])]
        print("CODES " + json.dumps(codes))
        """
    )


def test_ascii_terminal_fifo_and_directory_in_a_subprocess(corpus, tmp_path):
    """PYTHONIOENCODING=ascii (strict): escapes, never UnicodeEncodeError; a FIFO never blocks (timeout)."""
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    accented = tmp_path / "modèle_ünïcode.safetensors"
    shutil.copy(corpus["hostile_key_names"], accented)
    names = ["surrogate_tensor_name", "surrogate_metadata_value", "hostile_key_names", "deep_nesting_50000"]
    paths = [fifo, accented, corpus["directory"], *(corpus[n] for n in names)]
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", _driver(paths)],
        capture_output=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env=env,
    )
    stdout, stderr = done.stdout.decode("ascii"), done.stderr.decode("ascii")  # ASCII only, or this raises
    assert done.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    codes = json.loads(stdout.rsplit("CODES ", 1)[1])
    assert [codes[str(p)] for p in paths] == [[EXIT_CODE, EXIT_CODE]] * len(paths)
    assert "not a regular file; expected a regular .safetensors file, found a FIFO" in stderr
    assert "mod\\xe8le_\\xfcn\\xefcode.safetensors" in stdout  # the accented name, escaped


def test_pickle_payload_is_live_and_never_ran(corpus, tmp_path):
    """Runs after every surface above: the disguised pickle's payload would have created the marker."""
    proof = build_case("pickle_disguised", tmp_path)
    subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.load(open({str(proof)!r}, 'rb'))"], check=True
    )
    assert (tmp_path / PICKLE_MARKER).exists(), "the payload must be live for this test to mean anything"
    assert not (corpus["pickle_disguised"].parent / PICKLE_MARKER).exists()


RESOURCES = """
import json, sys, time
from pathlib import Path


def peak_rss_kb():
    # VmHWM: this process's own peak (ru_maxrss would carry the forking pytest's RSS across exec)
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1])


from wan_nvfp4.cli import main
huge, many = sys.argv[1:3]
sparse = Path(sys.argv[3])
rss_before = peak_rss_kb()
codes = [main(["inspect", huge]), main(["inspect", "--json", huge])]
try:  # a real 10^12-byte tensor in a sparse file: the header is valid, nothing may read the tensor
    n = 10**6
    blob = json.dumps({"blocks.0.ffn.0.weight": {"dtype": "U8", "shape": [n, n], "data_offsets": [0, n * n]}})
    with open(sparse, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob.encode())
        f.truncate(8 + len(blob) + n * n)
    codes.append(main(["inspect", str(sparse)]))
except OSError:
    codes.append(None)  # the filesystem refuses a 1 TB sparse file
finally:
    sparse.unlink(missing_ok=True)
rss_after = peak_rss_kb()
raw = Path(many).read_bytes()
start = time.perf_counter()
json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
json_s = time.perf_counter() - start
start = time.perf_counter()
codes.append(main(["inspect", many]))
inspect_s = time.perf_counter() - start
print("RESULT " + json.dumps({"codes": codes, "rss_before_kb": rss_before, "rss_after_kb": rss_after,
                              "inspect_s": inspect_s, "json_s": json_s}))
"""


def test_memory_bound_and_many_tiny_tensors_in_a_subprocess(corpus, tmp_path):
    """Peak RSS of a whole inspect process stays below 500 MB on headers that claim 10^12 elements. The
    issue also requires 100k tiny tensors in under 10 s: that is a timed bound, so it runs in its own
    process, is printed, and is asserted generously (10 s, or 30 x a plain `json.loads` of the same header
    when a loaded machine makes even that slower)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RESOURCES,
            str(corpus["huge_tensor_claim"]),
            str(corpus["many_tiny_tensors"]),
            str(tmp_path / "sparse_1tb.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    print(f"\nhostile corpus resources: {result}")
    assert result["codes"][:2] == [EXIT_CODE, EXIT_CODE]
    assert result["codes"][2] in (1, None)  # an nvfp4-looking weight without scales: unusable, never read
    assert result["codes"][3] == 1
    assert result["rss_after_kb"] < 500 * 1024
    assert MANY_TENSORS == 100_000
    assert result["inspect_s"] < max(10.0, 30 * result["json_s"]), result


NOT_A_HEADER_CASE = {"pickle_disguised", "torch_zip_disguised", "fifo", "directory"}
STRICTER_THAN_THE_LIBRARY = {"dtype_without_torch"}  # F4 is a safetensors dtype torch has no tensor type for


HEADER_CASES = sorted(n for n, c in CASES.items() if c.exit_code == UNREADABLE and n not in NOT_A_HEADER_CASE)


@pytest.mark.parametrize("name", HEADER_CASES)
def test_the_safetensors_library_refuses_every_header_case_too(corpus, name):
    """The library's own parser is the oracle for the header rules: what it refuses we refuse (the corpus
    above), and each header case here is one it refuses as well, except where we are stricter on purpose."""
    assert _library_reads(corpus[name]) == (name in STRICTER_THAN_THE_LIBRARY)


def _library_reads(path: Path) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except SafetensorError:
        return False
    return True


def test_the_library_and_the_reader_accept_the_valid_fixtures(tmp_path):
    from safetensors import safe_open

    from wan_nvfp4.checkpoint import SafetensorsFile
    from wan_nvfp4.checkpoint.tiny.fixtures import write_fixture

    for name in ("comfy_nvfp4", "comfy_fp8", "bf16", "modelopt_nvfp4"):
        path = write_fixture(name, tmp_path)
        with safe_open(str(path), "pt") as f:
            assert sorted(f.keys()) == sorted(SafetensorsFile(path).keys())
