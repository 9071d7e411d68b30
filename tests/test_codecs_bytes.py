"""E2M1 codes and nibble packing against hand-computed values (FORMATS.md §2-§3)."""

import pytest
import torch

from wan_nvfp4 import kernels as K

# FORMATS.md §2 table, written out by hand
E2M1_TABLE = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]


def test_decode_matches_the_hand_table():
    codes = torch.arange(16, dtype=torch.uint8)
    values = K.e2m1_decode(codes)
    assert values.tolist() == E2M1_TABLE
    assert torch.signbit(values[8])  # code 8 is -0


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0.25, 0),  # tie 0 | 0.5 -> even (0)
        (0.26, 1),
        (0.75, 2),  # tie 0.5 | 1 -> even (1.0)
        (1.25, 2),  # tie 1 | 1.5 -> even (1.0)
        (1.75, 4),  # tie 1.5 | 2 -> even (2.0)
        (2.5, 4),  # tie 2 | 3 -> 2
        (3.5, 6),  # tie 3 | 4 -> 4
        (5.0, 6),  # tie 4 | 6 -> 4
        (5.01, 7),
        (100.0, 7),  # saturates at 6
        (-0.75, 10),
        (-100.0, 15),
        (-0.1, 8),  # small negatives keep their sign: -0
    ],
)
def test_encode_rounds_to_nearest_even_and_saturates(value, code):
    assert K.e2m1_encode(torch.tensor([value])).item() == code


def test_encode_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        K.e2m1_encode(torch.tensor([float("nan")]))


def test_encode_decode_round_trip_on_every_code():
    codes = torch.arange(16, dtype=torch.uint8)
    again = K.e2m1_encode(K.e2m1_decode(codes))
    assert again.tolist() == codes.tolist()


@pytest.mark.parametrize(
    ("order", "byte"),
    [(K.LOW_FIRST, 0xBA), (K.HIGH_FIRST, 0xAB)],
)
def test_pack_hand_computed_byte(order, byte):
    # codes (0xA, 0xB): low-first puts the even element in the low nibble (FORMATS.md §3)
    packed = K.pack_nibbles(torch.tensor([[0xA, 0xB]], dtype=torch.uint8), order)
    assert packed.tolist() == [[byte]]
    assert K.unpack_nibbles(packed, order).tolist() == [[0xA, 0xB]]


def test_pack_row_of_hand_computed_bytes_both_orders():
    codes = torch.tensor([[1, 2, 3, 4, 15, 0, 7, 9]], dtype=torch.uint8)
    assert K.pack_nibbles(codes, K.LOW_FIRST).tolist() == [[0x21, 0x43, 0x0F, 0x97]]
    assert K.pack_nibbles(codes, K.HIGH_FIRST).tolist() == [[0x12, 0x34, 0xF0, 0x79]]


def test_swap_nibbles_converts_between_orders_on_all_bytes():
    codes = torch.stack(torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij"), -1).reshape(1, -1)
    codes = codes.to(torch.uint8)
    lo, hi = K.pack_nibbles(codes, K.LOW_FIRST), K.pack_nibbles(codes, K.HIGH_FIRST)
    assert torch.equal(K.swap_nibbles(lo), hi)
    assert torch.equal(K.swap_nibbles(hi), lo)
    assert len(set(lo.flatten().tolist())) == 256  # every byte value exercised


def test_swap_nibbles_matches_comfy_kitchen():
    ck = pytest.importorskip("comfy_kitchen")
    b = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    assert torch.equal(ck.swap_nibbles(b), K.swap_nibbles(b))


def test_unknown_nibble_order_is_refused():
    with pytest.raises(ValueError, match="nibble order"):
        K.pack_nibbles(torch.zeros(1, 2, dtype=torch.uint8), "middle_first")
