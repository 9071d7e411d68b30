"""Packing two 4-bit codes per byte, in either nibble order.

low_first  (NVIDIA/ModelOpt/torchao/Triton): byte = q[2j] | q[2j+1] << 4
high_first (ComfyUI / comfy-kitchen):        byte = q[2j] << 4 | q[2j+1]
"""

import torch

LOW_FIRST = "low_first"
HIGH_FIRST = "high_first"
NIBBLE_ORDERS = (LOW_FIRST, HIGH_FIRST)

# nibble order -> (shift of the even element, shift of the odd element)
_SHIFTS = {LOW_FIRST: (0, 4), HIGH_FIRST: (4, 0)}


def check_nibble_order(order: str) -> str:
    if order not in _SHIFTS:
        raise ValueError(f"nibble order must be one of {NIBBLE_ORDERS}, got {order!r}")
    return order


def pack_nibbles(codes: torch.Tensor, order: str) -> torch.Tensor:
    """Pack uint8 codes `[..., K]` (K even, values < 16) into bytes `[..., K/2]`."""
    even_shift, odd_shift = _SHIFTS[check_nibble_order(order)]
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles: last dimension must be even, got {codes.shape[-1]}")
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] << even_shift) | (codes[..., 1::2] << odd_shift)


def unpack_nibbles(packed: torch.Tensor, order: str) -> torch.Tensor:
    """Unpack bytes `[..., K/2]` into codes `[..., K]` (uint8, values 0..15)."""
    even_shift, odd_shift = _SHIFTS[check_nibble_order(order)]
    packed = packed.view(torch.uint8) if packed.dtype != torch.uint8 else packed
    even = (packed >> even_shift) & 0x0F
    odd = (packed >> odd_shift) & 0x0F
    return torch.stack((even, odd), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def swap_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Convert between the two nibble orders (lossless; its own inverse)."""
    return (packed << 4) | (packed >> 4)
