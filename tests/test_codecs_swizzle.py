"""cuBLAS 128x4 block-scale swizzle against the closed-form offset and two independent implementations."""

import pytest
import torch

from wan_nvfp4 import kernels as K

# (rows, cols) of logical scale matrices: odd, tile-aligned and WAN-like
SHAPES = [(1, 1), (5, 3), (128, 4), (129, 5), (200, 7), (256, 8), (320, 17), (257, 9), (64, 16), (192, 16)]


def _round_up(v, m):
    return (v + m - 1) // m * m


def _offset_by_hand(r: int, c: int, cols: int) -> int:
    """FORMATS.md §4, written out independently of the implementation."""
    kb = (cols + 3) // 4
    return ((r // 128 * kb + c // 4) * 32 + r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4


def _scales(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 255, (rows, cols), generator=g, dtype=torch.int32).to(torch.uint8)


@pytest.mark.parametrize(("rows", "cols"), SHAPES, ids=lambda v: str(v))
def test_to_blocked_places_every_element_at_the_closed_form_offset(rows, cols):
    s = _scales(rows, cols)
    buf = K.to_blocked(s)
    assert tuple(buf.shape) == (_round_up(rows, 128), _round_up(cols, 4))
    flat = buf.reshape(-1)
    placed = torch.zeros_like(flat, dtype=torch.bool)
    for r in range(rows):
        for c in range(cols):
            off = _offset_by_hand(r, c, cols)
            assert flat[off] == s[r, c], (r, c, off)
            placed[off] = True
    assert (flat[~placed] == 0).all()  # padding is zero


@pytest.mark.parametrize(("rows", "cols"), SHAPES, ids=lambda v: str(v))
def test_swizzle_offset_function_matches_the_hand_formula(rows, cols):
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    got = K.swizzle_offset(r, c, cols)
    want = torch.tensor([[_offset_by_hand(i, j, cols) for j in range(cols)] for i in range(rows)])
    assert torch.equal(got, want)


@pytest.mark.parametrize(("rows", "cols"), SHAPES, ids=lambda v: str(v))
def test_from_blocked_inverts_to_blocked(rows, cols):
    s = _scales(rows, cols, seed=1).view(torch.float8_e4m3fn)
    back = K.from_blocked(K.to_blocked(s), rows, cols)
    assert back.dtype == torch.float8_e4m3fn
    assert torch.equal(back.view(torch.uint8), s.view(torch.uint8))


@pytest.mark.parametrize(("rows", "cols"), [*SHAPES, (5120, 320)], ids=lambda v: str(v))
def test_to_blocked_matches_comfy_kitchen_and_torchao(rows, cols):
    ck_utils = pytest.importorskip("comfy_kitchen.float_utils")
    ao_utils = pytest.importorskip("torchao.prototype.mx_formats.utils")
    s = _scales(rows, cols, seed=2)
    ours = K.to_blocked(s)
    assert torch.equal(ours.reshape(-1), ck_utils.to_blocked(s, flatten=True).reshape(-1))
    assert torch.equal(ours.reshape(-1), ao_utils.to_blocked(s).reshape(-1))
    assert torch.equal(K.from_blocked(ours, rows, cols), ck_utils.from_blocked(ours, rows, cols))


def test_from_blocked_refuses_a_buffer_of_the_wrong_size():
    with pytest.raises(ValueError, match="expected 128x8"):
        K.from_blocked(torch.zeros(64, 5, dtype=torch.uint8), 64, 5)


def test_swizzled_shape_of_wan_head_reveals_the_layout():
    # head.head of a 16-channel WAN model: N = 64 -> 128 scale rows; TI2V-5B: N = 192 -> 256
    assert K.swizzled_shape(64, 5120 // 16) == (128, 320)
    assert K.swizzled_shape(192, 3072 // 16) == (256, 192)
    # every other WAN Linear: identical shapes in both layouts (FORMATS.md §5)
    for n, k in [(5120, 5120), (13824, 5120), (5120, 13824), (1536, 8960), (3072, 14336), (30720, 5120)]:
        assert K.swizzled_shape(n, k // 16) == (n, k // 16)
