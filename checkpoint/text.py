"""Text taken from a file (key names, metadata values, paths), made safe to print and log.

A hostile header can name a tensor with a lone UTF-16 surrogate (`"\\ud800"` in its JSON), control characters
or bidi overrides. Printed raw, a surrogate raises `UnicodeEncodeError` on every terminal (it killed
ComfyUI's prompt worker); control characters rewrite the terminal. `printable` escapes every character that
is not printable (`str.isprintable`: surrogates, controls, format characters, separators other than the
space, unassigned code points) as `\\xNN` / `\\uNNNN` / `\\UNNNNNNNN`; printable non-ASCII text stays readable
(the CLI writes with `backslashreplace`, so an ASCII terminal gets escapes rather than an error).
"""

ELLIPSIS = "..."


def _escape(ch: str) -> str:
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escaped_line(text: str, limit: int | None) -> str:
    if limit is None:
        return text if text.isprintable() else "".join(map(_escape, text))
    pieces: list[str] = []
    used = 0
    for ch in text:  # reads at most limit + 1 characters of a long value
        pieces.append(_escape(ch))
        used += len(pieces[-1])
        if used > limit:
            break
    if used <= limit:
        return "".join(pieces)
    budget = max(limit - len(ELLIPSIS), 0)
    while pieces and used > budget:  # cut between escapes, never inside one
        used -= len(pieces.pop())
    return "".join(pieces) + ELLIPSIS


def printable(text, limit: int | None = None, keep_newlines: bool = False) -> str:
    """`text` (any object: `str()` of it) with every non-printable character escaped; newlines too unless
    `keep_newlines` (a report whose lines were built from escaped parts). With `limit`, at most that
    many characters (at least the ellipsis), ending in `...` when cut. Never raises."""
    text = str(text)
    if not keep_newlines:
        return _escaped_line(text, limit)
    lines = "\n".join(_escaped_line(line, None) for line in text.split("\n"))
    if limit is None or len(lines) <= limit:
        return lines
    return lines[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS
