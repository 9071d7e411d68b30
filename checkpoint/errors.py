"""Errors about a checkpoint that name the file, the layer, what was expected and what was found."""

from pathlib import Path

from .text import printable


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
        """Every part may come from a file (key names, metadata): escaped by `text.printable`."""
        return printable(self._raw_message())

    def _raw_message(self) -> str:
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
