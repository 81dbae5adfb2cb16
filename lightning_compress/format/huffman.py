"""Canonical, length-limited Huffman coding, vectorised with numpy.

Deep Compression Huffman-codes the relative-index and codebook-index streams: their distributions are far
from uniform (small gaps and central centroids dominate), which saves another 20-30%.

* Code lengths come from the classic two-smallest merge (``heapq``; the alphabet is at most 2**16
  symbols, the stream may be millions), then are limited to :data:`MAX_CODE_LENGTH` bits so the decoder's
  lookup table stays small.
* Codes are *canonical* (ordered by length, then symbol), so the table stored in the file is just the
  number of codes per length and the symbols in that order.
* Encoding packs every code at its cumulative bit offset (:func:`~lightning_compress.format.bitstream.pack_codes`).
* Decoding looks the next ``max_length`` bits up in a table, in many lanes of the stream at once
  (:mod:`lightning_compress.format.huffman_decode`), instead of a Python loop over symbols.

A source with a single symbol gets a code of length 0 (its stream holds no bits; the count is stored
elsewhere), which is the entropy-optimal code for it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from lightning_compress.format.bitstream import BitstreamError, ByteReader, encode_varint, pack_codes, pack_fixed
from lightning_compress.format.bitstream import unpack_fixed, varint_size
from lightning_compress.format.huffman_decode import decode_canonical

#: Longest code allowed. 2**20 table entries at decode time; alphabets here are at most 2**16 symbols.
MAX_CODE_LENGTH = 20


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon bound in bits for coding a stream with these symbol counts symbol by symbol."""
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    n = c.sum()
    if n == 0:
        return 0.0
    return float(-(c * np.log2(c / n)).sum())


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code length per symbol (0 for unused symbols, and for the only symbol of a 1-symbol source).

    Lengths are limited to ``max_length``: overlong codes are clamped and the least frequent shorter codes
    lengthened until the Kraft inequality holds again (rarely needed: it takes a Fibonacci-like skew).
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    lengths = np.zeros(counts.size, dtype=np.int64)
    used = np.flatnonzero(counts > 0)
    n = used.size
    if n <= 1:
        return lengths
    if n > (1 << max_length):
        raise ValueError(f"{n} symbols cannot be coded with codes of at most {max_length} bits")
    heap = [(int(counts[s]), i) for i, s in enumerate(used)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    node = n
    while len(heap) > 1:
        wa, a = heapq.heappop(heap)
        wb, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (wa + wb, node))
        node += 1
    depth = [0] * (2 * n - 1)
    for i in range(2 * n - 3, -1, -1):  # parents have larger ids than their children; root = 2n-2
        depth[i] = depth[parent[i]] + 1
    used_len = np.array(depth[:n], dtype=np.int64)
    if used_len.max() > max_length:
        used_len = _limit_lengths(used_len, counts[used], max_length)
    lengths[used] = used_len
    return lengths


def _limit_lengths(lengths: np.ndarray, counts: np.ndarray, max_length: int) -> np.ndarray:
    lengths = np.minimum(lengths, max_length)
    cap = 1 << max_length
    kraft = int((np.left_shift(1, max_length - lengths)).sum())
    # Least frequent first, so lengthening hurts the average length least.
    order = np.argsort(counts, kind="stable")
    while kraft > cap:
        cand = order[lengths[order] < max_length]
        # The longest code still below the limit frees the smallest Kraft share: the gentlest step.
        i = cand[np.argmax(lengths[cand])]
        kraft -= 1 << (max_length - lengths[i] - 1)
        lengths[i] += 1
    return lengths


@dataclass(frozen=True)
class HuffmanCode:
    """A canonical prefix code: ``symbols[i]`` gets a code of ``lengths[i]`` bits (lengths non-decreasing)."""

    symbols: np.ndarray
    lengths: np.ndarray

    @classmethod
    def from_counts(cls, counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> "HuffmanCode":
        """Optimal (length-limited) code for a histogram indexed by symbol value."""
        lengths = code_lengths(counts, max_length)
        used = np.flatnonzero(np.asarray(counts).reshape(-1) > 0)
        return cls.from_lengths(used, lengths[used])

    @classmethod
    def from_lengths(cls, symbols: np.ndarray, lengths: np.ndarray) -> "HuffmanCode":
        symbols = np.asarray(symbols, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.lexsort((symbols, lengths))
        return cls(symbols[order], lengths[order])

    @property
    def max_length(self) -> int:
        return int(self.lengths.max()) if self.lengths.size else 0

    def codes(self) -> np.ndarray:
        """Canonical codes: code_i = (sum over earlier codes of 2**-l_j) * 2**l_i, exact in integers."""
        if self.lengths.size == 0:
            return np.zeros(0, dtype=np.int64)
        top = self.max_length
        share = np.left_shift(1, top - self.lengths)
        before = np.cumsum(share) - share
        return before >> (top - self.lengths)

    def _lookup(self, symbol_alphabet: int) -> tuple[np.ndarray, np.ndarray]:
        size = max(symbol_alphabet, int(self.symbols.max()) + 1 if self.symbols.size else 0)
        length_of = np.zeros(size, dtype=np.int64)
        code_of = np.zeros(size, dtype=np.int64)
        length_of[self.symbols] = self.lengths
        code_of[self.symbols] = self.codes()
        return code_of, length_of

    def coded_bits(self, counts: np.ndarray) -> int:
        """Bits of a stream with these symbol counts (indexed by symbol value)."""
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        return int((counts[self.symbols] * self.lengths).sum()) if self.symbols.size else 0

    def encode(self, stream: np.ndarray) -> tuple[bytes, int]:
        """Packed codes of ``stream`` and their number of bits. Every symbol must be in the code."""
        stream = np.asarray(stream, dtype=np.int64).reshape(-1)
        if stream.size == 0 or self.max_length == 0:
            if stream.size and (self.symbols.size != 1 or np.any(stream != self.symbols[0])):
                raise ValueError("stream holds symbols the code does not contain")
            return b"", 0
        code_of, length_of = self._lookup(int(stream.max()) + 1)
        lengths = length_of[stream]
        if np.any(lengths == 0):
            raise ValueError("stream holds symbols the code does not contain")
        return pack_codes(code_of[stream], lengths)

    def decode(self, buf: bytes | memoryview, nbits: int, count: int) -> np.ndarray:
        """Decode exactly ``count`` symbols that must occupy exactly ``nbits`` bits of ``buf``."""
        if count == 0:
            if nbits:
                raise BitstreamError(f"{nbits} bits left over after decoding 0 symbols")
            return np.zeros(0, dtype=np.int64)
        if self.symbols.size == 0:
            raise BitstreamError(f"empty code cannot produce {count} symbols")
        top = self.max_length
        if top == 0:
            if nbits:
                raise BitstreamError(f"single-symbol stream must hold 0 bits, got {nbits}")
            return np.full(count, self.symbols[0], dtype=np.int64)
        if nbits < count:
            raise BitstreamError(f"{count} symbols need at least {count} bits, got {nbits}")
        # Table over all top-bit windows: canonical codes cover the code space in order.
        reps = np.left_shift(1, top - self.lengths)
        table_sym = np.zeros(1 << top, dtype=np.int64)
        table_len = np.zeros(1 << top, dtype=np.int64)  # 0 = no code starts with these bits
        used = int(reps.sum())
        table_sym[:used] = np.repeat(self.symbols, reps)
        table_len[:used] = np.repeat(self.lengths, reps)
        step = int(np.gcd.reduce(self.lengths))
        return decode_canonical(buf, nbits, count, top, table_sym, table_len, step)

    # ---- serialisation: max length, codes per length, symbols in canonical order ----

    def table_size(self, symbol_bits: int) -> int:
        """Bytes :meth:`write_table` produces."""
        top = self.max_length
        if top == 0:
            return 1 + (symbol_bits * self.symbols.size + 7) // 8
        per_length = np.bincount(self.lengths, minlength=top + 1)[1:]
        return 1 + sum(varint_size(int(c)) for c in per_length) + (symbol_bits * self.symbols.size + 7) // 8

    def write_table(self, symbol_bits: int) -> bytes:
        if self.symbols.size == 0:
            raise ValueError("an empty code has no table (store an empty stream fixed-width)")
        top = self.max_length
        out = bytearray([top])
        if top:
            for c in np.bincount(self.lengths, minlength=top + 1)[1:]:
                out += encode_varint(int(c))
        out += pack_fixed(self.symbols, symbol_bits)
        return bytes(out)

    @classmethod
    def read_table(cls, reader: ByteReader, symbol_bits: int) -> "HuffmanCode":
        top = reader.u8()
        if top > MAX_CODE_LENGTH:
            raise BitstreamError(f"Huffman code length {top} exceeds the maximum {MAX_CODE_LENGTH}")
        if top == 0:
            per_length = [1]
            lengths = np.zeros(1, dtype=np.int64)
        else:
            per_length = [reader.varint() for _ in range(top)]
            # checked as Python ints before anything is allocated: a forged count may be 2**69
            if not 0 < sum(per_length) <= min(1 << symbol_bits, 8 * reader.remaining) or per_length[-1] == 0:
                raise BitstreamError("invalid Huffman table (symbol counts)")
            lengths = np.repeat(np.arange(1, top + 1, dtype=np.int64), per_length)
            if int(np.left_shift(1, top - lengths).sum()) > (1 << top):
                raise BitstreamError("invalid Huffman table (violates the Kraft inequality)")
        n = int(lengths.size)
        symbols = unpack_fixed(reader.read((symbol_bits * n + 7) // 8), symbol_bits, n)
        if np.unique(symbols).size != n:
            raise BitstreamError("invalid Huffman table (repeated symbol)")
        return cls(symbols, lengths)


def kraft_sum(lengths: np.ndarray) -> float:
    """Sum of 2**-l over used symbols (<= 1 for every prefix code)."""
    lengths = np.asarray(lengths)
    return float(sum(math.ldexp(1.0, -int(l)) for l in lengths[lengths > 0]))
