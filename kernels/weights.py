"""In-memory quantized weights as the kernels take them: tensors plus the conventions that read them."""

from dataclasses import dataclass, replace

import torch

from .packing import HIGH_FIRST, check_nibble_order
from .swizzle import SWIZZLED, check_scale_layout, swizzled_shape

NVFP4_BLOCK = 16
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
ONE_BYTE_SCALE_DTYPES = (torch.float8_e4m3fn, torch.uint8)


class WeightFormatError(ValueError):
    """A quantized weight's tensors do not fit its declared format (message says expected vs found)."""


def _expect(condition: bool, what: str, expected: str, found: str) -> None:
    if not condition:
        raise WeightFormatError(f"{what}: expected {expected}, found {found}")


@dataclass(frozen=True)
class NVFP4Weight:
    """NVFP4 weight of a Linear `[out_features, in_features]`.

    packed:       uint8 `[>= N, K/2]` two E2M1 codes per byte (rows beyond N are padding)
    block_scale:  float8_e4m3fn (or its uint8 bytes), one per 16 inputs: `[N, K/16]` when `linear`,
                  padded `[round_up(N,128), round_up(K/16,4)]` when `swizzled`
    global_scale: fp32, one element (`weight_scale_2`)
    """

    packed: torch.Tensor
    block_scale: torch.Tensor
    global_scale: torch.Tensor
    out_features: int
    in_features: int
    nibble_order: str = HIGH_FIRST
    scale_layout: str = SWIZZLED

    @property
    def shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def scale_cols(self) -> int:
        return self.in_features // NVFP4_BLOCK

    def expected_scale_shape(self) -> tuple[int, int]:
        rows, cols = self.out_features, self.scale_cols
        return swizzled_shape(rows, cols) if self.scale_layout == SWIZZLED else (rows, cols)

    def validate(self) -> "NVFP4Weight":
        """Raise WeightFormatError naming what was expected and found; return self when consistent."""
        n, k = self.shape
        check_nibble_order(self.nibble_order)
        check_scale_layout(self.scale_layout)
        _expect(k % NVFP4_BLOCK == 0, "in_features", "a multiple of 16", str(k))
        p = self.packed
        _expect(p.dtype == torch.uint8, "packed weight dtype", "uint8", str(p.dtype))
        _expect(
            p.dim() == 2 and p.shape[0] >= n and p.shape[1] * 2 >= k,
            "packed weight shape",
            f"[>= {n}, {k // 2}]",
            str(list(p.shape)),
        )
        s = self.block_scale
        _expect(s.dtype in ONE_BYTE_SCALE_DTYPES, "block scale dtype", "float8_e4m3fn", str(s.dtype))
        want = self.expected_scale_shape()
        found = tuple(s.shape)
        ok = found == want or (self.scale_layout == SWIZZLED and s.numel() == want[0] * want[1])
        _expect(ok, f"block scale shape ({self.scale_layout})", str(list(want)), str(list(found)))
        g = self.global_scale
        _expect(g.numel() == 1, "global scale (weight_scale_2) size", "1 element", f"shape {list(g.shape)}")
        _expect(g.dtype.is_floating_point, "global scale dtype", "float32", str(g.dtype))
        return self

    def to(self, device: torch.device | str) -> "NVFP4Weight":
        return replace(
            self,
            packed=self.packed.to(device),
            block_scale=self.block_scale.to(device),
            global_scale=self.global_scale.to(device),
        )


@dataclass(frozen=True)
class FP8Weight:
    """FP8 weight `[N, K]` with an optional fp32 scale: one element (per tensor) or N (per output row)."""

    data: torch.Tensor
    scale: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def in_features(self) -> int:
        return self.data.shape[1]

    @property
    def granularity(self) -> str:
        """`none` (plain fp8), `tensor` or `row`."""
        if self.scale is None:
            return "none"
        return "tensor" if self.scale.numel() == 1 else "row"

    def validate(self) -> "FP8Weight":
        d = self.data
        _expect(d.dtype in FP8_DTYPES, "fp8 weight dtype", "float8_e4m3fn or float8_e5m2", str(d.dtype))
        _expect(d.dim() == 2, "fp8 weight rank", "2-D [out, in]", str(list(d.shape)))
        if self.scale is not None:
            s = self.scale
            n = d.shape[0]
            row_shapes = ((n,), (n, 1))
            ok = s.numel() == 1 or tuple(s.shape) in row_shapes
            _expect(
                ok,
                "fp8 scale shape",
                f"[] or [1] (per tensor), [{n}] or [{n}, 1] (per row)",
                str(list(s.shape)),
            )
            _expect(s.dtype.is_floating_point, "fp8 scale dtype", "a float dtype", str(s.dtype))
        return self

    def to(self, device: torch.device | str) -> "FP8Weight":
        scale = None if self.scale is None else self.scale.to(device)
        return replace(self, data=self.data.to(device), scale=scale)
