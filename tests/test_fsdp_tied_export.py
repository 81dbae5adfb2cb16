"""The compressed export of a tied model under FSDP2 (2 CPU processes, gloo): the tie is found from the model's
Parameters (gathered copies share no storage), the alias key is never gathered, and every rank reads the same
keys (as ``ExportCompressed`` does on the other ranks), so the collectives match and the file stores the tensor
once."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_helpers as FH  # noqa: E402


def _export(rank: int, world: int, path: str) -> dict:
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    from lightning_compress.core.distributed import GatheredStateDict
    from lightning_compress.export import save_compressed
    from lightning_compress.format.ties import find_aliases

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 10, bias=False))
    model[1].weight = model[0].weight
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fully_shard(model, mesh=FH.cpu_mesh(world))
    state = GatheredStateDict(model.state_dict())
    out = {"sharded_tie": model[1].weight is model[0].weight, "reference": reference}
    if rank == 0:
        report = save_compressed(model, path, state_dict=state)
        out["aliases"] = [(a.name, a.target) for a in report.aliases]
    else:  # what ExportCompressed's other ranks do
        skip = find_aliases(state, model)
        out["read"] = [k for k in state if k not in skip and state[k] is not None]
    return out


def test_tied_model_under_fsdp2_exports_the_tensor_once(tmp_path):
    from lightning_compress.export import read_compressed

    path = str(tmp_path / "tied.lcz")
    ranks = FH.spawn(_export, path)
    assert all(r["sharded_tie"] for r in ranks)
    assert ranks[0]["aliases"] == [("1.weight", "0.weight")] and ranks[1]["read"] == ["0.weight"]
    stored = read_compressed(path)
    assert stored["1.weight"] is stored["0.weight"]
    assert all(torch.equal(stored[k], v) for k, v in ranks[0]["reference"].items())
