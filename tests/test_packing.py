from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesquant.nn.packing import pack_bits, packed_nbytes, unpack_bits


def reference_pack(codes: list[int], bits: int) -> bytes:
    """Little-endian bit stream, the slow obvious way: code i at bits [i·b, (i+1)·b)."""
    value = sum(c << (i * bits) for i, c in enumerate(codes))
    return value.to_bytes((len(codes) * bits + 7) // 8, "little")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, 2**b - 1), max_size=67))))
def test_round_trip_and_layout_for_every_width(case):
    bits, codes = case
    t = torch.tensor(codes, dtype=torch.int64)
    packed = pack_bits(t, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == (len(codes) * bits + 7) // 8 == packed_nbytes(len(codes), bits)
    assert bytes(packed.tolist()) == reference_pack(codes, bits)
    out = unpack_bits(packed, bits, len(codes))
    assert out.dtype == torch.uint8 and out.tolist() == codes


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1001])
def test_round_trip_all_ones_and_integer_dtypes(bits, n):
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.int64):
        codes = torch.full((n,), 2**bits - 1, dtype=dtype)
        packed = pack_bits(codes, bits)
        assert packed.numel() == -(-n * bits // 8)
        assert torch.equal(unpack_bits(packed, bits, n), codes.to(torch.uint8))


def test_known_bytes():
    assert pack_bits(torch.tensor([1, 0, 1, 1]), 1).tolist() == [0b1101]
    assert pack_bits(torch.tensor([5, 3, 7]), 3).tolist() == [5 | 3 << 3 | (7 << 6) & 0xFF, 7 >> 2]
    assert pack_bits(torch.tensor([31, 1]), 5).tolist() == [31 | 1 << 5, 0]
    assert pack_bits(torch.tensor([0xAB, 0x01]), 8).tolist() == [0xAB, 0x01]


def test_two_dimensional_codes_are_read_row_major():
    codes = torch.randint(0, 8, (5, 7))
    assert torch.equal(pack_bits(codes, 3), pack_bits(codes.reshape(-1), 3))


@pytest.mark.parametrize("bits", [0, 9, -1, 2.0, True, "4"])
def test_bad_bits_raise(bits):
    with pytest.raises(ValueError, match="bits="):
        pack_bits(torch.zeros(4, dtype=torch.int64), bits)
    with pytest.raises(ValueError, match="bits="):
        unpack_bits(torch.zeros(4, dtype=torch.uint8), bits, 4)


@pytest.mark.parametrize(("bits", "bad"), [(1, 2), (3, 8), (5, -1), (7, 128), (8, 256)])
def test_out_of_range_codes_raise(bits, bad):
    codes = torch.tensor([0, bad, 1])
    with pytest.raises(ValueError, match=rf"codes must lie in \[0, {2**bits}\)"):
        pack_bits(codes, bits)


def test_non_integer_inputs_raise():
    with pytest.raises(ValueError, match="integer tensor"):
        pack_bits(torch.zeros(4), 4)
    with pytest.raises(ValueError, match="integer tensor"):
        pack_bits(torch.zeros(4, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        pack_bits([1, 2], 4)
    with pytest.raises(ValueError, match="uint8"):
        unpack_bits(torch.zeros(2, dtype=torch.int64), 4, 4)
    with pytest.raises(ValueError, match="need exactly 2"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 4)


def test_ten_million_codes_pack_fast():
    codes = torch.randint(0, 8, (10**7,), dtype=torch.uint8)
    start = time.perf_counter()
    packed = pack_bits(codes, 3)
    assert time.perf_counter() - start < 2.0  # ~0.2 s on one core; generous for a shared machine
    assert packed.numel() == 3 * 10**7 // 8
    assert torch.equal(unpack_bits(packed, 3, codes.numel()), codes)
