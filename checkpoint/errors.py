"""Errors about a checkpoint that name the file, the layer, what was expected and what was found."""

import unicodedata
from pathlib import Path

ELLIPSIS = "..."
# shown escaped: controls, surrogates (JSON "\\udXXX" escapes), format (bidi), separators, unassigned
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Cf", "Zl", "Zp", "Co", "Cn"})


def _escape(ch: str) -> str:
    if ch == " ":
        return ch
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES and not ch.isspace():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, limit: int | None = None) -> str:
    """`text` from a file, safe to print or show: control, surrogate, bidi/format and other invisible
    characters escaped (`\\x1b`, `\\ud800`, `\\u202e`); with `limit`, at most that many characters, cut
    between escapes and ending in `...`. Never raises on any str; reads at most `limit` + 1 characters."""
    pieces: list[str] = []
    used = 0
    for ch in str(text):
        piece = _escape(ch)
        pieces.append(piece)
        used += len(piece)
        if limit is not None and used > limit:
            break
    if limit is None or used <= limit:
        return "".join(pieces)
    budget = max(limit - len(ELLIPSIS), 0)
    while pieces and used > budget:
        used -= len(pieces.pop())
    return "".join(pieces) + ELLIPSIS


class CheckpointError(ValueError):
    """A checkpoint cannot be read or used as asked. `str()` is the full user-facing message."""

    def __init__(
        self,
        path: str | Path | None,
        problem: str,
        layer: str | None = None,
        expected: str | None = None,
        found: str | None = None,
        hint: str | None = None,
        kind: str = "layer",
    ):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.layer = layer
        self.expected = expected
        self.found = found
        self.hint = hint
        self.kind = kind
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [f"{self.path or '<state dict>'}"]
        if self.layer:
            parts.append(f"{self.kind} {self.layer}")
        text = ": ".join(parts) + f": {self.problem}"
        if self.expected is not None:
            text += f"; expected {self.expected}"
        if self.found is not None:
            text += f", found {self.found}"
        if self.hint:
            text += f". {self.hint}"
        return text


class PickleCheckpointError(CheckpointError):
    """The file is a pickle / torch.save archive: refused, never unpickled."""
