import pytest
import torch
from torch import nn

from lightning_compress.core.targets import find_targets, per_target_value, resolve_types


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc1 = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, 2)
        self.emb = nn.Embedding(5, 3)


def names(ts):
    return [t.name for t in ts]


def test_default_selection_is_every_weight_matrix_in_module_order():
    # issue 14: embeddings are weight matrices too (they were left out before); norms and biases stay out
    assert names(find_targets(Net())) == ["conv.weight", "fc1.weight", "fc2.weight", "emb.weight"]


def test_include_exclude_and_types():
    net = Net()
    assert names(find_targets(net, include=["fc*"])) == ["fc1.weight", "fc2.weight"]
    assert names(find_targets(net, exclude="fc2")) == ["conv.weight", "fc1.weight", "emb.weight"]
    assert names(find_targets(net, types=["linear"])) == ["fc1.weight", "fc2.weight"]
    assert names(find_targets(net, types=["embedding"])) == ["emb.weight"]
    assert names(find_targets(net, include="fc1", param_names=("weight", "bias"))) == ["fc1.weight", "fc1.bias"]


def test_pattern_that_matches_nothing_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'fc9'"):
        find_targets(Net(), include=["fc9"], owner="Pruning")
    with pytest.raises(ValueError, match="no eligible layer"):
        find_targets(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="unknown layer type 'transformer'"):
        resolve_types(["transformer"])


def test_per_target_value_globs_types_and_defaults():
    ts = find_targets(Net(), types=["linear", "conv"])
    assert per_target_value(0.5, ts, "x", "sparsity") == {n: 0.5 for n in names(ts)}
    got = per_target_value({"*": 0.9, "fc2*": 0.7}, ts, "x", "sparsity")
    assert got == {"conv.weight": 0.9, "fc1.weight": 0.9, "fc2.weight": 0.7}
    assert per_target_value({"conv": 8, "linear": 5}, ts, "x", "bits") == {
        "conv.weight": 8,
        "fc1.weight": 5,
        "fc2.weight": 5,
    }
    with pytest.raises(ValueError, match="no value for layers"):
        per_target_value({"fc1": 0.5}, ts, "x", "sparsity")
    # issue 13 item 5: a key that matches nothing is a warning naming it (no longer an error)
    with pytest.warns(UserWarning, match="'nope' matches no selected layer"):
        assert per_target_value({"nope": 0.5, "*": 0.1}, ts, "x", "sparsity")["fc1.weight"] == 0.1
