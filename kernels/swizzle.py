"""cuBLAS "1D block scaling factors" layout: 128x4 tiles of block scales, zero padded.

Logical scales `[R, C]` live in a buffer `[round_up(R, 128), round_up(C, 4)]`; element (r, c) is at byte

    ((r // 128 * KB + c // 4) * 32 + r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4,   KB = ceil(C / 4)
"""

import torch

LINEAR = "linear"
SWIZZLED = "swizzled"
SCALE_LAYOUTS = (LINEAR, SWIZZLED)

TILE_ROWS = 128
TILE_COLS = 4


def check_scale_layout(layout: str) -> str:
    if layout not in SCALE_LAYOUTS:
        raise ValueError(f"scale layout must be one of {SCALE_LAYOUTS}, got {layout!r}")
    return layout


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def swizzled_shape(rows: int, cols: int) -> tuple[int, int]:
    """Shape of the padded swizzled buffer that holds a `[rows, cols]` scale matrix."""
    return round_up(rows, TILE_ROWS), round_up(cols, TILE_COLS)


def swizzle_offset(r: torch.Tensor, c: torch.Tensor, cols: int) -> torch.Tensor:
    """Flat byte offset of logical element (r, c) in the swizzled buffer (closed form)."""
    col_tiles = (cols + TILE_COLS - 1) // TILE_COLS
    return ((r // 128 * col_tiles + c // 4) * 32 + r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """View one-byte dtypes (fp8, int8) as uint8 so padding and permutes work on raw bytes."""
    return t.view(torch.uint8) if t.dtype.itemsize == 1 and t.dtype != torch.uint8 else t


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """Swizzle a row-major `[R, C]` scale matrix into the padded `[round128(R), round4(C)]` buffer."""
    rows, cols = scales.shape
    rows_p, cols_p = swizzled_shape(rows, cols)
    raw = _as_bytes(scales)
    padded = raw.new_zeros((rows_p, cols_p))
    padded[:rows, :cols] = raw
    tiles = padded.reshape(rows_p // 128, 4, 32, cols_p // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(rows_p, cols_p).view(scales.dtype)


def from_blocked(buffer: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of `to_blocked`: read the logical `[rows, cols]` matrix out of a swizzled buffer."""
    rows_p, cols_p = swizzled_shape(rows, cols)
    if buffer.numel() != rows_p * cols_p:
        raise ValueError(
            f"swizzled scale buffer has {buffer.numel()} elements, expected {rows_p}x{cols_p}"
            f" for a {rows}x{cols} scale matrix"
        )
    raw = _as_bytes(buffer)
    tiles = raw.reshape(rows_p // 128, cols_p // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(rows_p, cols_p)[:rows, :cols].contiguous().view(buffer.dtype)
