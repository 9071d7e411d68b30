"""Per-model kernel settings and the once-per-model log of which paths ran."""

import logging
from collections import Counter
from dataclasses import dataclass

import torch

from . import selfcheck
from .dispatch import AUTO, PATHS

LOG = logging.getLogger("wan_nvfp4.kernels")

COMPUTE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class KernelOptions:
    """How one model runs its quantized linears (one instance per model; nothing shared between models).

    path:          `auto` or a forced path (`reference`, `torch`, `triton-dequant`, `triton-fused`,
                   `fp8-scaled-mm`); a forced path that cannot run raises PathUnavailableError
    compute_dtype: dtype the matmul runs in (None: the activation's dtype); outputs keep x's dtype
    fp8_fast:      let `auto` use FP8 activations x FP8 weights (`torch._scaled_mm`, sm_89+): faster, lossy
    fused_max_m:   override the M threshold below which `auto` prefers the fused kernel (None: FUSED_MAX_M)
    """

    path: str = AUTO
    compute_dtype: torch.dtype | None = None
    fp8_fast: bool = False
    fused_max_m: int | None = None

    def __post_init__(self):
        if self.path != AUTO and self.path not in PATHS:
            raise ValueError(f"kernel path must be one of {(AUTO, *PATHS)}, got {self.path!r}")
        if self.compute_dtype is not None and self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"compute_dtype must be one of {COMPUTE_DTYPES} or None, not {self.compute_dtype}"
            )
        if self.fused_max_m is not None and self.fused_max_m < 0:
            raise ValueError(f"fused_max_m must be >= 0, got {self.fused_max_m}")


DEFAULT_OPTIONS = KernelOptions()


class PathLog:
    """Collects which path each layer ran and logs one summary line per model, not per call.

    `record(layer, fmt, path)` is cheap after the first call per (layer, path). The summary
    ("<name>: float: 12 layers (torch), nvfp4: 400 layers (triton-dequant)") is logged once every
    expected layer has been seen, and again only if a layer later takes a path it had not taken before
    (e.g. the first small-M call that runs the fused kernel) or a kernel self-check ran since (its result is
    part of the line: `...; self-check: triton-dequant ok on cuda:0 (1 variant)`). Does nothing while
    torch.compile traces.
    """

    def __init__(self, name: str, expected_layers: int, logger: logging.Logger = LOG):
        self.name = name
        self.expected_layers = expected_layers
        self.logger = logger
        self._seen: set[tuple[str, str]] = set()
        self._checks = 0  # selfcheck.generation() when the last line was logged
        self._layers: dict[str, tuple[str, set[str]]] = {}
        self.lines: list[str] = []

    def record(self, layer: str, fmt: str, path: str) -> None:
        if torch.compiler.is_compiling():
            return
        if (layer, path) in self._seen:
            if self.lines and self._checks != selfcheck.generation():
                self._emit()  # a self-check ran since the last line (e.g. the first small-M call)
            return
        self._seen.add((layer, path))
        fmt_paths = self._layers.setdefault(layer, (fmt, set()))
        fmt_paths[1].add(path)
        if len(self._layers) >= self.expected_layers:
            self._emit()

    def summary(self) -> str:
        """`nvfp4: 400 layers (triton-dequant), fp8: 80 layers (torch)`; a layer that ran several paths
        counts under their `+`-joined names (`triton-dequant+triton-fused`)."""
        counts: dict[str, Counter] = {}
        for fmt, paths in self._layers.values():
            counts.setdefault(fmt, Counter())["+".join(sorted(paths))] += 1
        return ", ".join(
            f"{fmt}: " + ", ".join(f"{n} layer{'s' * (n != 1)} ({p})" for p, n in sorted(counts[fmt].items()))
            for fmt in sorted(counts)
        )

    def flush(self) -> None:
        """Log the summary now if it changed since the last line (e.g. some layers never ran)."""
        if self._layers and (not self.lines or self.lines[-1] != self._line()):
            self._emit()

    def _line(self) -> str:
        checks = selfcheck.summary()
        return f"{self.name}: {self.summary()}" + (f"; self-check: {checks}" if checks else "")

    def _emit(self) -> None:
        line = self._line()
        self._checks = selfcheck.generation()
        self.lines.append(line)
        self.logger.info("kernel paths %s", line)
