"""Mask math: exact counts, determinism, global threshold without concatenation, N:M, Han's threshold."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_compress.core.masks import (
    apply_mask_,
    global_magnitude_masks,
    magnitude_mask,
    nm_mask,
    num_to_prune,
    pack_mask,
    sparsity,
    threshold_mask,
    unpack_mask,
)
from lightning_compress.core.mask_rules import GlobalMagnitude, LayerMagnitude, NMStructured, StdThreshold, choose_rule


def reference_masks(weights, fraction, masks=None):
    """Stable argsort over the concatenation: the obvious (memory-hungry) answer."""
    masks = masks or [torch.ones_like(w, dtype=torch.bool) for w in weights]
    score = torch.cat([torch.where(m, w.abs(), torch.tensor(-1.0)).flatten() for w, m in zip(weights, masks)])
    k = num_to_prune(score.numel(), fraction)
    keep = torch.ones_like(score, dtype=torch.bool)
    keep[torch.argsort(score, stable=True)[:k]] = False
    keep &= torch.cat([m.flatten() for m in masks])
    out, i = [], 0
    for w in weights:
        out.append(keep[i : i + w.numel()].view_as(w))
        i += w.numel()
    return out


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.98, 1.0])
def test_layerwise_exact_count_and_smallest_pruned(fraction):
    torch.manual_seed(0)
    w = torch.randn(37, 53)
    mask = magnitude_mask(w, fraction)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int((~mask).sum()) == round(fraction * w.numel())
    if 0 < fraction < 1:
        assert w.abs()[~mask].max() <= w.abs()[mask].min()
    assert torch.equal(mask, reference_masks([w], fraction)[0])


def test_ties_are_broken_by_index_deterministically():
    w = torch.tensor([[1.0, 0.5, 0.5, 0.5], [0.5, 2.0, 0.5, 3.0]])
    mask = magnitude_mask(w, 0.5)  # 4 of 8: five 0.5's tie, the first four in flat order go
    assert mask.tolist() == [[True, False, False, False], [False, True, True, True]]
    g = global_magnitude_masks([w, w.clone()], 0.25)  # 4 of 16: all from the first layer
    assert g[0].tolist() == mask.tolist() and bool(g[1].all())


def test_masks_only_grow_and_pruned_count_toward_target():
    torch.manual_seed(1)
    w = torch.randn(40, 40)
    m1 = magnitude_mask(w, 0.5)
    w2 = torch.randn(40, 40)  # weights moved; the new ranking differs
    w2 = w2 * m1  # ...but pruned weights are held at zero, as the callback does
    m2 = magnitude_mask(w2, 0.7, m1)
    assert not (m2 & ~m1).any()  # nothing revived
    assert int((~m2).sum()) == 1120
    # even if a pruned weight were nonzero, it stays pruned and counts toward the target
    m3 = magnitude_mask(torch.randn(40, 40), 0.8, m2)
    assert not (m3 & ~m2).any() and int((~m3).sum()) == 1280
    # a lower target than already reached never revives
    assert torch.equal(magnitude_mask(w, 0.3, m3), m3)


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=4),
    fraction=st.floats(0, 1),
    pre=st.floats(0, 0.6),
    quantize=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_global_equals_concatenated_reference(shapes, fraction, pre, quantize, seed):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=g) for s in shapes]
    if quantize:  # many exact ties
        weights = [torch.round(w * 2) / 2 for w in weights]
    start = [torch.rand(w.shape, generator=g) >= pre for w in weights]
    got = global_magnitude_masks(weights, fraction, start)
    want = reference_masks(weights, fraction, start)
    for a, b, s in zip(got, want, start):
        assert torch.equal(a, b)
        assert not (a & ~s).any()
    total = sum(w.numel() for w in weights)
    already = sum(int((~s).sum()) for s in start)
    assert sum(int((~a).sum()) for a in got) == max(already, round(fraction * total))


def test_global_ranks_across_layers():
    small = torch.full((10, 10), 0.01)
    big = torch.randn(10, 10).abs() + 1
    masks = global_magnitude_masks([small, big], 0.5)
    assert not masks[0].any() and masks[1].all()


def test_nm_two_four():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    mask = nm_mask(w, 2, 4)
    groups = mask.view(8, 4, 4)
    assert (groups.sum(-1) == 2).all()
    scores = w.abs().view(8, 4, 4)
    kept_min = torch.where(groups, scores, torch.tensor(float("inf"))).amin(-1)
    dropped_max = torch.where(~groups, scores, torch.tensor(-1.0)).amax(-1)
    assert (kept_min >= dropped_max).all()
    assert sparsity(mask) == 0.5


def test_nm_conv_groups_along_flattened_input_and_grows():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)  # 36 inputs per filter
    m3 = nm_mask(w, 3, 4)
    m2 = nm_mask(torch.randn(6, 4, 3, 3), 2, 4, m3)  # other weights: pruned ones go first, none revive
    assert (m2.view(6, 9, 4).sum(-1) == 2).all()
    assert not (m2 & ~m3).any()
    with pytest.raises(ValueError, match="multiple of m=4"):
        nm_mask(torch.randn(3, 5), 2, 4)
    with pytest.raises(ValueError, match=">= 2 dims"):
        nm_mask(torch.randn(8), 2, 4)
    with pytest.raises(ValueError, match="n <= m"):
        nm_mask(w, 5, 4)


def test_nm_ties_keep_lower_index():
    w = torch.ones(1, 4)
    assert nm_mask(w, 2, 4).tolist() == [[True, True, False, False]]


def test_han_threshold():
    torch.manual_seed(0)
    w = torch.randn(100, 100)
    q = 0.7
    mask = threshold_mask(w, q)
    thr = q * float(w.std())
    assert torch.equal(mask, w.abs() >= thr)
    # for a Gaussian, P(|w| < 0.7 sigma) ~ 0.516
    assert sparsity(mask) == pytest.approx(0.516, abs=0.02)
    # zeroing shrinks the std (zeros included), so repeating the same q on the same weights prunes nothing new
    w2 = w * mask
    assert torch.equal(threshold_mask(w2, q, mask), mask)
    # a later round with a larger q (the callback ramps q) prunes more and never revives
    mask2 = threshold_mask(w2, 1.5, mask)
    assert torch.equal(mask2, mask & (w2.abs() >= 1.5 * float(w2.std())))
    assert sparsity(mask2) > sparsity(mask) and not (mask2 & ~mask).any()
    with pytest.raises(ValueError, match="q must be"):
        threshold_mask(w, -1)


def test_apply_mask_gives_exact_zeros_and_validation():
    w = torch.randn(5, 5)
    m = magnitude_mask(w, 0.6)
    apply_mask_(w, m)
    assert int((w == 0).sum()) == 15 and torch.count_nonzero(w) == 10
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        magnitude_mask(w, 0.5, m.float())
    with pytest.raises(ValueError, match="sparsity must be in"):
        magnitude_mask(w, 1.5)


def test_bf16_weights():
    torch.manual_seed(0)
    w = torch.randn(20, 20).bfloat16()
    m = magnitude_mask(w, 0.75)
    assert int((~m).sum()) == 300
    assert torch.equal(global_magnitude_masks([w], 0.75)[0], m)


@pytest.mark.parametrize("shape", [(3, 5), (7,), (0, 4), (2, 3, 3, 3), (64, 300)])
def test_pack_unpack_round_trip_is_exact_at_one_eighth_byte(shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) > 0.4
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_mask(packed, shape), mask)
    with pytest.raises(ValueError, match="packed mask"):
        unpack_mask(packed, (mask.numel() + 9,))


def test_rules_share_one_interface():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(8, 16, generator=g), torch.randn(4, 8, generator=g)]
    masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    new, targets = LayerMagnitude()(weights, masks, [0.5, 0.25])
    assert [int((~m).sum()) for m in new] == [64, 8] and targets == [0.5, 0.25]
    new, targets = GlobalMagnitude()(weights, masks, [0.5, 0.5])
    assert sum(int((~m).sum()) for m in new) == 80 and targets == [0.5, 0.5]
    rule = NMStructured(2, 4)
    new, targets = rule(weights, masks, [0.25, 0.5])
    assert targets == [0.25, 0.5] == rule.asked([0.25, 0.5])
    assert ((new[0].view(8, 4, 4)).sum(-1) == 3).all() and ((new[1].view(4, 2, 4)).sum(-1) == 2).all()
    new, targets = StdThreshold()(weights, masks, [1.0, 0.0])
    assert torch.equal(new[0], weights[0].abs() >= weights[0].std()) and bool(new[1].all())
    assert targets[1] == 0.0 and StdThreshold().asked([1.0]) is None
    assert isinstance(choose_rule("global", "magnitude", None), GlobalMagnitude)
    assert isinstance(choose_rule("layer", "magnitude", (2, 4)), NMStructured)
    assert isinstance(choose_rule("layer", "std", None), StdThreshold)
    assert isinstance(choose_rule("layer", "magnitude", None), LayerMagnitude)
