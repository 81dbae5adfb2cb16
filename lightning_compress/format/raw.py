"""Dtype codes of the tensor table and the raw codec (a tensor's bytes as they are in memory).

Byte order is little-endian (what every current PyTorch platform uses). Raw tensors (biases, buffers,
integer tensors) are always bit-exact.
"""

from __future__ import annotations

import math

import torch

from lightning_compress.format.errors import CorruptedFileError

#: Stable codes for the file header (never renumber: files depend on them).
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float64: 2,
    torch.float16: 3,
    torch.bfloat16: 4,
    torch.int8: 5,
    torch.int16: 6,
    torch.int32: 7,
    torch.int64: 8,
    torch.uint8: 9,
    torch.bool: 10,
    torch.complex64: 11,
    torch.complex128: 12,
}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
ITEM_SIZES = {dtype: torch.empty(0, dtype=dtype).element_size() for dtype in DTYPE_CODES}


def dtype_code(dtype: torch.dtype) -> int:
    if dtype not in DTYPE_CODES:
        raise ValueError(f"dtype {dtype} is not supported by the compressed format ({sorted(map(str, DTYPE_CODES))})")
    return DTYPE_CODES[dtype]


def encode_raw(tensor: torch.Tensor) -> bytes:
    """The tensor's bytes as they are in memory (C order, little-endian)."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def decode_raw(payload: bytes | memoryview, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    numel = math.prod(shape)
    itemsize = ITEM_SIZES[dtype]
    if len(payload) != numel * itemsize:
        raise CorruptedFileError(f"raw tensor of shape {shape} and {dtype} needs {numel * itemsize} bytes, got {len(payload)}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    return data.view(dtype).reshape(shape)


__all__ = ["CODE_DTYPES", "DTYPE_CODES", "ITEM_SIZES", "decode_raw", "dtype_code", "encode_raw"]
