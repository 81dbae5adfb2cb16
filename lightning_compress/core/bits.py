"""Bit widths and the constants every size computation shares (stats, sharing, the file format).

One definition of "how many bits does an index into n symbols take", so the monitor's estimate, the sharing
callback's bit accounting and the file's fixed-width codes can never disagree.
"""

from __future__ import annotations

import math

#: Bits of one dense weight (the unit of every compression ratio: 32-bit dense bytes / compressed bytes).
FLOAT_BITS = 32
#: Most distinct values a layer may hold to count as shared (8-bit indices); above it, a layer is stored raw.
MAX_SHARED_VALUES = 256
#: Widest fixed-width index the format writes (codebooks of up to 2^16 entries).
MAX_INDEX_BITS = 16


def index_bits(symbols: int, minimum: int = 1) -> int:
    """Fixed width of an index into ``symbols`` values: ``ceil(log2(symbols))``, at least ``minimum``.

    The file format uses ``minimum=0`` (a one-symbol stream needs no bits); sizes shown to users use 1.
    """
    if symbols <= 1:
        return minimum
    return max(minimum, math.ceil(math.log2(symbols)))


__all__ = ["FLOAT_BITS", "MAX_INDEX_BITS", "MAX_SHARED_VALUES", "index_bits"]
