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
#: Bits each lane decodes before its own (discarded), so that it is on the true chain when its bits begin.
LEAD_BITS = 64
#: Longest code length for which the decoder builds a two-codes-per-step table (2**bits entries).
PAIR_MAX_BITS = 14
#: Positions are 32-bit: streams up to 2**30 bits (128 MiB of codes in one tensor's stream).
MAX_STREAM_BITS = 1 << 30
#: Rounds of lane re-decoding before the rest of the stream is decoded symbol by symbol.
MAX_ROUNDS = 4


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
    if nbits >= MAX_STREAM_BITS:
        raise BitstreamError(f"a Huffman stream of {nbits} bits is longer than the decoder's {MAX_STREAM_BITS}")
    lane = max(step, LANE_BITS // step * step)
    # lanes run on until the slowest is done (at most lane + lead + 8 steps of at most ``top`` bits): zero padding
    words = np.zeros(nbytes + top * (lane + LEAD_BITS + step + 8) // 8 + 8, dtype=np.uint32)
    words[:nbytes] = byte_words(buf, nbytes)
    # one gather per symbol: bits 0-4 how far to advance (an invalid code: 1 bit), bit 5 invalid, symbol above
    table = ((table_sym << 6) | np.where(table_len == 0, 32 | 1, table_len)).astype(np.int32)
    if top <= PAIR_MAX_BITS:  # small tables: two codes per step where both fit in the window
        table = _pair_table(table, top)
    starts = np.arange(0, nbits, lane, dtype=np.int64)
    ends = np.minimum(starts + lane, nbits)
    # each lane starts decoding a little before its own bits, so that it has resynchronised when they begin
    warm = np.maximum(starts - (LEAD_BITS // step + 1) * step, 0)
    pos, packed, exits = _run_lanes(words, warm, ends, top, table)
    entry = np.concatenate([[0], exits[:-1]])
    for _ in range(MAX_ROUNDS):
        redo = _inconsistent(pos, entry, ends)
        redo = redo[entry[redo] < nbits] if redo.size else redo
        if redo.size == 0:
            break
        p2, k2, x2 = _run_lanes(words, entry[redo], ends[redo], top, table)
        pos, packed = _widen(pos, p2.shape[0]), _widen(packed, p2.shape[0])
        pos[:, redo], packed[:, redo] = _widen(p2, pos.shape[0]), _widen(k2, pos.shape[0])
        exits[redo] = x2
        entry = np.concatenate([[0], exits[:-1]])
    redo = _inconsistent(pos, entry, ends)
    first_wrong = int(redo[0]) if redo.size else starts.size
    ok_packed = _collect(pos[:, :first_wrong], packed[:, :first_wrong], entry[:first_wrong], ends[:first_wrong])
    if np.any(ok_packed & 32):
        raise BitstreamError("Huffman stream holds an invalid code")
    ok_sym = (ok_packed >> 6).astype(np.int64)
    if first_wrong < starts.size:
        tail_sym, end = _decode_scalar(words, int(entry[first_wrong]), nbits, count - ok_sym.size + 1,
                                       top, table_sym, table_len)
        ok_sym = np.concatenate([ok_sym, tail_sym])
    else:
        end = int(entry[-1] if entry[-1] >= ends[-1] else exits[-1])
    if ok_sym.size != count or end != nbits:
        raise BitstreamError(f"Huffman stream does not end after {count} symbols (holds an invalid code or ends early)")
    return ok_sym


def _pair_table(single: np.ndarray, top: int) -> np.ndarray:
    """For every window: the first code and, when it fits in the window too, the second, in one int64.

    Bits 0-5: the first code as in the single table (advance, invalid flag); 6-10: the second's length; 11: a
    second code is there; 12-27 and 28-43: the two symbols; 44-49: how far the step advances.
    """
    w = np.arange(1 << top, dtype=np.int64)
    first = single.astype(np.int64)
    l1 = first & 31
    second = first[(w << l1) & ((1 << top) - 1)]
    l2 = second & 31
    two = ((first & 32) == 0) & ((second & 32) == 0) & (l1 + l2 <= top)
    advance = l1 + np.where(two, l2, 0)
    return ((first & 63) | (l2 << 6) | (two.astype(np.int64) << 11) | ((first >> 6) << 12) | ((second >> 6) << 28)
            | (advance << 44))


def _run_lanes(words, starts, ends, top, table):
    """Decode every lane from ``starts`` until all passed their ``ends``: positions and packed codes
    (steps x lanes; entries at or past a lane's end are not the lane's), and each lane's exit.

    Every step advances at least one bit, so a lane needs at most ``ends - starts`` steps: the output is
    allocated once, and each step works in place (memory traffic is the cost here). With a pair table a step
    decodes up to two codes; the rows are then expanded to one code per row (second slot -1 when absent).
    """
    lanes = starts.size
    pairs = table.dtype == np.int64
    max_steps = int((ends - starts).max(initial=0)) + 8
    pos_rows = np.empty((max_steps + 1, lanes), dtype=np.int32)
    code_rows = np.empty((max_steps + 1, lanes), dtype=table.dtype)
    pos = starts.astype(np.int32)
    ends32 = ends.astype(np.int32)
    shift = np.empty(lanes, dtype=np.uint32)
    window = np.empty(lanes, dtype=np.uint32)
    base, mask = np.uint32(32 - top), np.uint32((1 << top) - 1)
    t = 0
    while t < max_steps and np.any(pos < ends32):
        for _ in range(min(8, max_steps - t)):
            pos_rows[t] = pos
            np.take(words, pos >> 3, out=window, mode="clip")  # in range: padded
            np.bitwise_and(pos, 7, out=shift, casting="unsafe")
            np.subtract(base, shift, out=shift)
            np.right_shift(window, shift, out=window)
            np.bitwise_and(window, mask, out=window)
            np.take(table, window, out=code_rows[t], mode="clip")  # "raise" is 7x slower
            pos += (code_rows[t] >> 44 if pairs else code_rows[t] & 31).astype(np.int32, copy=False) & 63
            t += 1
    pos_rows[t], code_rows[t] = pos, 0
    all_pos, all_codes = pos_rows[: t + 1], code_rows[: t + 1]
    if pairs:
        all_pos, all_codes = _expand_pairs(all_pos, all_codes)
    first_past = (all_pos >= ends32[None, :]).argmax(axis=0)  # where the next lane's true chain starts
    return all_pos, all_codes, all_pos[first_past, np.arange(lanes)].astype(np.int64)


def _expand_pairs(pos: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per code: each step's first code, then its second (position -1 when there is none)."""
    steps, lanes = pos.shape
    out_pos = np.empty((2 * steps, lanes), dtype=np.int32)
    out_codes = np.empty((2 * steps, lanes), dtype=np.int32)
    out_pos[0::2] = pos
    out_pos[1::2] = np.where((codes >> 11) & 1 == 1, pos + (codes & 31), -1)
    out_codes[0::2] = (((codes >> 12) & 0xFFFF) << 6) | (codes & 63)
    out_codes[1::2] = (((codes >> 28) & 0xFFFF) << 6) | ((codes >> 6) & 31)
    return out_pos, out_codes


def _widen(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] >= rows:
        return a
    pad = np.full((rows - a.shape[0], a.shape[1]), -1, dtype=a.dtype)
    return np.concatenate([a, pad])


def _inconsistent(pos: np.ndarray, entry: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lanes whose decoded chain does not contain their entry point (the previous lane's exit).

    A lane starts at most ``LEAD_BITS + max code length`` bits before its entry and advances at least a bit a
    step, so only its first rows can hold the entry."""
    head = pos[: 2 * (LEAD_BITS + 32)]
    met = (head == entry.astype(pos.dtype)[None, :]).any(axis=0) | (entry >= ends)  # no code starts in the lane
    met[0] = True
    return np.flatnonzero(~met)


def _collect(pos: np.ndarray, packed: np.ndarray, entry: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lane-major packed codes from each lane's entry point to its end."""
    keep = ((pos >= entry.astype(pos.dtype)[None, :]) & (pos < ends.astype(pos.dtype)[None, :])).T
    return packed.T[keep]


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
