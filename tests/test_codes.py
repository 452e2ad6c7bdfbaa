"""The code format: MSB-first packing, hex, prefixes (addresses, partitions), Hamming balls, fast kernels."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from semhash_spark import codes as C


def test_pack_is_msb_first_literal():
    # bit 0 is the high bit of byte 0: 1011 0000 | 0000 0001 -> b0 01
    bits = np.array([[1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]])
    packed = C.pack_bits(bits)
    assert packed.dtype == np.uint8 and packed.tolist() == [[0xB0, 0x01]]
    assert C.to_hex(packed) == ["b001"]


def test_twenty_bit_codes_pad_trailing_bits_with_zeros():
    bits = np.zeros((1, 20), dtype=np.uint8)
    bits[0, 0] = bits[0, 19] = 1  # first and last of the 20 bits
    packed = C.pack_bits(bits)
    assert packed.tolist() == [[0x80, 0x00, 0x10]]  # 1000 0000 0000 0000 0001 (0000)
    assert C.prefix(packed, 20).tolist() == [(1 << 19) | 1]


@pytest.mark.parametrize("bits", [8, 20, 28, 32, 64, 128])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    b = rng.integers(0, 2, size=(37, bits), dtype=np.uint8)
    packed = C.pack_bits(b)
    assert packed.shape == (37, C.code_bytes(bits))
    np.testing.assert_array_equal(C.unpack_bits(packed, bits), b)


@pytest.mark.parametrize("bits", [20, 64])
def test_hex_round_trip(bits):
    rng = np.random.default_rng(1)
    packed = C.pack_bits(rng.integers(0, 2, size=(5, bits)))
    for h, row in zip(C.to_hex(packed), packed):
        np.testing.assert_array_equal(C.from_hex(h, bits)[0], row)
        np.testing.assert_array_equal(C.from_hex("0x" + h.upper(), bits)[0], row)


def test_hex_errors_name_the_problem():
    with pytest.raises(ValueError, match="6 hex digits"):
        C.from_hex("abcd", 20)
    with pytest.raises(ValueError, match="not a hex code"):
        C.from_hex("zzzzzz", 20)
    with pytest.raises(ValueError, match="beyond its 20 bits"):
        C.from_hex("000001", 20)  # a bit in the 4 padding bits


def test_prefix_is_the_leading_bits():
    codes = np.array([[0xAB, 0xCD, 0xEF]], dtype=np.uint8)
    assert C.prefix(codes, 0).tolist() == [0]
    assert C.prefix(codes, 4).tolist() == [0xA]
    assert C.prefix(codes, 12).tolist() == [0xABC]
    assert C.prefix(codes, 24).tolist() == [0xABCDEF]
    assert C.partition_name(0xA, 4) == "a" and C.partition_name(0x3, 9) == "003"
    with pytest.raises(ValueError):
        C.prefix(codes, 25)


@pytest.mark.parametrize("nbits,radius", [(8, 0), (8, 2), (20, 4), (12, 12)])
def test_hamming_ball_size_is_sum_of_binomials(nbits, radius):
    center = 0b1011 % (1 << nbits)
    ball = C.hamming_ball(center, nbits, radius)
    assert len(ball) == sum(comb(nbits, d) for d in range(radius + 1)) == C.ball_size(nbits, radius)
    assert len(np.unique(ball)) == len(ball)
    d = C.int_hamming(ball, center)
    assert d.max() <= radius and np.all(np.diff(d) >= 0)  # ordered by distance


@pytest.mark.parametrize("nbytes", [1, 3, 4, 8, 9, 16])
def test_word_kernels_match_byte_hamming(nbytes):
    rng = np.random.default_rng(nbytes)
    a = rng.integers(0, 256, size=(50, nbytes), dtype=np.uint8)
    b = rng.integers(0, 256, size=(6, nbytes), dtype=np.uint8)
    expected = C.hamming(b, a)
    wa, wb = C.to_words(a), C.to_words(b)
    for i in range(len(b)):
        np.testing.assert_array_equal(C.hamming_words(wb[i], wa), expected[i])
    np.testing.assert_array_equal(C.popcount64(wa), C.popcount(a))
