"""Bit and byte packing for the compressed file, vectorised with numpy.

Python loops over millions of symbols are what make naive Huffman coders slow; here every operation works
on whole arrays: fixed-width packing, variable-length code packing by cumulative bit offsets, and a
"next ``width`` bits at every bit position" view that table-driven decoders index into.

Bit order is MSB-first within each byte (``numpy.packbits`` order). Multi-byte integers in headers are
unsigned LEB128 varints. Readers raise :class:`BitstreamError` (a ``ValueError``) instead of reading past
the end, so a truncated buffer can never turn into silently wrong numbers.
"""

from __future__ import annotations

import numpy as np

#: A window read from a 32-bit word at a byte offset, shifted by up to 7 bits, holds at most 25 bits.
MAX_WINDOW_BITS = 25


class BitstreamError(ValueError):
    """A buffer ended early or holds values that cannot be decoded."""


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned integers at ``width`` bits each (MSB first), padded with zero bits to a whole byte."""
    values = np.asarray(values).reshape(-1)
    if width == 0 or values.size == 0:
        return b""
    if not 0 < width <= 64:
        raise ValueError(f"width must be in [1, 64], got {width}")
    return pack_codes(values, np.full(values.size, width, dtype=np.int64))[0]


def byte_words(buf: bytes | memoryview, nbytes: int) -> np.ndarray:
    """``out[i]`` = the 32 bits starting at byte ``i`` (big-endian, zeros past ``nbytes``), as uint64."""
    b = np.zeros(nbytes + 3, dtype=np.uint32)
    b[:nbytes] = np.frombuffer(buf, dtype=np.uint8, count=nbytes)
    words = b[:-3] << 24
    words |= b[1:-2] << 16
    words |= b[2:-1] << 8
    words |= b[3:]
    return words.astype(np.uint64)


def unpack_fixed(buf: bytes | memoryview, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`: ``count`` integers of ``width`` bits (returned as int64)."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    need = (count * width + 7) // 8
    if len(buf) < need:
        raise BitstreamError(f"fixed-width stream needs {need} bytes, got {len(buf)}")
    if width <= MAX_WINDOW_BITS:
        words = byte_words(buf, need)
        p = np.arange(0, count * width, width, dtype=np.int64)
        shift = (32 - width - (p & 7)).astype(np.uint64)
        return ((words[p >> 3] >> shift) & np.uint64((1 << width) - 1)).astype(np.int64)
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8, count=need))[: count * width]
    bits = bits.reshape(count, width).astype(np.uint64)
    weights = np.left_shift(np.uint64(1), np.arange(width - 1, -1, -1, dtype=np.uint64))
    return (bits * weights).sum(axis=1, dtype=np.uint64).astype(np.int64)


def pack_codes(codes: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Concatenate variable-length codes (``codes[i]`` holds ``lengths[i]`` <= 64 bits, MSB first).

    Returns the packed bytes and the number of meaningful bits. Each code lands at the cumulative sum of the
    previous lengths inside 64-bit words: codes never overlap, so a word is the sum of its codes' shifted
    bits (``np.add.reduceat``), and a code crossing a word boundary spills its low bits into the next word.
    """
    codes = np.asarray(codes).reshape(-1).astype(np.uint64)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    nbits = int(lengths.sum())
    if nbits == 0:
        return b"", 0
    keep = lengths > 0
    if not keep.all():
        codes, lengths = codes[keep], lengths[keep]
    ends = np.cumsum(lengths)
    word = (ends - lengths) >> 6
    end_in_word = (ends - (word << 6)).astype(np.uint64)  # 1 .. 128
    spill = end_in_word > 64
    sixty_four = np.uint64(64)
    hi = codes << np.where(spill, 0, sixty_four - end_in_word).astype(np.uint64)
    if spill.any():
        hi[spill] = codes[spill] >> (end_in_word[spill] - sixty_four)
    out = np.zeros((nbits + 63) // 64 + 1, dtype=np.uint64)
    first = np.flatnonzero(np.diff(word, prepend=-1) != 0)
    out[word[first]] = np.add.reduceat(hi, first)
    if spill.any():
        out[word[spill] + 1] |= codes[spill] << (np.uint64(128) - end_in_word[spill])
    return out.astype(">u8").tobytes()[: (nbits + 7) // 8], nbits


class ByteWriter:
    """Append-only byte buffer with varints and length-prefixed strings."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        self._parts.append(bytes(data))
        self._size += len(data)

    def u8(self, value: int) -> None:
        if not 0 <= value < 256:
            raise ValueError(f"u8 out of range: {value}")
        self.write(bytes([value]))

    def varint(self, value: int) -> None:
        self.write(encode_varint(value))

    def string(self, text: str) -> None:
        data = text.encode("utf-8")
        self.varint(len(data))
        self.write(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, high bit set on all but the last byte."""
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint_size(value: int) -> int:
    return max(1, (int(value).bit_length() + 6) // 7)


class ByteReader:
    """Bounds-checked reader over a byte buffer: every read past the end raises :class:`BitstreamError`."""

    def __init__(self, buf: bytes | memoryview, offset: int = 0, end: int | None = None) -> None:
        self.buf = memoryview(buf)
        self.pos = offset
        self.end = len(self.buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def read(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise BitstreamError(f"need {n} bytes at offset {self.pos}, only {self.remaining} left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.read(1)[0]

    def varint(self, max_bytes: int = 10) -> int:
        value, shift = 0, 0
        for _ in range(max_bytes):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise BitstreamError(f"varint longer than {max_bytes} bytes at offset {self.pos}")

    def string(self, max_len: int = 1 << 16) -> str:
        n = self.varint()
        if n > max_len:
            raise BitstreamError(f"string of {n} bytes exceeds the limit of {max_len}")
        try:
            return bytes(self.read(n)).decode("utf-8")
        except UnicodeDecodeError as err:
            raise BitstreamError(f"invalid UTF-8 string: {err}") from None
