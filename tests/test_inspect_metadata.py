"""The inspector lists the file's own `__metadata__`: every key with size and an escaped, truncated preview,
which keys were used as evidence, and weak hints that never change a decision."""

import json
import struct
import unicodedata

import pytest

from wan_nvfp4.checkpoint.conventions.inspect import inspect_checkpoint
from wan_nvfp4.checkpoint.conventions.metadata import KEY_CHARS, PACK_KEY, PREVIEW_CHARS
from wan_nvfp4.checkpoint.text import printable
from wan_nvfp4.checkpoint.tiny import fixtures as F
from wan_nvfp4.cli import main

WITH_METADATA = [name for name, make in F.FIXTURES.items() if make().metadata]
WITHOUT_METADATA = ["user_replica", "modelopt_nvfp4_stripped", "kijai_fp8"]
# fixture -> the header key its convention decides from (FORMATS.md §5)
EVIDENCE_KEYS = {
    "comfy_nvfp4": {"_quantization_metadata"},
    "modelopt_nvfp4": {"quantization_config"},
    "modelopt_comfy_single_file": {"_quantization_metadata", "quantization_config"},
}
ISSUE_2_KEYS = ("file", "variant", "variant_info", "provenance", "evidence", "census", "formats", "layers")
ISSUE_2_KEYS += ("problems", "verdicts", "usable", "exit_code")
HOSTILE = {
    "escape\x1b]0;pwned\x07key": "clear\x1b[2J\x1b[31mred\x00nul\rcr\nnl",
    "surrogate": "lone \ud800 and \udfff halves",
    "bidi": "abc\u202edcba\u2066x\u2069 zero\u200bwidth",
    "huge": "y" * 1_000_000,
    "notes": "converted with comfy-kitchen 0.2.40",
}


def _listing(fx) -> tuple[dict, str]:
    report = inspect_checkpoint(fx.source(), sidecar_config=fx.sidecar_config, scan_block_scales=False)
    return report.to_json(), report.to_text()


@pytest.mark.parametrize("name", WITH_METADATA)
def test_every_metadata_key_is_listed_text_and_json(name):
    fx = F.FIXTURES[name]()
    data, text = _listing(fx)
    keys = data["header_metadata"]["keys"]
    assert [k["key"] for k in keys] == list(fx.metadata), "every key, in file order"
    for entry, (key, value) in zip(keys, fx.metadata.items(), strict=True):
        assert entry["bytes"] == len(value.encode()) and entry["chars"] == len(value)
        assert entry["truncated"] == (len(value) > PREVIEW_CHARS)
        assert value.startswith(entry["preview"].removesuffix("..."))
        assert f"  {key} (" in text
    assert f"Header metadata: {len(fx.metadata)} key(s)" in text
    assert "no provenance metadata" not in text and "no provenance metadata" not in data["provenance"]
    used = {k["key"] for k in keys if k["status"] == "evidence"}
    assert used == EVIDENCE_KEYS.get(name, used & {"_quantization_metadata", "quantization_config"})
    assert used, f"{name}: its metadata decides its conventions, so it must be listed as evidence"


@pytest.mark.parametrize("name", WITHOUT_METADATA)
def test_file_without_metadata_says_so(name):
    data, text = _listing(F.FIXTURES[name]())
    assert set(ISSUE_2_KEYS) <= set(data), "the JSON keys scripts already read stay"
    assert data["header_metadata"] == {"keys": [], "total_bytes": 0, "hints": []}
    assert "Header metadata: none" in text


def test_unrecognised_metadata_is_never_called_missing():
    fx = F.FIXTURES["user_replica"]()
    plain, _ = _listing(fx)
    assert plain["provenance"] == "no provenance metadata (third-party converter?)"
    workflow = '{"nodes": [{"type": "WanNVFP4Loader"}]}'
    fx.metadata = {"format": "pt", "modelspec.title": "my wan", "workflow": workflow}
    data, text = _listing(fx)
    assert "no provenance metadata" not in text
    assert data["provenance"].startswith("no recognised provenance metadata (3 other header key(s)")
    statuses = {k["key"]: k["status"] for k in data["header_metadata"]["keys"]}
    assert statuses == {"format": "not used", "modelspec.title": "not used", "workflow": "not used"}
    hints = [(h["key"], h["producer"]) for h in data["header_metadata"]["hints"]]
    assert hints == [
        ("format", "save_pretrained"),
        ("modelspec.title", "modelspec"),
        ("workflow", "comfyui-save"),
        ("workflow", "wan-nvfp4"),
    ]


def test_a_file_this_pack_converted_names_its_writer(tmp_path):
    from wan_nvfp4.checkpoint.writing.convert import ConvertOptions, convert_checkpoint
    from wan_nvfp4.checkpoint.writing.output_formats import PROVENANCE_KEY

    assert PACK_KEY == PROVENANCE_KEY
    dst = tmp_path / "converted.safetensors"
    convert_checkpoint(F.write_fixture("bf16", tmp_path), dst, ConvertOptions())
    listing = inspect_checkpoint(dst, scan_block_scales=False).to_json()["header_metadata"]
    assert {k["key"]: k["status"] for k in listing["keys"]} == {
        "_quantization_metadata": "evidence",
        PROVENANCE_KEY: "not used",
    }
    assert [(h["key"], h["producer"]) for h in listing["hints"]] == [(PROVENANCE_KEY, "wan-nvfp4")]
    preview = next(k["preview"] for k in listing["keys"] if k["key"] == PROVENANCE_KEY)
    assert preview.startswith('{"tool":"wan-nvfp4"') and '"job":"convert"' in preview


def _layer_decisions(data: dict) -> dict:
    return {
        name: (layer["nibble_order"], layer["scale_layout"], layer["assumed"], layer["evidence"])
        for name, layer in data["layers"].items()
    }


# fixture, a hinting value, the agreement the hint must report
HINT_CASES = [
    ("user_replica", "made with comfy-kitchen", "agrees with how the nvfp4 layers are read"),
    ("user_replica", "nvidia-modelopt 0.35 export", "[ASSUMED]"),
    ("user_replica", "lightx2v quant.py", "[ASSUMED]"),
    ("modelopt_nvfp4_stripped", "ModelOpt", "[ASSUMED]"),
    ("nvfp4_linear_no_metadata", "torchao NVFP4Tensor", "agrees with how the nvfp4 layers are read"),
    ("comfy_nvfp4", "exported by ModelOpt", "stronger evidence decided high_first + swizzled"),
    ("lightx2v_nvfp4", "comfy-kitchen", "stronger evidence decided low_first + swizzled"),
]


@pytest.mark.parametrize(("name", "value", "agreement"), HINT_CASES)
def test_hints_are_reported_and_never_change_a_decision(name, value, agreement):
    fx = F.FIXTURES[name]()
    before, _ = _listing(fx)
    fx.metadata = {**fx.metadata, "converter": value}
    after, text = _listing(fx)
    assert _layer_decisions(after) == _layer_decisions(before)
    assert after["verdicts"] == before["verdicts"] and after["evidence"] == before["evidence"]
    hints = [h for h in after["header_metadata"]["hints"] if h["key"] == "converter"]
    assert len(hints) == 1 and agreement in hints[0]["agreement"], hints
    assert "hints (weak: never used to decide a convention):" in text
    assert f"    - converter: {hints[0]['hint']}" in text


def _write_with_metadata(fx, folder, metadata: dict[str, str]):
    """The fixture's file with `metadata` as its header `__metadata__`, JSON-escaped as a hostile writer
    could (lone surrogates are legal `\\udXXX` escapes in the JSON text, not encodable by safetensors)."""
    path = fx.write(folder)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return path


def _assert_safe(out: str) -> None:
    out.encode("utf-8")  # no lone surrogate reaches the terminal
    bad = [c for c in out if c != "\n" and unicodedata.category(c) in ("Cc", "Cs", "Cf")]
    assert not bad, f"raw control / format characters printed: {[hex(ord(c)) for c in bad[:5]]}"


def test_hostile_metadata_is_escaped_and_truncated(tmp_path, capsys):
    """Odd but valid metadata values are listed, escaped and truncated; the file stays usable."""
    fx = F.FIXTURES["comfy_nvfp4"]()
    valid = {k: v for k, v in HOSTILE.items() if k != "surrogate"}  # a lone surrogate is not valid UTF-8
    path = _write_with_metadata(fx, tmp_path, valid)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    _assert_safe(text)
    section = text.split("Header metadata", 1)[1].split("\nLinear layers")[0]
    assert max(len(line) for line in section.splitlines()) < 300
    assert "clear\\x1b[2J\\x1b[31mred\\x00nul\\x0dcr\\x0anl" in text
    assert "abc\\u202edcba\\u2066x\\u2069 zero\\u200bwidth" in text
    assert "escape\\x1b]0;pwned\\x07key (" in text
    assert "huge (976.6 KiB) not used" in text and "y" * (PREVIEW_CHARS - 3) + "..." in text
    assert "notes: mentions comfy-kitchen" in text

    assert main(["inspect", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    _assert_safe(out)
    listing = json.loads(out)["header_metadata"]
    entries = {k["key"]: k for k in listing["keys"]}
    assert len(entries) == len(valid)
    huge = entries["huge"]
    assert (huge["bytes"], huge["chars"], huge["truncated"]) == (1_000_000, 1_000_000, True)
    assert all(len(k["preview"]) <= PREVIEW_CHARS and len(k["key"]) <= KEY_CHARS for k in listing["keys"])
    assert "escape\\x1b]0;pwned\\x07key" in entries
    assert len(out) < 50_000, "the 1 MB value is not copied into the JSON report"


@pytest.mark.parametrize(
    ("metadata", "shown"),
    [
        (
            {"surrogate": HOSTILE["surrogate"]},
            "\\ud800",
        ),  # not valid UTF-8: the safetensors format refuses it
        ({"_quantization_metadata": "\x1b[2J{not json"}, "found \\x1b[2J{not json"),
        ({"quantization_config": "\ud800\x07["}, "\\ud800"),
    ],
    ids=["lone-surrogate", "broken-comfy-metadata", "surrogate-in-modelopt-config"],
)
def test_invalid_metadata_is_an_escaped_error(tmp_path, capsys, metadata, shown):
    """Metadata the safetensors format or ComfyUI cannot read makes the file unusable, and the error shows the
    offending text escaped (no raw control character or surrogate reaches the terminal)."""
    fx = F.FIXTURES["comfy_nvfp4"]()
    path = _write_with_metadata(
        fx, tmp_path, {**HOSTILE, **metadata} if "surrogate" in metadata else metadata
    )
    assert main(["inspect", str(path)]) != 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    _assert_safe(text)
    assert path.name in text and shown in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("plain text, é 中 😀", None, "plain text, é 中 😀"),
        ("a\tb\nc\x7f\x9b", None, "a\\x09b\\x0ac\\x7f\\x9b"),
        ("\ud83d", None, "\\ud83d"),
        ("\u2028\u2029\ufeff\u00a0", None, "\\u2028\\u2029\\ufeff\\xa0"),
        ("x" * 10, 10, "x" * 10),
        ("x" * 11, 10, "x" * 7 + "..."),
        ("ab\x00\x00\x00", 9, "ab\\x00..."),
        ("ab\x00\x00\x00", 8, "ab..."),
    ],
)
def test_printable(text, limit, expected):
    assert printable(text, limit) == expected


def test_printable_bounds_every_character():
    everything = "".join(map(chr, [*range(0x3000), *range(0xD800, 0xE100), *range(0x3000, 0x110000, 17)]))
    out = printable(everything)
    out.encode("utf-8")
    assert not [c for c in out if unicodedata.category(c) in ("Cc", "Cs", "Cf", "Co", "Cn", "Zl", "Zp")]
    for limit in (0, 3, 5, 50):
        cut = printable(everything[:1000], limit)
        assert len(cut) <= max(limit, 3) and cut.endswith("...")
