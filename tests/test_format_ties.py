"""A tied tensor (one Parameter under two names) is stored once: later names are alias entries (version 2)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lightning_compress.export import decode_file, encode_state_dict, load_compressed, read_compressed, save_compressed
from lightning_compress.format.container import ALIAS, parse_header
from lightning_compress.format.selection import compressed_names
from lightning_compress.zoo.tinygpt import TinyGPT

SMALL = dict(d_model=32, n_layers=1, n_heads=2, context=16)


def _gpt(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(**SMALL)


def test_tinygpt_head_is_stored_once_round_trips_and_keeps_its_tie(tmp_path):
    model = _gpt()
    assert model.head.weight is model.tok.weight
    report = save_compressed(model, tmp_path / "gpt.lcz")
    before, _ = encode_state_dict(model.state_dict(), compressed_names(model), aliases={})  # the old writer's file
    head_bytes = model.head.weight.numel() * 4
    assert report.format_version == 2 and [(a.name, a.target) for a in report.aliases] == [("head.weight", "tok.weight")]
    saved = len(before) - report.file_bytes
    assert head_bytes <= saved <= head_bytes + 16  # the raw head, less a one-byte alias payload, plus its row
    assert report.file_bytes == (tmp_path / "gpt.lcz").stat().st_size
    assert report.header_bytes + report.layer_bytes + report.raw_bytes + report.alias_bytes == report.file_bytes
    assert report.dense_bytes == sum(t.numel() * 4 for t in model.parameters())  # the tied tensor once
    assert "| head.weight | 256x32 | alias of tok.weight |" in report.table()
    entries = parse_header((tmp_path / "gpt.lcz").read_bytes())
    head = [e for e in entries if e.name == "head.weight"][0]
    assert head.codec == ALIAS and head.alias_of == "tok.weight" and head.nbytes == 1

    fresh = _gpt(seed=1)
    load_compressed(tmp_path / "gpt.lcz", fresh)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh.head.weight is fresh.tok.weight  # load_state_dict copied into the one Parameter
    with torch.device("meta"):
        meta = TinyGPT(**SMALL)
    load_compressed(tmp_path / "gpt.lcz", meta)  # assign=True: the tie must survive too
    assert meta.head.weight is meta.tok.weight and torch.equal(meta.head.weight, model.tok.weight)
    stored = read_compressed(tmp_path / "gpt.lcz")
    assert stored["head.weight"] is stored["tok.weight"]


def test_plain_state_dict_keys_sharing_storage_are_stored_once():
    t = torch.randn(8, 4)
    state = {"a": t, "b": t, "view": t.view(-1), "copy": t.clone(), "c": t}
    data, report = encode_state_dict(state, compress=["a"])
    assert [(a.name, a.target) for a in report.aliases] == [("b", "a"), ("c", "a")]  # a view or a copy is not t
    out = decode_file(data)
    assert list(out) == list(state) and out["b"] is out["a"] and out["c"] is out["a"]
    for key, value in state.items():
        assert torch.equal(out[key], value), key
    alone, _ = encode_state_dict({"a": t, "view": t.view(-1), "copy": t.clone()}, compress=["a"])
    assert alone[4] == 1 and data[4] == 2  # no alias: version 1 as before


def test_compressing_an_alias_name_compresses_the_stored_tensor():
    t = torch.zeros(64, 64)
    t[::3] = 0.5
    data, report = encode_state_dict({"a": t, "b": t}, compress=["b"])
    assert [l.name for l in report.layers] == ["a"] and report.raw == [] and report.aliases[0].target == "a"
    assert torch.equal(decode_file(data)["b"], t)


class _ReadOnce(Mapping):
    """A gathered state_dict: its values are new tensors at each read (no shared storage), reads recorded."""

    def __init__(self, state):
        self.state, self.reads = state, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.state[key].clone()

    def __iter__(self):
        return iter(self.state)

    def __len__(self):
        return len(self.state)


def test_gathered_state_dict_ties_come_from_the_model_and_the_alias_is_never_read(tmp_path):
    model = _gpt()
    gathered = _ReadOnce(model.state_dict())
    report = save_compressed(model, tmp_path / "g.lcz", state_dict=gathered)
    assert "head.weight" not in gathered.reads and sorted(gathered.reads) == sorted(k for k in gathered if k != "head.weight")
    assert [a.name for a in report.aliases] == ["head.weight"]
    plain = save_compressed(model, tmp_path / "p.lcz")
    assert (tmp_path / "g.lcz").read_bytes() == (tmp_path / "p.lcz").read_bytes()
    assert plain.file_bytes == report.file_bytes


def test_a_model_tie_with_different_values_in_the_given_state_dict_is_stored_twice(tmp_path):
    model = _gpt()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["head.weight"] += 1.0  # the caller edited one name: both must come back as given
    report = save_compressed(model, tmp_path / "e.lcz", state_dict=state)
    assert report.aliases == []
    out = read_compressed(tmp_path / "e.lcz")
    assert torch.equal(out["head.weight"], state["head.weight"]) and torch.equal(out["tok.weight"], state["tok.weight"])


def test_tied_buffers_and_untied_models_keep_their_bytes():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.register_buffer("steps", torch.arange(6))
            self.register_buffer("steps_again", self.steps)

    model = Tied()
    data, report = encode_state_dict(model.state_dict(), compress=["a.weight"])
    assert {a.name: a.target for a in report.aliases} == {"b.weight": "a.weight", "steps_again": "steps"}
    out = decode_file(data)
    assert torch.equal(out["steps_again"], torch.arange(6)) and out["b.weight"] is out["a.weight"]


def test_format_page_alias_example_bytes_are_what_the_encoder_writes():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "format.md").read_text()
    section = text[text.index("### Aliases of tied tensors (codec 3)"):text.index("## Bit-exactness")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    dump = re.findall(r"```text\n(.*?)```", section, re.S)[1]
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the page's own example
    data = namespace["data"]
    assert bytes.fromhex(dump.replace("\n", " ")) == data and f"gives these {len(data)} bytes" in section
    out = decode_file(data)
    assert out["head.weight"] is out["emb.weight"] and namespace["report"].aliases[0].target == "emb.weight"


def test_bad_alias_arguments_name_the_argument():
    import pytest

    t = torch.ones(2)
    with pytest.raises(ValueError, match="aliases: names not in the state_dict: \\['x'\\]"):
        encode_state_dict({"a": t, "b": t}, aliases={"x": "a"})
    with pytest.raises(ValueError, match="aliases: 'a' names 'b', which is not an earlier key"):
        encode_state_dict({"a": t, "b": t}, aliases={"a": "b"})
    with pytest.raises(ValueError, match="do not hold the same tensor"):
        encode_state_dict({"a": t, "b": t + 1}, aliases={"b": "a"})
