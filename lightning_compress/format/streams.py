"""Index streams (relative indices, codebook indices): fixed-width or Huffman-coded, whichever is smaller.

A stream is a tag byte, then either ``count * bits`` packed bits (fixed) or a Huffman table, a varint bit
count and the coded bits. The symbol count is stored by the layer around it, never here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightning_compress.format.bitstream import BitstreamError, ByteReader, ByteWriter, pack_fixed, unpack_fixed
from lightning_compress.format.bitstream import varint_size
from lightning_compress.format.huffman import HuffmanCode, entropy_bits

FIXED, HUFFMAN = 0, 1  # stream tags


@dataclass
class StreamInfo:
    """What one index stream cost and what it could have cost."""

    count: int = 0  # symbols in the stream
    alphabet_bits: int = 0  # fixed width of a symbol
    huffman: bool = False  # stored Huffman-coded (else fixed width)
    bytes: int = 0  # stored bytes: tag + table + length + data
    table_bytes: int = 0  # Huffman table bytes (0 when fixed)
    data_bits: int = 0  # bits of the coded symbols
    entropy_bits: float = 0.0  # Shannon bound of the symbols

    @property
    def bits_per_symbol(self) -> float:
        return self.data_bits / self.count if self.count else 0.0


def stream_plan(counts: np.ndarray, alphabet_bits: int) -> tuple[int, HuffmanCode | None]:
    """Bytes of the cheaper of fixed-width and Huffman coding for a stream with these counts."""
    n = int(counts.sum())
    fixed = 1 + (n * alphabet_bits + 7) // 8
    if n == 0:
        return fixed, None
    code = HuffmanCode.from_counts(counts)
    data = (code.coded_bits(counts) + 7) // 8
    huff = 1 + code.table_size(alphabet_bits) + varint_size(code.coded_bits(counts)) + data
    return (huff, code) if huff < fixed else (fixed, None)


def encode_stream(out: ByteWriter, symbols: np.ndarray, alphabet_bits: int, code: HuffmanCode | None,
                  counts: np.ndarray | None = None) -> StreamInfo:
    """Write ``symbols`` fixed-width (``code is None``) or Huffman-coded with its table."""
    start = len(out)
    if counts is None:
        counts = np.bincount(symbols, minlength=1) if symbols.size else np.zeros(1, dtype=np.int64)
    info = StreamInfo(count=int(symbols.size), alphabet_bits=alphabet_bits, entropy_bits=entropy_bits(counts))
    if code is None:
        out.u8(FIXED)
        out.write(pack_fixed(symbols, alphabet_bits))
        info.data_bits = int(symbols.size) * alphabet_bits
    else:
        out.u8(HUFFMAN)
        table = code.write_table(alphabet_bits)
        data, nbits = code.encode(symbols)
        out.write(table)
        out.varint(nbits)
        out.write(data)
        info.huffman, info.table_bytes, info.data_bits = True, len(table), nbits
    info.bytes = len(out) - start
    return info


def decode_stream(reader: ByteReader, count: int, alphabet_bits: int) -> np.ndarray:
    """``count`` symbols; every read is checked against the bytes left before anything is allocated."""
    tag = reader.u8()
    if tag == FIXED:
        return unpack_fixed(reader.read((count * alphabet_bits + 7) // 8), alphabet_bits, count)
    if tag == HUFFMAN:
        code = HuffmanCode.read_table(reader, alphabet_bits)
        nbits = reader.varint()
        return code.decode(reader.read((nbits + 7) // 8), nbits, count)
    raise BitstreamError(f"unknown stream tag {tag}")


__all__ = ["FIXED", "HUFFMAN", "StreamInfo", "decode_stream", "encode_stream", "stream_plan"]
