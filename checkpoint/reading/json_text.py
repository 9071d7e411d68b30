"""JSON from a file (header, metadata values, `.comfy_quant` tensors) parsed as strictly as the safetensors
library parses its header (serde_json): nesting deeper than 127 levels, NaN/Infinity literals, lone UTF-16
surrogates and duplicate object keys are refused, and nothing raises anything but `json.JSONDecodeError`
(Python's own parser raises `RecursionError` on deep nesting and a bare `ValueError` on huge integers).
"""

import json
import re

MAX_DEPTH = 127  # serde_json's recursion limit (128) refuses a 128th nested container
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JSONTextError(json.JSONDecodeError):
    """A refusal found after parsing (no position to report): `str()` is the message alone."""

    def __str__(self) -> str:
        return self.msg


def _error(message: str) -> json.JSONDecodeError:
    return JSONTextError(message, "", 0)


def _no_constant(name: str):
    raise _error(f"{name} is not JSON")


def _unique(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _error(f"duplicate key {dup!r}")
    return out


def check_nesting(value, depth: int = 1, check_depth: bool = True, check_surrogates: bool = False) -> None:
    """Iterative walk of `value` (itself at nesting level `depth`): no container deeper than MAX_DEPTH, and
    with `check_surrogates` no string with a lone surrogate (serde refuses both)."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if check_depth and level > MAX_DEPTH:
                raise _error(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                if check_surrogates:
                    for key in item:
                        _check_string(key)
                item = item.values()
            stack.extend((v, level + 1) for v in item if isinstance(v, (dict, list, str)))
        elif check_surrogates and isinstance(item, str):
            _check_string(item)


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _error(f"string with a lone UTF-16 surrogate: {ascii(text)[:80]}") from None


def load_json(text: str | bytes, check_depth: bool = True):
    """Parse `text` (bytes are decoded as strict UTF-8); raises `json.JSONDecodeError` on anything invalid.

    `check_depth=False`: the caller checks the nesting of the parts whose shape it does not validate itself
    (`check_nesting`; the safetensors header: only unknown fields can nest), which saves a walk of a
    100,000-entry header. Nesting beyond Python's own limit is refused either way."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _error(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except RecursionError:
        raise _error(f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # e.g. an integer with more digits than int() accepts
        raise _error(str(e)) from None
    surrogates = bool(_SURROGATE_ESCAPE.search(text))
    if check_depth or surrogates:
        check_nesting(value, check_depth=check_depth, check_surrogates=surrogates)
    return value
