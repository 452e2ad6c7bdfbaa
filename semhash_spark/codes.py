"""Binary codes: the one canonical format, Hamming distances, addresses and Hamming balls.

Format (see docs/architecture.md): packed bits ``uint8[n, ceil(bits / 8)]``, most significant bit first
(``numpy.packbits(bitorder="big")``); bit 0 of a code is the high bit of byte 0, and the trailing bits of the last
byte are zero when ``bits`` is not a multiple of 8 (the papers' 20- and 28-bit codes).
"""

from __future__ import annotations

import itertools
from math import comb

import numpy as np


def code_bytes(bits: int) -> int:
    """Bytes one packed code of ``bits`` bits takes."""
    if bits <= 0:
        raise ValueError(f"bits must be positive, got {bits}")
    return (bits + 7) // 8


def pack_bits(bits01: np.ndarray) -> np.ndarray:
    """``{0,1}[n, bits]`` (any dtype, nonzero is 1) -> packed ``uint8[n, ceil(bits/8)]``, MSB first."""
    bits01 = np.asarray(bits01)
    if bits01.ndim != 2:
        raise ValueError(f"expected a 2-d array of bits, got shape {bits01.shape}")
    return np.packbits(bits01 != 0, axis=1, bitorder="big")


def unpack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packed ``uint8[n, nbytes]`` -> ``uint8[n, bits]`` of 0/1."""
    codes = as_codes(codes, bits)
    return np.unpackbits(codes, axis=1, count=bits, bitorder="big")


def as_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Validates and returns ``codes`` as a C-contiguous ``uint8[n, code_bytes(bits)]``."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim == 1:
        codes = codes.reshape(1, -1)
    if codes.ndim != 2 or codes.shape[1] != code_bytes(bits):
        raise ValueError(f"codes of {bits} bits must have shape (n, {code_bytes(bits)}), got {codes.shape}")
    return codes


def from_hex(text: str, bits: int) -> np.ndarray:
    """One code from hex (``"a3f0..."``, length ``2 * code_bytes(bits)``) -> ``uint8[1, nbytes]``."""
    t = text.strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    if len(t) != 2 * code_bytes(bits):
        raise ValueError(f"a {bits}-bit code is {2 * code_bytes(bits)} hex digits, got {len(t)} ({text!r})")
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        raise ValueError(f"not a hex code: {text!r}") from None
    code = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1).copy()
    spare = 8 * code.shape[1] - bits
    if spare and code[0, -1] & ((1 << spare) - 1):
        raise ValueError(f"code {text!r} has bits set beyond its {bits} bits")
    return code


def to_hex(codes: np.ndarray) -> list[str]:
    return [bytes(row).hex() for row in np.asarray(codes, dtype=np.uint8)]


def popcount(x: np.ndarray) -> np.ndarray:
    """Bit count of each uint8, summed over the last axis (``numpy.unpackbits``; a reference for the fast one)."""
    return np.unpackbits(np.asarray(x, dtype=np.uint8), axis=-1).sum(axis=-1, dtype=np.int32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances ``int32[len(a), len(b)]`` between packed codes."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    b = np.ascontiguousarray(b, dtype=np.uint8)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"code widths differ: {a.shape[1]} and {b.shape[1]} bytes")
    aw, bw = to_words(a), to_words(b)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    # Chunk over the rows of a so the (chunk, len(b), nwords) XOR stays small.
    step = max(1, (1 << 20) // max(1, bw.shape[0] * bw.shape[1]))
    for s in range(0, a.shape[0], step):
        out[s : s + step] = popcount_inplace(aw[s : s + step, None, :] ^ bw[None, :, :])
    return out


def hamming_to_one(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Distances ``int32[len(db)]`` from one packed code ``q`` to every row of ``db``."""
    return hamming_words(to_words(np.asarray(q, dtype=np.uint8).reshape(1, -1))[0], to_words(db))


def prefix(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Integer value (``uint64[n]``) of the first ``nbits`` bits of each packed code (the address)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.ndim == 1:
        codes = codes.reshape(1, -1)
    if not 0 <= nbits <= min(64, 8 * codes.shape[1]):
        raise ValueError(f"prefix length {nbits} out of range for {8 * codes.shape[1]}-bit codes")
    nbytes = (nbits + 7) // 8
    out = np.zeros(codes.shape[0], dtype=np.uint64)
    for j in range(nbytes):
        out = (out << np.uint64(8)) | codes[:, j].astype(np.uint64)
    return out >> np.uint64(8 * nbytes - nbits)


def partition_name(value: int, partition_bits: int) -> str:
    """Lower-case hex of a partition prefix, zero-padded to ``ceil(partition_bits / 4)`` digits."""
    return format(int(value), "x").zfill(max(1, (partition_bits + 3) // 4))


def hamming_ball(center: int, nbits: int, radius: int) -> np.ndarray:
    """All ``nbits``-bit integers within Hamming ``radius`` of ``center``, ordered by distance (``uint64``)."""
    radius = max(0, min(radius, nbits))
    out = [np.array([center], dtype=np.uint64)]
    for d in range(1, radius + 1):
        masks = np.fromiter(
            (sum(1 << b for b in combo) for combo in itertools.combinations(range(nbits), d)),
            dtype=np.uint64,
            count=comb(nbits, d),
        )
        out.append(np.uint64(center) ^ masks)
    return np.concatenate(out)


def ball_size(nbits: int, radius: int) -> int:
    return sum(comb(nbits, d) for d in range(0, min(radius, nbits) + 1))


def int_hamming(a: np.ndarray, b: int) -> np.ndarray:
    """Hamming distance between integers (``uint64[n]``) and one integer."""
    return popcount_inplace(np.asarray(a, dtype=np.uint64).reshape(-1) ^ np.uint64(b))


# --------------------------------------------------------------------------------------------- fast kernels
# Codes zero-padded to whole 64-bit words: zero padding adds no bits, so distances between word views equal those
# between the packed codes. The byte order inside a word does not matter for a popcount.

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_S1, _S2, _S4, _S56 = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


def to_words(codes: np.ndarray) -> np.ndarray:
    """Packed ``uint8[n, nbytes]`` -> ``uint64[n, ceil(nbytes / 8)]`` (zero-padded copy or view)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.ndim == 1:
        codes = codes.reshape(1, -1)
    n, nbytes = codes.shape
    nwords = max(1, (nbytes + 7) // 8)
    if nbytes == 8 * nwords and codes.flags.c_contiguous:
        return codes.view(np.uint64)
    out = np.zeros((n, 8 * nwords), dtype=np.uint8)
    out[:, :nbytes] = codes
    return out.view(np.uint64)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Bit count of ``uint64[..., w]`` summed over the last axis -> ``int32[...]`` (SWAR bit tricks)."""
    return _popcount64_inplace(np.array(x, dtype=np.uint64, copy=True))


def popcount_inplace(x: np.ndarray) -> np.ndarray:
    """Bit counts of ``uint64[n]`` (each) or ``uint64[n, w]`` (summed over words) -> ``int32[n]``; ``x`` is
    clobbered. The one SWAR popcount of the code base (the compiled loops count bits in :mod:`semhash_spark.index._mih_kernels`)."""
    y = x >> _S1
    y &= _M1
    x -= y
    y = x >> _S2
    y &= _M2
    x &= _M2
    x += y
    y = x >> _S4
    x += y
    x &= _M4
    x *= _H01
    x >>= _S56
    if x.ndim == 1:
        return x.astype(np.int32)
    return x.sum(axis=-1, dtype=np.int32) if x.shape[-1] > 1 else x[..., 0].astype(np.int32)


_popcount64_inplace = popcount_inplace


def hamming_words(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Distances ``int32[n]`` from one word-code ``q`` (``uint64[w]``) to each row of ``db`` (``uint64[n, w]``)."""
    return _popcount64_inplace(np.bitwise_xor(db, np.asarray(q, dtype=np.uint64).reshape(1, -1)))
