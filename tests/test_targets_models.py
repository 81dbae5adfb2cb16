"""Selection on real models (issues 13 and 14): attention, RNNs, ties, parametrized and lazy layers, dead keys."""

import warnings

import pytest
import torch
from torch import nn

from lightning_compress.core.stats import model_stats
from lightning_compress.core.targets import dead_keys, find_targets, per_target_value


def names(ts):
    return [t.name for t in ts]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.emb.weight  # weight tying: one Parameter, two modules


def test_attention_embedding_and_tied_head_selected_once():
    ts = find_targets(Tied())
    assert names(ts) == ["emb.weight", "attn.in_proj_weight", "attn.out_proj.weight"]
    assert ts[0].aliases == ("head.weight",)
    assert ts[0].param.shape == (11, 8)


def test_tie_selected_once_even_when_both_modules_types_are_asked_for():
    # issue 13 item 1: before, types=[linear, embedding] selected the one Parameter twice (emb.weight and
    # head.weight), so sharing transformed its gradient twice and pruning/stats counted it twice
    ts = find_targets(Tied(), types=["linear", "embedding"])
    assert names(ts) == ["emb.weight", "attn.out_proj.weight"]
    assert len({id(t.param) for t in ts}) == len(ts)


def test_tied_tensor_counted_once_in_stats():
    model = Tied()
    stats = model_stats(model)
    assert [s.name for s in stats.layers] == ["emb.weight", "attn.in_proj_weight", "attn.out_proj.weight"]
    assert stats.layers[0].aliases == ("head.weight",)
    unique = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    assert stats.numel + stats.other_numel == unique
    assert "tied: head.weight" in stats.table()


def test_a_tie_is_selected_through_either_name():
    model = Tied()
    assert names(find_targets(model, include="head")) == ["emb.weight"]
    assert names(find_targets(model, types=["linear"])) == ["attn.out_proj.weight", "head.weight"]
    assert "emb.weight" not in names(find_targets(model, exclude="head*"))


def test_separate_qkv_projections_and_rnn_matrices():
    attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=6)
    assert names(find_targets(attn)) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    got = names(find_targets(lstm))
    assert got[:3] == ["weight_ih_l0", "weight_hh_l0", "weight_hr_l0"]
    assert "weight_hh_l1_reverse" in got and len(got) == 12 and not any("bias" in n for n in got)
    gru = nn.GRU(4, 5)
    assert names(find_targets(gru)) == ["weight_ih_l0", "weight_hh_l0"]
    assert names(find_targets(nn.Sequential(gru, nn.Linear(5, 2)), types=["rnn"])) == ["0.weight_ih_l0", "0.weight_hh_l0"]


@pytest.mark.parametrize("wrap", ["parametrize", "old_weight_norm", "spectral_norm"])
def test_parametrized_layer_is_never_silently_skipped(wrap):
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    if wrap == "parametrize":
        torch.nn.utils.parametrizations.weight_norm(model[0])
    elif wrap == "spectral_norm":
        torch.nn.utils.spectral_norm(model[0])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.nn.utils.weight_norm(model[0])
    with pytest.warns(UserWarning, match=r"\['0'\] hold a parametrized weight.*remove_parametrizations"):
        assert names(find_targets(model, owner="Pruning")) == ["1.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluded on purpose: no warning
        assert names(find_targets(model, exclude="0")) == ["1.weight"]
    with pytest.raises(ValueError, match="parametrized layers"), pytest.warns(UserWarning):
        find_targets(model, include="0*")


def test_lazy_layer_is_a_clear_error():
    model = nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"\['0'\] are lazy .*forward pass"):
        find_targets(model, owner="WeightSharing")
    assert names(find_targets(model, exclude="0")) == ["1.weight"]
    model(torch.zeros(1, 3))
    assert names(find_targets(model)) == ["0.weight", "1.weight"]


def test_dead_keys_warn_by_name_and_type_keys_that_match_nothing_work_with_a_warning():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    ts = find_targets(mlp)
    # Deep Compression's recipe on a model without convs works (issue 17 item 1) and says "conv" decided nothing
    with pytest.warns(UserWarning, match=r"bits key 'conv' names a layer type this model has no selected layer of"):
        assert per_target_value({"conv": 8, "linear": 5}, ts, "WeightSharing", "bits") == {"0.weight": 5, "1.weight": 5}
    with pytest.warns(UserWarning, match=r"final_sparsity key '0\*' is overridden"):
        assert per_target_value({"0*": 0.9, "*": 0.5}, ts, "P", "final_sparsity") == {"0.weight": 0.5, "1.weight": 0.5}
    assert set(dead_keys({"9*": 1, "0*": 2, "*": 3, "1*": 4}, ts)) == {"9*", "0*"}
    assert dead_keys({"*": 1, "0*": 2}, ts) == {}
