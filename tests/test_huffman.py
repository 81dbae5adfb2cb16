"""Huffman coding and bit packing: optimality, exact round trips, malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_compress.format.bitstream import (
    BitstreamError,
    ByteReader,
    ByteWriter,
    encode_varint,
    pack_codes,
    pack_fixed,
    unpack_fixed,
    varint_size,
    byte_words,
)
from lightning_compress.format.huffman import (
    MAX_CODE_LENGTH,
    HuffmanCode,
    code_lengths,
    entropy_bits,
    kraft_sum,
)

counts_strategy = st.lists(st.integers(0, 10_000), min_size=1, max_size=300).filter(lambda c: sum(c) > 0)


# ---- bitstream ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 40), data=st.data())
def test_fixed_width_round_trip(width, data):
    values = data.draw(st.lists(st.integers(0, (1 << width) - 1), max_size=200))
    buf = pack_fixed(np.array(values, dtype=np.uint64), width)
    assert len(buf) == (len(values) * width + 7) // 8
    assert unpack_fixed(buf, width, len(values)).tolist() == values


def test_fixed_width_is_msb_first():
    assert pack_fixed(np.array([1, 2, 3]), 2) == bytes([0b01101100])
    assert pack_fixed(np.array([5]), 0) == b""
    with pytest.raises(BitstreamError):
        unpack_fixed(b"\x00", 3, 3)  # 9 bits need 2 bytes


def test_pack_codes_and_byte_words_match_a_naive_bit_string():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 13, size=500)
    codes = rng.integers(0, 1 << 12, size=500) & ((1 << lengths) - 1)
    buf, nbits = pack_codes(codes, lengths)
    bitstring = "".join(format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths))
    assert nbits == len(bitstring)
    assert np.unpackbits(np.frombuffer(buf, np.uint8))[:nbits].tolist() == [int(b) for b in bitstring]
    for width in (1, 7, 13, 25):
        padded = bitstring + "0" * width
        expected = [int(padded[p : p + width], 2) for p in range(nbits)]
        words = byte_words(buf, len(buf))
        got = [(int(words[p >> 3]) >> (32 - width - (p & 7))) & ((1 << width) - 1) for p in range(nbits)]
        assert got == expected


@pytest.mark.parametrize("width", [26, 33, 57, 64])
def test_wide_fixed_fields_round_trip(width):
    rng = np.random.default_rng(width)
    values = rng.integers(0, 1 << min(width, 63), size=300, dtype=np.int64)
    assert unpack_fixed(pack_fixed(values, width), width, values.size).tolist() == values.tolist()


@pytest.mark.parametrize("lane_bits,lead_bits,rounds", [(256, 64, 4), (16, 0, 0), (24, 0, 1), (40, 8, 2)])
def test_lane_decoder_matches_the_stream_whatever_the_lanes(monkeypatch, lane_bits, lead_bits, rounds):
    """Short lanes without lead-in fail to resynchronise: redo rounds and the symbol-by-symbol tail must agree."""
    from lightning_compress.format import huffman_decode

    monkeypatch.setattr(huffman_decode, "LANE_BITS", lane_bits)
    monkeypatch.setattr(huffman_decode, "LEAD_BITS", lead_bits)
    monkeypatch.setattr(huffman_decode, "MAX_ROUNDS", rounds)
    rng = np.random.default_rng(lane_bits)
    for counts in ([50, 30, 10, 5, 3, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1000], [9, 9, 9, 1]):
        stream = rng.choice(len(counts), size=3000, p=np.array(counts) / sum(counts))
        code = HuffmanCode.from_counts(np.bincount(stream, minlength=len(counts)))
        data, nbits = code.encode(stream)
        assert np.array_equal(code.decode(data, nbits, stream.size), stream)
        with pytest.raises(BitstreamError):
            code.decode(data, nbits, stream.size + 1)


@given(st.integers(0, 2**63))
def test_varint_round_trip(value):
    enc = encode_varint(value)
    assert len(enc) == varint_size(value)
    assert ByteReader(enc).varint() == value


def test_byte_reader_never_reads_past_the_end():
    w = ByteWriter()
    w.string("fc1.weight")
    w.varint(300)
    r = ByteReader(w.getvalue())
    assert r.string() == "fc1.weight" and r.varint() == 300 and r.remaining == 0
    with pytest.raises(BitstreamError):
        r.u8()
    with pytest.raises(BitstreamError):
        ByteReader(b"\x80\x80").varint()  # continuation bit with nothing after
    with pytest.raises(BitstreamError):
        ByteReader(b"\x05ab").string()


# ---- Huffman ------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(counts_strategy)
def test_code_lengths_are_a_prefix_code_within_one_bit_of_entropy(counts):
    counts = np.array(counts)
    lengths = code_lengths(counts)
    used = counts > 0
    assert np.all(lengths[~used] == 0)
    n_used = int(used.sum())
    if n_used == 1:
        assert lengths[used].tolist() == [0]  # a lone symbol costs nothing
        return
    assert np.all(lengths[used] >= 1)
    assert kraft_sum(lengths) <= 1.0
    if lengths.max() < MAX_CODE_LENGTH:  # unconstrained Huffman: full binary tree, complete code
        assert kraft_sum(lengths) == pytest.approx(1.0)
    total = counts.sum()
    avg = (counts * lengths).sum() / total
    h = entropy_bits(counts) / total
    assert h - 1e-9 <= avg < h + 1


def test_huffman_is_optimal_on_a_textbook_example():
    # Classic example: frequencies 45, 13, 12, 16, 9, 5 -> 224 bits per 100 symbols.
    counts = np.array([45, 13, 12, 16, 9, 5])
    lengths = code_lengths(counts)
    assert int((counts * lengths).sum()) == 224
    assert lengths[0] == 1


def test_length_limit_on_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    assert code_lengths(counts, max_length=64).max() == 39  # unlimited Huffman is maximally skewed
    lengths = code_lengths(counts, max_length=12)
    assert lengths.max() == 12
    assert kraft_sum(lengths) <= 1.0
    code = HuffmanCode.from_counts(counts, max_length=12)
    stream = np.repeat(np.arange(40), np.minimum(counts, 50))
    buf, nbits = code.encode(stream)
    assert np.array_equal(code.decode(buf, nbits, stream.size), stream)


def test_canonical_codes_are_prefix_free_and_ordered():
    counts = np.array([10, 1, 1, 5, 0, 7, 3, 3])
    code = HuffmanCode.from_counts(counts)
    words = [format(int(c), f"0{int(l)}b") for c, l in zip(code.codes(), code.lengths)]
    assert words == sorted(words)
    for i, a in enumerate(words):
        for b in words[i + 1 :]:
            assert not b.startswith(a)
    assert 4 not in code.symbols.tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=0, max_size=2000), st.integers(9, 12))
def test_encode_decode_round_trip(stream, symbol_bits):
    stream = np.array(stream, dtype=np.int64)
    counts = np.bincount(stream, minlength=1) if stream.size else np.zeros(1, dtype=np.int64)
    code = HuffmanCode.from_counts(counts)
    buf, nbits = code.encode(stream)
    assert nbits == code.coded_bits(counts)
    assert len(buf) == (nbits + 7) // 8
    if stream.size == 0:
        assert (buf, nbits) == (b"", 0)
        with pytest.raises(ValueError):
            code.write_table(symbol_bits)
        return
    table = code.write_table(symbol_bits)
    assert len(table) == code.table_size(symbol_bits)
    reader = ByteReader(table)
    again = HuffmanCode.read_table(reader, symbol_bits)
    assert reader.remaining == 0
    assert np.array_equal(again.symbols, code.symbols) and np.array_equal(again.lengths, code.lengths)
    assert np.array_equal(again.decode(buf, nbits, stream.size), stream)


def test_single_symbol_stream_holds_no_bits():
    code = HuffmanCode.from_counts(np.array([0, 0, 1000]))
    buf, nbits = code.encode(np.full(1000, 2))
    assert (buf, nbits) == (b"", 0)
    assert np.array_equal(code.decode(b"", 0, 1000), np.full(1000, 2))
    with pytest.raises(ValueError):
        code.encode(np.array([1]))


def test_large_stream_round_trip():
    rng = np.random.default_rng(1)
    stream = np.minimum(rng.geometric(0.2, size=300_000) - 1, 255)
    code = HuffmanCode.from_counts(np.bincount(stream))
    buf, nbits = code.encode(stream)
    assert np.array_equal(code.decode(buf, nbits, stream.size), stream)
    assert nbits / stream.size < entropy_bits(np.bincount(stream)) / stream.size + 0.05


def test_decode_rejects_wrong_lengths_and_garbage():
    stream = np.array([0, 1, 2, 2, 2, 3, 0, 0, 0, 0])
    code = HuffmanCode.from_counts(np.bincount(stream))
    buf, nbits = code.encode(stream)
    with pytest.raises(BitstreamError):
        code.decode(buf, nbits, stream.size + 1)  # runs out of bits
    with pytest.raises(BitstreamError):
        code.decode(buf + b"\x00", nbits + 8, stream.size)  # bits left over
    with pytest.raises(BitstreamError):
        code.decode(buf[:-1], nbits, stream.size)  # buffer shorter than nbits
    incomplete = HuffmanCode.from_lengths(np.array([0, 1]), np.array([2, 2]))  # codes 00, 01; 1x is invalid
    with pytest.raises(BitstreamError):
        incomplete.decode(bytes([0b10000000]), 2, 1)


def test_read_table_rejects_kraft_violations_and_repeats():
    # max length 1 with 3 codes of length 1: not a prefix code
    with pytest.raises(BitstreamError):
        HuffmanCode.read_table(ByteReader(bytes([1, 3, 0b00011011])), 2)
    # two codes of length 1 naming the same symbol
    with pytest.raises(BitstreamError):
        HuffmanCode.read_table(ByteReader(bytes([1, 2, 0b01010000])), 2)
    with pytest.raises(BitstreamError):
        HuffmanCode.read_table(ByteReader(bytes([MAX_CODE_LENGTH + 1])), 2)
