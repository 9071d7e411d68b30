"""Command line: `inspect FILE --reference OTHER`, `convert`, `repair` (exit codes, printed report, JSON)."""

import json

from wan_nvfp4.checkpoint.tiny.fixtures import FIXTURES
from wan_nvfp4.cli import main


def test_inspect_with_reference_decides_and_reports(tmp_path, capsys):
    path = FIXTURES["modelopt_nvfp4_stripped"]().write(tmp_path / "f")
    ref = FIXTURES["bf16"]().write(tmp_path / "r")
    assert main(["inspect", str(path), "--reference", str(ref), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    check = data["reference_check"]
    assert check["decided"] and (check["nibble_order"], check["scale_layout"]) == ("low_first", "linear")
    assert check["agrees_with_file"] is False  # the file alone would be read high_first + swizzled
    layer = data["layers"]["blocks.0.ffn.0"]
    assert (layer["nibble_order"], layer["scale_layout"], layer["assumed"]) == ("low_first", "linear", False)
    assert main(["inspect", str(path), "--reference", str(ref)]) == 0
    text = capsys.readouterr().out
    assert "reference check: decided low_first + linear" in text and "CONTRADICTS" in text


def test_inspect_with_unrelated_reference_says_inconclusive(tmp_path, capsys):
    path = FIXTURES["user_replica"]().write(tmp_path / "f")
    other = FIXTURES["bf16"](seed=5).write(tmp_path / "r")
    main(["inspect", str(path), "--reference", str(other), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["reference_check"]["nibble_order"] == "inconclusive"
    assert data["layers"]["blocks.0.ffn.0"]["assumed"] is True  # nothing decided: still an assumption


def test_convert_and_repair_commands(tmp_path, capsys):
    src = FIXTURES["bf16"]().write(tmp_path / "s")
    dst = tmp_path / "o.safetensors"
    assert (
        main(["convert", str(src), str(dst), "--to", "fp8", "--no-progress", "--keep-last-blocks", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "blocks.0.ffn.0" in out and "quantized" in out and "loads natively" in out
    report = json.loads((tmp_path / "o.convert-report.json").read_text())
    assert report["summary"]["layers"] == {"quantized": 10, "kept": 16}
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    foreign = FIXTURES["modelopt_nvfp4_stripped"]().write(tmp_path / "m")
    fixed = tmp_path / "fixed.safetensors"
    args = ["repair", str(foreign), str(fixed), "--reference", str(src), "--no-progress", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "decided low_first + linear" in out and "rewritten" in out
    assert main(["repair", str(foreign), str(foreign), "--overwrite", "--no-progress"]) == 2
    assert "same file" in capsys.readouterr().err
