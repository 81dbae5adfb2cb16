"""Layer codecs: byte-exact round trips over shapes, sparsities, codebooks and dtypes; layout choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_compress.core.stats import layer_stats, sparse_entries
from lightning_compress.format.errors import CorruptedFileError
from lightning_compress.format.layer import decode_layer, encode_layer, supports_layer_codec
from lightning_compress.format.raw import decode_raw, encode_raw

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT_VIEW[t.element_size()])


def canonical_zero(t: torch.Tensor) -> torch.Tensor:
    """What the default codec restores: -0.0 becomes +0.0, every other bit pattern is kept."""
    b = bits(t).clone()
    b[b == torch.iinfo(b.dtype).min] = 0
    return b


def round_trip(t: torch.Tensor, keep_negative_zero: bool = False) -> tuple[torch.Tensor, object]:
    enc = encode_layer(t, keep_negative_zero=keep_negative_zero)
    out = decode_layer(enc.payload, tuple(t.shape), t.dtype)
    assert out.dtype == t.dtype and out.shape == t.shape
    return out, enc


@st.composite
def layers(draw):
    """Random pruned and/or shared tensors: any shape, sparsity, codebook size and dtype."""
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9 if ndim > 2 else 60), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(FLOATS))
    seed = draw(st.integers(0, 2**31 - 1))
    keep = draw(st.sampled_from([0.0, 0.001, 0.05, 0.3, 0.7, 1.0]))
    k = draw(st.sampled_from([0, 1, 2, 3, 16, 300]))  # 0 = not shared
    g = torch.Generator().manual_seed(seed)
    if k:
        w = torch.randn(k, generator=g)[torch.randint(0, k, shape, generator=g)]
    else:
        w = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) < keep
    if draw(st.booleans()) and len(shape) >= 2:
        mask[: shape[0] // 2] = False  # empty rows
    w = (w * mask).to(dtype)  # negative pruned weights become -0.0, as with real masking
    return w


@settings(max_examples=120, deadline=None)
@given(layers())
def test_round_trip_is_bit_exact_up_to_the_sign_of_zero(w):
    out, enc = round_trip(w)
    assert torch.equal(bits(out), canonical_zero(w))
    assert enc.nonzeros == int((canonical_zero(w) != 0).sum())
    if enc.sparse:
        positions = torch.from_numpy(np.flatnonzero(canonical_zero(w).reshape(-1).numpy()))
        assert enc.entries == sparse_entries(positions, enc.index_bits)  # the layout stats.py estimates


@settings(max_examples=60, deadline=None)
@given(layers(), st.integers(0, 2**31 - 1))
def test_keep_negative_zero_is_fully_bit_exact_with_nan_payloads(w, seed):
    w = w.clone()
    b = bits(w).reshape(-1)
    g = torch.Generator().manual_seed(seed)
    if b.numel() >= 3:
        idx = torch.randperm(b.numel(), generator=g)[:3]
        nan_patterns = {2: [0x7E01, -0x01FF, 0x7C01], 4: [0x7FC00001, -0x3FFFFF, 0x7F800001], 8: [0x7FF8000000000001] * 3}
        b[idx[:2]] = torch.tensor(nan_patterns[w.element_size()][:2], dtype=b.dtype)
        b[idx[2]] = torch.iinfo(b.dtype).min  # -0.0
    out, _ = round_trip(w, keep_negative_zero=True)
    assert torch.equal(bits(out), bits(w))


def test_fully_pruned_layer():
    w = torch.zeros(300, 100)
    out, enc = round_trip(w)
    assert torch.equal(bits(out), bits(w))
    assert enc.nonzeros == 0 and enc.sparse and enc.entries == 0
    assert len(enc.payload) <= 8


def test_all_negative_zero_layer_is_a_pruned_layer_by_default():
    w = -torch.zeros(50, 50)
    out, enc = round_trip(w)
    assert enc.nonzeros == 0 and torch.equal(bits(out), torch.zeros(50, 50, dtype=torch.int32))
    out, enc = round_trip(w, keep_negative_zero=True)
    assert enc.nonzeros == 2500 and torch.equal(bits(out), bits(w))


@pytest.mark.parametrize("value", [0.0, 1.5, -3.25, float("inf"), float("nan")])
def test_single_element_layers(value):
    w = torch.tensor([[value]])
    out, _ = round_trip(w)
    assert torch.equal(bits(out), canonical_zero(w))


def test_huge_gaps_need_fillers():
    w = torch.zeros(1_000_003)
    w[0], w[500_000], w[-1] = 1.0, -2.0, 3.0
    out, enc = round_trip(w)
    assert torch.equal(bits(out), bits(w))
    assert enc.sparse and enc.nonzeros == 3
    positions = torch.tensor([0, 500_000, 1_000_002])
    assert enc.entries == sparse_entries(positions, enc.index_bits)
    assert len(enc.payload) < 60  # three values, not a million zeros


def test_filler_widths_are_all_exact():
    # Gaps of exactly 2**b, 2**b + 1 and multiples stress the filler arithmetic at every width.
    positions = [0, 1, 3, 7, 8, 16, 17, 33, 65, 129, 257, 513, 1025, 2049, 4097, 8193, 16385, 32769, 65537, 131073]
    w = torch.zeros(131074)
    w[positions] = torch.arange(1, len(positions) + 1, dtype=torch.float32)
    for ib in range(1, 17):
        from lightning_compress.format.layer import _relative_indices

        symbols, owner = _relative_indices(np.array(positions), ib)
        assert symbols.size == sparse_entries(torch.tensor(positions), ib)
        assert np.cumsum(symbols + 1)[-1] - 1 == positions[-1]
        assert (owner >= 0).sum() == len(positions)
    out, _ = round_trip(w)
    assert torch.equal(out, w)


def test_layout_choice_follows_the_data():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(100, 100, generator=g)
    _, enc = round_trip(dense)
    assert enc.codec == "dense/raw" and len(enc.payload) == 1 + 4 * 10_000

    codebook = torch.randn(32, generator=g)
    shared = codebook[torch.randint(0, 32, (300, 300), generator=g)]
    _, enc = round_trip(shared)
    assert not enc.sparse and enc.codebook == 32 and enc.value_bits == 5

    pruned_shared = shared * (torch.rand(300, 300, generator=g) < 0.08)
    _, enc = round_trip(pruned_shared)
    assert enc.sparse and 0 < enc.codebook <= 33 and enc.index_stream.huffman
    # Huffman of the relative indices beats their fixed width, and stays near the entropy.
    assert enc.index_stream.bits_per_symbol < enc.index_bits
    assert enc.index_stream.data_bits <= enc.index_stream.entropy_bits + enc.index_stream.count


@settings(max_examples=40, deadline=None)
@given(layers())
def test_never_larger_than_the_stats_estimate(w):
    """stats.py estimates the same layouts without Huffman; the real payload may only add a few header bytes."""
    w = w.float()
    _, enc = round_trip(w)
    est = layer_stats("w", w).compressed_bytes
    assert len(enc.payload) <= est + 20
    assert len(enc.payload) <= 1 + 4 * w.numel()  # never worse than dense raw plus the mode byte


def test_corrupted_payloads_raise():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g)[torch.randint(0, 16, (40, 40), generator=g)] * (torch.rand(40, 40, generator=g) < 0.2)
    enc = encode_layer(w)
    with pytest.raises(CorruptedFileError):
        decode_layer(enc.payload[:-1], (40, 40), torch.float32)
    with pytest.raises(CorruptedFileError):
        decode_layer(enc.payload + b"\x00", (40, 40), torch.float32)
    with pytest.raises(CorruptedFileError):
        decode_layer(bytes([0xFF]) + enc.payload[1:], (40, 40), torch.float32)
    with pytest.raises(CorruptedFileError):
        decode_layer(enc.payload, (10, 10), torch.float32)  # positions past the end of a smaller tensor


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        torch.tensor(7, dtype=torch.int64),  # 0-dim, e.g. BatchNorm's num_batches_tracked
        torch.tensor([True, False, True]),
        torch.randn(3, 5).to(torch.bfloat16),
        torch.randn(2, 2, dtype=torch.float64),
        torch.empty(0, 4),
        torch.tensor([-0.0, float("nan"), float("-inf")]),
        torch.randint(0, 255, (17,), dtype=torch.uint8),
        torch.randn(4, 4)[:, ::2],  # non-contiguous
    ],
)
def test_raw_tensors_round_trip_bit_exactly(tensor):
    payload = encode_raw(tensor)
    assert len(payload) == tensor.numel() * tensor.element_size()
    out = decode_raw(payload, tuple(tensor.shape), tensor.dtype)
    assert out.dtype == tensor.dtype and out.shape == tensor.shape
    a, b = out.contiguous().reshape(-1), tensor.contiguous().reshape(-1)
    if a.dtype.is_floating_point:
        a, b = bits(a), bits(b)
    assert torch.equal(a, b)
    with pytest.raises(CorruptedFileError):
        decode_raw(payload + b"\x00", tuple(tensor.shape), tensor.dtype)


def test_layer_codec_only_for_floats():
    assert supports_layer_codec(torch.zeros(2, dtype=torch.bfloat16))
    assert not supports_layer_codec(torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        encode_layer(torch.zeros(2, dtype=torch.int32))
