"""Which Linear layers a conversion quantizes: presets as tables of (pattern, reason) keep-rules.

Layer names are WAN names without any key prefix (`blocks.3.ffn.0`). A layer is quantized when no keep-rule
matches, its weight is 2-D, and (for NVFP4) its in_features is a multiple of 16.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

NVFP4_TARGET = "nvfp4"
FP8_TARGET = "fp8"
TARGETS = (NVFP4_TARGET, FP8_TARGET)

# (regex on the layer name, why it stays in high precision)
WAN_KEEP_RULES: tuple[tuple[str, str], ...] = (
    (r"^patch_embedding", "patch embedding"),
    (r"^text_embedding\.", "text embedding"),
    (r"^time_embedding\.", "time embedding"),
    (r"^time_projection\.", "time projection (runs per token in fp32 in WAN 2.2)"),
    (r"^head\.", "output head"),
    (r"modulation", "modulation"),
    (r"(^|\.)norm", "norm"),
    (r"^img_emb\.", "CLIP image embedding (img_emb)"),
    (r"^vace_", "VACE adapter"),
    (r"^control_adapter\.", "camera adapter"),
    (r"^(?!blocks\.\d+\.)", "outside the transformer blocks (adapter or extra module)"),
)

PRESETS: dict[str, tuple[tuple[str, str], ...]] = {
    "wan": WAN_KEEP_RULES,
    "all": (),
}

BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class PresetOptions:
    """What to keep in high precision. `keep` adds user regexes (matched with `re.search`)."""

    preset: str = "wan"
    keep_first_blocks: int = 0
    keep_last_blocks: int = 0
    keep: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"preset {self.preset}"]
        if self.keep_first_blocks:
            parts.append(f"keep first {self.keep_first_blocks} blocks")
        if self.keep_last_blocks:
            parts.append(f"keep last {self.keep_last_blocks} blocks")
        parts += [f"keep /{k}/" for k in self.keep]
        return ", ".join(parts)


@dataclass(frozen=True)
class Decision:
    quantize: bool
    reason: str


class LayerSelector:
    """Decides per Linear layer whether the conversion quantizes it, and says why."""

    def __init__(self, options: PresetOptions, layer_names: Iterable[str]):
        if options.preset not in PRESETS:
            raise ValueError(f"unknown preset {options.preset!r}; known: {', '.join(PRESETS)}")
        if options.keep_first_blocks < 0 or options.keep_last_blocks < 0:
            raise ValueError("keep_first_blocks / keep_last_blocks must be >= 0")
        self.options = options
        self.rules = [(re.compile(p), why) for p, why in PRESETS[options.preset]]
        for pattern in options.keep:
            try:
                self.rules.append((re.compile(pattern), f"matches --keep {pattern}"))
            except re.error as e:
                raise ValueError(f"--keep {pattern!r} is not a valid regular expression ({e})") from e
        indices = [int(m.group(1)) for n in layer_names if (m := BLOCK_INDEX.match(n))]
        self.num_blocks = max(indices) + 1 if indices else 0

    def _block_rule(self, name: str) -> str | None:
        m = BLOCK_INDEX.match(name)
        if not m:
            return None
        i = int(m.group(1))
        if i < self.options.keep_first_blocks:
            return f"block {i} is among the first {self.options.keep_first_blocks} kept"
        if i >= self.num_blocks - self.options.keep_last_blocks:
            return f"block {i} is among the last {self.options.keep_last_blocks} kept"
        return None

    def decide(self, name: str, shape: tuple[int, ...], target: str) -> Decision:
        if target not in TARGETS:
            raise ValueError(f"target format must be one of {TARGETS}, got {target!r}")
        if len(shape) != 2:
            return Decision(False, f"not a 2-D weight (shape {list(shape)})")
        for rx, why in self.rules:
            if rx.search(name):
                return Decision(False, why)
        block_reason = self._block_rule(name)
        if block_reason:
            return Decision(False, block_reason)
        if target == NVFP4_TARGET and shape[1] % 16:
            return Decision(False, f"in_features {shape[1]} is not a multiple of 16")
        return Decision(True, f"quantized to {target}")
