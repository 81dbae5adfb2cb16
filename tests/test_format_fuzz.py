"""Files are data from strangers: whatever the bytes, a reader ends in a package error, in bounded memory.

The fuzz runs in a subprocess under an address-space limit (``resource.setrlimit(RLIMIT_AS)``): a forged count
that made the reader allocate gigabytes would die there with ``MemoryError`` instead of passing. The default
run takes seconds; ``LCZ_FUZZ_CASES=20000 pytest tests/test_format_fuzz.py`` runs a longer one.
"""

from __future__ import annotations

import os
import struct
import sys
import textwrap
import zlib

import pytest
import torch
from torch import nn

from lightning_compress.export import (
    ArchitectureMismatchError,
    CompressedFileError,
    CorruptedFileError,
    MemoryLimitError,
    decode_file,
    load_compressed,
    read_compressed,
)
from lightning_compress.format.bitstream import encode_varint
from lightning_compress.format.container import ALIAS, CRC, LAYER, MAGIC, PREFIX, RAW

FUZZ_CASES = int(os.environ.get("LCZ_FUZZ_CASES", "300"))


def forge(rows: list[tuple[str, int, tuple[int, ...], int, bytes]], version: int = 1) -> bytes:
    """A file with a valid length and checksum around any table and payloads (dims may exceed int64)."""
    table = bytearray(encode_varint(len(rows)))
    for name, code, shape, codec, payload in rows:
        table += encode_varint(len(name)) + name.encode() + bytes([code]) + encode_varint(len(shape))
        for d in shape:
            table += encode_varint(d)
        table += bytes([codec]) + encode_varint(len(payload))
    payloads = b"".join(r[4] for r in rows)
    total = PREFIX.size + len(table) + len(payloads) + CRC.size
    body = PREFIX.pack(MAGIC, version, total) + bytes(table) + payloads
    return body + CRC.pack(zlib.crc32(body))


F32 = 1  # dtype code of float32
SPARSE_NO_ENTRIES = b"\x01\x01\x00\x00"  # sparse, 1-bit indices, 0 entries, empty fixed stream, no values
K1_CODEBOOK = b"\x02\x01" + struct.pack("<f", 0.5) + b"\x00"  # dense codebook of one value: 0 bits per weight


def huffman_counts_payload(per_length: list[int]) -> bytes:
    """A sparse layer of 16 elements whose index stream is a Huffman table with these per-length counts."""
    table = bytes([len(per_length)]) + b"".join(encode_varint(c) for c in per_length)
    return b"\x01\x04" + encode_varint(4) + b"\x01" + table + b"\x00" * 8


HOSTILE = {
    "2^26 zeros, no entries": [("weight", F32, (1 << 26,), LAYER, SPARSE_NO_ENTRIES)],
    "2^31 zeros, no entries": [("weight", F32, (1 << 31,), LAYER, SPARSE_NO_ENTRIES)],
    "k=1 over 2^31": [("weight", F32, (1 << 31,), LAYER, K1_CODEBOOK)],
    "Huffman count 2^27": [("weight", F32, (16,), LAYER, huffman_counts_payload([1 << 27, 0, 1]))],
    "Huffman count 2^40": [("weight", F32, (16,), LAYER, huffman_counts_payload([1 << 40, 1]))],
    "Huffman count 2^69": [("weight", F32, (16,), LAYER, huffman_counts_payload([1 << 69, 1]))],
    "raw (0, 2^64)": [("weight", F32, (0, 1 << 64), RAW, b"")],
    "raw (2^40, 2^40)": [("weight", F32, (1 << 40, 1 << 40), RAW, b"")],
    "2^40 tensors declared": [],
}
RAW_2x4 = ("weight", F32, (2, 4), RAW, b"\x00" * 32)
#: Alias entries (version 2) that name no valid earlier entry: each must be a CorruptedFileError.
HOSTILE_ALIASES = {
    "alias to itself": [("weight", F32, (2, 4), ALIAS, b"\x00")],
    "alias to a later entry": [("bias", F32, (2, 4), ALIAS, b"\x01"), RAW_2x4],
    "alias to a missing entry": [RAW_2x4, ("bias", F32, (2, 4), ALIAS, b"\x07")],
    "alias to a 2^63 entry": [RAW_2x4, ("bias", F32, (2, 4), ALIAS, encode_varint(1 << 63))],
    "alias of another shape": [RAW_2x4, ("bias", F32, (2,), ALIAS, b"\x00")],
    "alias of another dtype": [RAW_2x4, ("bias", 8, (2, 4), ALIAS, b"\x00")],
    "alias of an alias": [RAW_2x4, ("bias", F32, (2, 4), ALIAS, b"\x00"), ("other", F32, (2, 4), ALIAS, b"\x01")],
    "alias with trailing bytes": [RAW_2x4, ("bias", F32, (2, 4), ALIAS, b"\x00\x00")],
    "alias without payload": [RAW_2x4, ("bias", F32, (2, 4), ALIAS, b"")],
    "alias with an unfinished varint": [RAW_2x4, ("bias", F32, (2, 4), ALIAS, b"\x80")],
}


def hostile_bytes(name: str) -> bytes:
    if name == "2^40 tensors declared":
        data = bytearray(forge([]))
        data[PREFIX.size : PREFIX.size + 1] = encode_varint(1 << 40)  # longer varint: fix length and CRC
        return refit(bytes(data))
    return forge(HOSTILE[name])


@pytest.mark.parametrize("name", sorted(HOSTILE_ALIASES))
def test_hostile_alias_entries_are_corrupted_files(tmp_path, name):
    path = tmp_path / "alias.lcz"
    path.write_bytes(forge(HOSTILE_ALIASES[name], version=2))
    with pytest.raises(CorruptedFileError, match="alias"):
        read_compressed(path)
    with pytest.raises(CorruptedFileError, match="alias"):
        load_compressed(path, nn.Linear(4, 2))
    assert decode_file(forge([RAW_2x4, ("bias", F32, (2, 4), ALIAS, b"\x00")], version=2))["bias"].shape == (2, 4)
    with pytest.raises(CorruptedFileError, match="unknown codec 3 for format version 1"):
        decode_file(forge(HOSTILE_ALIASES[name], version=1))


def refit(data: bytes) -> bytes:
    """Rewrite the length field and the checksum of a mutated file so that only its content is wrong."""
    body = bytearray(data[: max(len(data) - CRC.size, PREFIX.size)])
    if len(body) < PREFIX.size:
        return bytes(data)
    struct.pack_into("<Q", body, 5, len(body) + CRC.size)
    return bytes(body) + CRC.pack(zlib.crc32(bytes(body)))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_fail_with_package_errors_before_allocating(tmp_path, name):
    path = tmp_path / "hostile.lcz"
    path.write_bytes(hostile_bytes(name))
    with pytest.raises(CompressedFileError):
        load_compressed(path, nn.Linear(4, 2))
    if name == "2^26 zeros, no entries":  # a valid file: 256 MiB of zeros, under the default limit
        with pytest.raises(MemoryLimitError, match="max_bytes"):
            read_compressed(path, max_bytes=1 << 20)
    else:
        with pytest.raises(CompressedFileError):
            read_compressed(path)


def test_memory_limit_names_the_argument(tmp_path):
    path = tmp_path / "big.lcz"
    path.write_bytes(hostile_bytes("2^31 zeros, no entries"))
    with pytest.raises(MemoryLimitError, match=r"max_bytes=4,294,967,296"):
        read_compressed(path)


class Factorizable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)


@pytest.mark.parametrize("first_shape,second_shape", [((), (5, 2)), ((1 << 40, 6), (5, 1 << 40)), ((2, 6), (5, 3))])
def test_forged_factorized_keys_are_an_architecture_mismatch(tmp_path, first_shape, second_shape):
    model = Factorizable()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def raw(shape):
        n = 1
        for d in shape:
            n *= d
        return b"\x00" * (4 * n) if n < 1 << 20 else b""

    rows = [("fc1.first.weight", F32, first_shape, RAW, raw(first_shape)),
            ("fc1.second.weight", F32, second_shape, RAW, raw(second_shape)),
            ("fc1.second.bias", F32, (5,), RAW, raw((5,))),
            ("fc2.weight", F32, (3, 5), RAW, raw((3, 5))), ("fc2.bias", F32, (3,), RAW, raw((3,)))]
    path = tmp_path / "forged.lcz"
    path.write_bytes(forge(rows))
    with pytest.raises(CompressedFileError):
        load_compressed(path, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing modified
    assert isinstance(model.fc1, nn.Linear)


FUZZ_SCRIPT = r"""
import random, resource, sys, warnings
import torch
from torch import nn
sys.path.insert(0, {tests!r})
from test_format_fuzz import refit, seeds
from lightning_compress.export import CompressedFileError, decode_file, load_compressed
warnings.simplefilter("ignore")
files = seeds()
used = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + (3 << 29), resource.RLIM_INFINITY))  # what is mapped + 1.5 GiB
rng = random.Random({seed})
outcomes = {{"ok": 0, "error": 0}}
for case in range({cases}):
    name, data, make = files[rng.randrange(len(files))]
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4])):
        op, at = rng.random(), rng.randrange(max(1, len(buf)))
        if op < 0.5:
            buf[at] = rng.randrange(256)
        elif op < 0.7:
            buf[at:at] = bytes(rng.choice([[0xFF] * 9 + [0x7F], [0x80, 0x80, 0x80, 0x80, 0x10], [rng.randrange(256)]]))
        elif op < 0.9:
            del buf[at : at + rng.randrange(1, 8)]
        else:
            buf[at:at + 1] = bytes([rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF])])
    mutated = refit(bytes(buf)) if rng.random() < 0.9 else bytes(buf)
    try:
        decode_file(mutated, max_bytes=1 << 26)
        if make is not None:
            path = {tmp!r} + "/case.lcz"
            open(path, "wb").write(mutated)
            load_compressed(path, make())
        outcomes["ok"] += 1
    except CompressedFileError:
        outcomes["error"] += 1
    except BaseException as err:
        print(f"case {{case}} ({{name}}): {{type(err).__name__}}: {{err}}", flush=True)
        print(mutated.hex())
        sys.exit(1)
print(outcomes)
"""


def seeds():
    """Valid files to mutate (name, bytes, model factory or None): every codec, both versions."""
    from fixtures import format_v1

    from lightning_compress.export import encode_state_dict

    out = [(name, (format_v1.HERE / name).read_bytes(), None) for name in format_v1.FILES]
    torch.manual_seed(0)
    model = Factorizable()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.where(model.fc1.weight.abs() > 0.2, model.fc1.weight.sign() * 0.25, 0.0))
    sd = model.state_dict()
    out.append(("factorizable", encode_state_dict(sd, ["fc1.weight", "fc2.weight"])[0], Factorizable))
    rows = torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8) % 3 + torch.arange(64).reshape(64, 1) * 10
    grouped = encode_state_dict({"w": rows}, ["w"], groups={"w": "auto"})[0]
    assert grouped[4] == 2  # a version-2 file with grouped codebooks
    out.append(("grouped", grouped, None))
    tied = {"a": rows, "b": torch.arange(3), "c": rows, "d": torch.zeros(2)}
    aliased = encode_state_dict(tied, ["a"])[0]
    assert aliased[4] == 2  # a version-2 file with alias entries
    out.append(("aliased", aliased, None))
    return out


def test_fuzz_mutated_files_end_in_package_errors_under_a_memory_limit(run_script, tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    proc = run_script(textwrap.dedent(FUZZ_SCRIPT.format(tests=tests, seed=1234, cases=FUZZ_CASES, tmp=str(tmp_path))),
                      check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "'error'" in proc.stdout


def test_hostile_file_bytes_do_not_escape_as_other_errors():
    for name in HOSTILE:
        with pytest.raises(CompressedFileError):
            decode_file(hostile_bytes(name), max_bytes=1 << 20)
    with pytest.raises(CorruptedFileError):
        decode_file(forge([("w", F32, (4,), LAYER, b"\x03\x10")]))
    assert torch.equal(decode_file(forge([("w", F32, (4,), RAW, b"\x00" * 16)]))["w"], torch.zeros(4))
    with pytest.raises(ArchitectureMismatchError):
        load_compressed_into_linear(forge([("w", F32, (4,), RAW, b"\x00" * 16)]))


def load_compressed_into_linear(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.lcz")
        with open(path, "wb") as f:
            f.write(data)
        load_compressed(path, nn.Linear(4, 2))
