"""E2M1 (FP4) codes: decode table and round-to-nearest-even encoder saturating at ±6."""

import torch

FP4_MAX = 6.0

# code -> value for the 16 codes `s e1 e0 m` (exponent bias 1, no Inf/NaN).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

# Magnitude thresholds between neighbouring codes. A tie goes to the even code (mantissa bit 0):
# `strict=True` means the magnitude must exceed the midpoint to round up, `False` means reaching it does.
_ROUND_UP_AT = (
    (0.25, True),  # 0 | 0.5: tie -> 0
    (0.75, False),  # 0.5 | 1: tie -> 1
    (1.25, True),  # 1 | 1.5: tie -> 1
    (1.75, False),  # 1.5 | 2: tie -> 2
    (2.5, True),  # 2 | 3: tie -> 2
    (3.5, False),  # 3 | 4: tie -> 4
    (5.0, True),  # 4 | 6: tie -> 4
)

_LUT_CACHE: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def e2m1_table(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 16 E2M1 values as a tensor (cached per device and dtype)."""
    key = (torch.device(device), dtype)
    if key not in _LUT_CACHE:
        _LUT_CACHE[key] = torch.tensor(E2M1_VALUES, dtype=dtype, device=device)
    return _LUT_CACHE[key]


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map 4-bit codes (uint8 values 0..15) to their E2M1 values."""
    return e2m1_table(codes.device, dtype)[codes.long()]


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round values to the nearest E2M1 code (ties to even, saturating at ±6); returns uint8 codes 0..15.

    The sign bit follows the sign of the input, so small negatives give -0 (code 8), as torchao does.
    """
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError("e2m1_encode: input contains NaN; FP4 has no NaN encoding")
    mag = x.abs().float()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for threshold, strict in _ROUND_UP_AT:
        code += (mag > threshold) if strict else (mag >= threshold)
    return code | (torch.signbit(x).to(torch.uint8) << 3)
