"""Problems found in a checkpoint: each names the layer (or tensor), what was expected and what was found."""

from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

ERROR = "error"  # the layer (or file) cannot be used as it is
WARNING = "warning"  # usable, but suspicious or ignored by some loader


@dataclass(frozen=True)
class Problem:
    severity: str
    problem: str
    layer: str | None = None
    expected: str | None = None
    found: str | None = None
    hint: str | None = None
    kind: str = "layer"

    def to_error(self, path: str | Path | None) -> CheckpointError:
        return CheckpointError(
            path, self.problem, self.layer, self.expected, self.found, self.hint, self.kind
        )

    def message(self, path: str | Path | None) -> str:
        """The full sentence: `<file>: layer <name>: <problem>; expected <x>, found <y>. <hint>`."""
        return str(self.to_error(path))

    def to_json(self, path: str | Path | None) -> dict:
        return {
            "severity": self.severity,
            "layer": self.layer,
            "problem": self.problem,
            "expected": self.expected,
            "found": self.found,
            "hint": self.hint,
            "message": self.message(path),
        }
