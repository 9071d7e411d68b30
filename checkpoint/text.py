"""Text taken from a file (key names, metadata values, paths), made safe to print and log.

A hostile header can name a tensor with a lone UTF-16 surrogate (`"\\ud800"` in its JSON), control characters
or bidi overrides. Printed raw, a surrogate raises `UnicodeEncodeError` on every terminal (it killed
ComfyUI's prompt worker); control characters rewrite the terminal. `printable` escapes every character that
is not printable (`str.isprintable`: surrogates, controls, format characters, unassigned code points) as
`\\xNN` / `\\uNNNN` / `\\UNNNNNNNN`; printable non-ASCII text stays readable (the CLI writes with
`backslashreplace`, so an ASCII terminal gets escapes rather than an error).
"""


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text, keep_newlines: bool = False) -> str:
    """`text` (any object: `str()` of it) with every non-printable character escaped; newlines too unless
    `keep_newlines` (a multi-line report whose lines were built from escaped parts)."""
    text = str(text)
    if text.isprintable():
        return text
    if not keep_newlines:
        return "".join(c if c.isprintable() else _escape(c) for c in text)
    return "\n".join(
        line if line.isprintable() else "".join(c if c.isprintable() else _escape(c) for c in line)
        for line in text.split("\n")
    )
