"""Masks computed on FSDP2 parts equal the single-process ones (2 ranks, gloo).

Same weights, same current masks: each rank computes its part through ``core/sharded_masks.apply_rule`` (the
path ``GradualMagnitudePruning`` takes under ``ModelParallelStrategy``); gathered, the masks must equal what
one process computes with the rule itself, bit for bit. Weights are rounded to a few levels so that ties
(equal magnitudes) straddle the ranks' boundaries, and some entries are pruned already (masks only grow).
Layers: 33 rows (17 + 16 on two ranks), 4 rows (2 + 2), 1 row (1 + 0: rank 1 holds nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_helpers as FH  # noqa: E402

from lightning_compress.core import distributed as D  # noqa: E402
from lightning_compress.core.mask_rules import GlobalMagnitude, LayerMagnitude, NMStructured, StdThreshold  # noqa: E402

SHAPES = [(33, 16), (4, 32), (1, 8)]
RULES = {"layer": (LayerMagnitude(), [0.5, 0.7, 0.3]), "global": (GlobalMagnitude(), [0.6, 0.6, 0.6]),
         "nm": (NMStructured(2, 4), [0.5, 0.5, 0.5]), "std": (StdThreshold(), [0.8, 1.2, 0.5])}


def _layers():
    g = torch.Generator().manual_seed(3)
    weights = [(torch.randn(s, generator=g) * 4).round() / 4 for s in SHAPES]  # few levels: many ties
    masks = [torch.rand(s, generator=g) > 0.1 for s in SHAPES]
    return weights, masks


def _checks(rank: int, world: int) -> dict:
    from torch.distributed.tensor import Shard, distribute_tensor

    from lightning_compress.core.sharded_masks import apply_rule

    mesh = FH.cpu_mesh(world)
    weights, masks = _layers()
    params = [distribute_tensor(w, mesh, [Shard(0)]) for w in weights]
    local_masks = [D.shard_like(m, p) for m, p in zip(masks, params)]
    out = {}
    for name, (rule, levels) in RULES.items():
        new, targets = apply_rule(rule, params, local_masks, levels)
        out[name] = ([D.full_like(m, p) for m, p in zip(new, params)], targets,
                     [tuple(m.shape) == tuple(D.local_tensor(p).shape) for m, p in zip(new, params)])
    return out


@pytest.fixture(scope="module")
def ranks():
    return FH.spawned_checks("test_fsdp_masks")


@pytest.mark.parametrize("rule", sorted(RULES))
def test_sharded_masks_equal_single_process_masks(ranks, rule):
    weights, masks = _layers()
    fn, levels = RULES[rule]
    want, want_targets = fn(weights, masks, levels)
    for r in ranks:
        got, targets, local_shapes = r[rule]
        assert all(local_shapes)  # each rank keeps masks shaped like its part
        for g, w, old in zip(got, want, masks):
            assert torch.equal(g, w)
            assert not bool((g & ~old).any())  # masks only grow
        assert targets == pytest.approx(want_targets)
    if rule == "global":  # the total is met exactly (ties split across the ranks in flat order)
        assert int(sum((~w).sum() for w in want)) == round(0.6 * sum(m.numel() for m in masks))

