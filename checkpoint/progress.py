"""Progress reporting for long file jobs: tqdm when installed, else a plain line on stderr.

A job calls `progress(done_bytes, total_bytes, label)`; the ComfyUI node passes its own callback that
drives `comfy.utils.ProgressBar`.
"""

import sys
import time
from collections.abc import Callable

ProgressCallback = Callable[[int, int, str], None]


def no_progress(done: int, total: int, label: str) -> None:
    """A callback that reports nothing."""


class TextProgress:
    """Progress in MB on stderr: a tqdm bar when tqdm is importable, else a line every few seconds."""

    def __init__(self, description: str, stream=None, interval_s: float = 2.0):
        self.description = description
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._bar = None
        self._last = 0.0
        self._tqdm = None
        try:
            from tqdm import tqdm

            self._tqdm = tqdm
        except ImportError:
            pass

    def __call__(self, done: int, total: int, label: str) -> None:
        if self._tqdm is not None:
            if self._bar is None:
                self._bar = self._tqdm(
                    total=total, unit="B", unit_scale=True, desc=self.description, file=self.stream
                )
            self._bar.update(done - self._bar.n)
            if done >= total:
                self.close()
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s or done >= total:
            self._last = now
            pct = 100.0 * done / total if total else 100.0
            print(
                f"{self.description}: {pct:5.1f}% ({done / 1e6:.0f}/{total / 1e6:.0f} MB) {label}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
