"""Table-driven decoding of a canonical Huffman stream without a Python loop over symbols.

Decoding is sequential by nature: where a code starts depends on every code before it. Huffman codes,
however, *resynchronise*: decoding started at an arbitrary bit soon lands on a true code start and from then
on follows the true chain. So the stream is cut into lanes of a few hundred bits and all lanes are decoded at
once, one symbol per numpy step (a lookup of the next ``max_length`` bits in a table of ``2**max_length``
entries). Lane ``j`` is right from the point where it meets the exit of lane ``j - 1`` (the first true code
start at or past its beginning); a lane that never met it is decoded again from that exit, which fixes at
least the leftmost such lane per round. Lanes start at multiples of the code lengths' common divisor, where
true code starts lie. After a few rounds whatever is left is decoded symbol by symbol (only a forged or
pathological stream gets there), so the time is linear in the stream's bits in every case.
"""

from __future__ import annotations

import numpy as np

from lightning_compress.format.bitstream import BitstreamError, byte_words

#: Bits per lane (rounded to the code lengths' common divisor). Long enough for lanes to resynchronise.
LANE_BITS = 256
#: Rounds of lane re-decoding before the rest of the stream is decoded symbol by symbol.
MAX_ROUNDS = 4
_STOPPED = np.iinfo(np.int64).max // 2  # exit of a lane that met an invalid code


def decode_canonical(
    buf: bytes | memoryview,
    nbits: int,
    count: int,
    top: int,
    table_sym: np.ndarray,
    table_len: np.ndarray,
    step: int = 1,
) -> np.ndarray:
    """``count`` symbols from ``nbits`` bits; ``table_*[w]`` = symbol and length of the code ``w`` starts with."""
    nbytes = (nbits + 7) // 8
    if len(buf) < nbytes:
        raise BitstreamError(f"stream of {nbits} bits needs {nbytes} bytes, got {len(buf)}")
    words = byte_words(buf, nbytes).astype(np.int64)
    lane = max(step, LANE_BITS // step * step)
    starts = np.arange(0, nbits, lane, dtype=np.int64)
    ends = np.minimum(starts + lane, nbits)
    pos, syms, exits, bad = _run_lanes(words, starts, ends, top, table_sym, table_len)
    entry = np.concatenate([[0], exits[:-1]])
    for _ in range(MAX_ROUNDS):
        redo = _inconsistent(pos, entry, ends)
        if redo.size == 0:
            break
        _check_no_bad(bad, entry, redo[0])
        redo = redo[entry[redo] < _STOPPED]
        p2, s2, x2, b2 = _run_lanes(words, entry[redo], ends[redo], top, table_sym, table_len)
        pos, syms = _widen(pos, p2.shape[0]), _widen(syms, p2.shape[0])
        pos[:, redo], syms[:, redo] = _widen(p2, pos.shape[0]), _widen(s2, pos.shape[0])
        exits[redo], bad[redo] = x2, b2
        entry = np.concatenate([[0], exits[:-1]])
    redo = _inconsistent(pos, entry, ends)
    first_wrong = int(redo[0]) if redo.size else starts.size
    _check_no_bad(bad, entry, first_wrong)
    ok_pos, ok_sym = _collect(pos[:, :first_wrong], syms[:, :first_wrong], entry[:first_wrong])
    if first_wrong < starts.size:
        tail_sym, end = _decode_scalar(words, int(entry[first_wrong]), nbits, count - ok_sym.size + 1,
                                       top, table_sym, table_len)
        ok_sym = np.concatenate([ok_sym, tail_sym])
    else:
        end = int(entry[-1] if entry[-1] >= ends[-1] else exits[-1])
    if ok_sym.size != count or end != nbits:
        raise BitstreamError(f"Huffman stream does not end after {count} symbols (holds an invalid code or ends early)")
    return ok_sym


def _window(words: np.ndarray, pos: np.ndarray, top: int) -> np.ndarray:
    return (words[pos >> 3] >> (32 - top - (pos & 7))) & ((1 << top) - 1)


def _run_lanes(words, starts, ends, top, table_sym, table_len):
    """Decode every lane from ``starts`` until it passes ``ends``: positions/symbols (steps x lanes), exits."""
    pos = starts.copy()
    bad = np.full(starts.size, _STOPPED, dtype=np.int64)
    rows_p, rows_s = [], []
    active = pos < ends
    while active.any():
        w = _window(words, np.minimum(pos, words.size * 8 - 1), top)
        length = table_len[w]
        invalid = active & (length == 0)
        if invalid.any():
            bad[invalid] = np.minimum(bad[invalid], pos[invalid])
        rows_p.append(np.where(active & ~invalid, pos, -1))
        rows_s.append(table_sym[w])
        pos = np.where(active, np.where(invalid, _STOPPED, pos + length), pos)
        active = pos < ends
    if not rows_p:
        return np.full((1, starts.size), -1, dtype=np.int64), np.zeros((1, starts.size), np.int64), pos, bad
    return np.stack(rows_p), np.stack(rows_s), pos, bad


def _widen(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] >= rows:
        return a
    pad = np.full((rows - a.shape[0], a.shape[1]), -1, dtype=a.dtype)
    return np.concatenate([a, pad])


def _inconsistent(pos: np.ndarray, entry: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lanes whose decoded chain does not contain their entry point (the previous lane's exit)."""
    met = (pos == entry[None, :]).any(axis=0) | (entry >= ends)
    met[0] = True
    return np.flatnonzero(~met)


def _check_no_bad(bad: np.ndarray, entry: np.ndarray, upto: int) -> None:
    """Lanes before ``upto`` are on the true chain: an invalid code there is in the stream."""
    if np.any((bad[:upto] < _STOPPED) & (bad[:upto] >= entry[:upto])):
        raise BitstreamError("Huffman stream holds an invalid code")


def _collect(pos: np.ndarray, syms: np.ndarray, entry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lane-major positions and symbols from each lane's entry point on."""
    keep = (pos >= entry[None, :]).T
    return pos.T[keep], syms.T[keep]


def _decode_scalar(words, start, nbits, limit, top, table_sym, table_len):
    """Symbols from ``start`` one by one (at most ``limit``) and where they end: for streams that never resync."""
    lengths, symbols = table_len.tolist(), table_sym.tolist()
    word_list = words.tolist()
    mask = (1 << top) - 1
    out: list[int] = []
    p = start
    while p < nbits and len(out) < limit:
        w = (word_list[p >> 3] >> (32 - top - (p & 7))) & mask
        if lengths[w] == 0:
            raise BitstreamError("Huffman stream holds an invalid code")
        out.append(symbols[w])
        p += lengths[w]
    return np.array(out, dtype=np.int64), p
