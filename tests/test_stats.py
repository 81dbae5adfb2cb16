"""Exact numbers of core.stats on hand-built sparse and shared tensors."""

import math

import pytest
import torch
from torch import nn

from lightning_compress.core.stats import layer_stats, model_stats, sparse_entries


def test_sparse_shared_layer_exact_numbers():
    w = torch.tensor([0, 0, 1.5, 0, 0, 0, 0, -2, 0, 1.5])
    s = layer_stats("w", w)
    assert (s.numel, s.nonzeros, s.distinct) == (10, 3, 2)
    assert s.shared and s.bits == 1
    assert s.sparsity == pytest.approx(0.7)
    # positions 2, 7, 9 -> gaps 3, 5, 2. Values need 2 bits (two centroids + the filler zero).
    # index width 3 (span 8): 3 entries x (3 + 2) bits = 15 bits, beating dense 10 x 2 = 20 bits;
    # plus the codebook 2 x 32 bits = 79 bits -> 10 bytes.
    assert s.index_bits == 3
    assert s.compressed_bytes == 10
    assert s.dense_bytes == 40
    assert s.ratio == pytest.approx(4.0)


def test_relative_index_fillers():
    pos = torch.tensor([0, 40])  # gaps 1 and 40
    assert sparse_entries(pos, 3) == 1 + 5  # 40 positions need ceil(40 / 8) = 5 entries (4 fillers)
    assert sparse_entries(pos, 6) == 2
    assert sparse_entries(torch.tensor([], dtype=torch.long), 4) == 0


def test_dense_unshared_layer_is_not_compressed():
    w = torch.arange(1, 301, dtype=torch.float32)  # 300 distinct values: not shared
    s = layer_stats("w", w)
    assert not s.shared and s.bits == 32 and s.index_bits == 0
    assert s.compressed_bytes == s.dense_bytes == 1200


def test_fully_pruned_layer():
    s = layer_stats("w", torch.zeros(4, 5))
    assert s.nonzeros == 0 and s.distinct == 0 and s.sparsity == 1.0
    assert s.compressed_bytes == 0


def test_model_stats_totals_and_other_params():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0] = 1.0
    st = model_stats(model)
    assert [s.name for s in st.layers] == ["0.weight", "2.weight"]
    assert st.numel == 12 + 6 and st.other_numel == 3
    assert st.nonzeros == 1 + int((model[2].weight != 0).sum())
    assert st.dense_bytes == (18 + 3) * 4
    assert st.compressed_bytes == sum(s.compressed_bytes for s in st.layers) + 12
    assert st.ratio == pytest.approx(st.dense_bytes / st.compressed_bytes)
    assert st.sparsity_ratio == pytest.approx(18 / st.nonzeros)
    table = st.table()
    assert "0.weight" in table and "**total**" in table


def test_zoo_weight_counts_match_the_paper():
    from lightning_compress.zoo import LeNet5, LeNet300100

    assert model_stats(LeNet300100()).numel == 266_200
    assert model_stats(LeNet5()).numel == 430_500


def test_quantized_pruned_lenet_estimate_is_paper_scale():
    """Keep 8% of weights with 6-bit codebooks: the estimate lands where the paper's arithmetic puts it."""
    torch.manual_seed(0)
    w = torch.randn(300, 784)
    keep = torch.rand_like(w) < 0.08
    levels = torch.linspace(-2, 2, 64)
    w = torch.where(keep, levels[torch.randint(0, 64, w.shape)], torch.zeros(()))
    s = layer_stats("fc1.weight", w)
    assert s.shared and s.bits == 6
    # Each kept weight costs 7 value bits (64 levels + filler zero) + index bits; about 8% kept.
    bits_per_nonzero = 8 * s.compressed_bytes / s.nonzeros
    assert 7 + 3 < bits_per_nonzero < 7 + 6
    assert math.isclose(s.ratio, 32 * s.numel / (8 * s.compressed_bytes), rel_tol=1e-12)
