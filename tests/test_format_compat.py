"""Version-1 files written before the format became a package keep loading to the same tensors, and the
writer keeps producing byte-identical version-1 files when no version-2 feature is needed."""

from __future__ import annotations

import hashlib

import pytest
import torch

from fixtures import format_v1
from lightning_compress.export import decode_file, encode_state_dict, read_compressed

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous().reshape(-1)
    if t.dtype.is_complex:
        t = torch.view_as_real(t).reshape(-1)
    return t.view(INT_VIEW[t.element_size()]) if t.dtype.is_floating_point else t


@pytest.mark.parametrize("name,keep", sorted(format_v1.FILES.items()))
def test_committed_v1_files_load_bit_exactly(name, keep):
    stored = read_compressed(format_v1.HERE / name)
    expected = format_v1.state_dict()
    assert list(stored) == list(expected)
    for k, v in expected.items():
        if not keep and k in format_v1.COMPRESSED and v.dtype.is_floating_point:
            v = torch.where(v == 0, torch.zeros((), dtype=v.dtype), v)  # -0.0 comes back as +0.0 by default
        assert stored[k].dtype == v.dtype and stored[k].shape == v.shape, k
        assert torch.equal(bits(stored[k]), bits(v)), k


@pytest.mark.parametrize("name,keep", sorted(format_v1.FILES.items()))
def test_writer_reproduces_the_committed_v1_bytes(name, keep):
    data, report = encode_state_dict(format_v1.state_dict(), format_v1.COMPRESSED, keep_negative_zero=keep)
    committed = (format_v1.HERE / name).read_bytes()
    assert data[4] == 1 and report.format_version == 1
    assert data == committed
    assert list(decode_file(committed)) == list(format_v1.state_dict())


def test_writer_bytes_unchanged_on_a_paper_style_lenet():
    """A seeded LeNet-300-100, pruned and 64-way shared: the SHA-256 recorded with the version-1 writer."""
    from test_export import compress_like_the_paper

    from lightning_compress.zoo.models import LeNet300100

    torch.manual_seed(0)
    model = compress_like_the_paper(LeNet300100(), [0.08, 0.09, 0.26], clusters=64)
    data, _ = encode_state_dict(model.state_dict(), ["fc1.weight", "fc2.weight", "fc3.weight"])
    assert hashlib.sha256(data).hexdigest() == LENET_SHA256
LENET_SHA256 = "55681dce84625ab88a4ada4a5f5c9915ff771f9b3808ce4b6df1a0d5620ff3f3"  # 23,251 bytes
