"""Reader and writer for the IDX format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number of dimensions), one big-endian
uint32 per dimension, then the values in C order, big-endian. MNIST-style datasets ship as gzip-compressed
IDX files; both forms are read here (gzip is recognised by its own magic bytes, not by the file name).

Every check raises an error that names the file and what is wrong with it, because the usual failure is a
half-downloaded or mislabelled file, and "cannot reshape array" tells a user nothing.

Example::

    images = read_idx_images("train-images-idx3-ubyte.gz")   # uint8, (60000, 28, 28)
    labels = read_idx_labels("train-labels-idx1-ubyte.gz")   # uint8, (60000,)
    write_idx("tiny-images-idx3-ubyte.gz", images[:10])
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "IDX_DTYPES",
    "IDXError",
    "IDXFileNotFoundError",
    "IDXFormatError",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
    "write_idx",
]

PathLike = str | os.PathLike

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(Exception):
    """Base class of every error raised while reading an IDX file."""


class IDXFileNotFoundError(IDXError, FileNotFoundError):
    """The IDX file does not exist."""


class IDXFormatError(IDXError, ValueError):
    """The file exists but is not the IDX data it should be (truncated, wrong magic, wrong shape...)."""


def _name(code: int) -> str:
    return str(IDX_DTYPES[code].newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise IDXFileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise IDXFormatError(f"{path}: gzip stream is corrupt or truncated ({err}); delete it and download again") from err


def read_idx(path: PathLike, *, ndim: int | None = None, dtype_code: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array.

    ``ndim`` and ``dtype_code`` (e.g. ``0x08`` for unsigned bytes) are what the caller expects; a file whose
    header says otherwise is rejected, so a labels file passed as images fails here with a readable message.
    """
    path = Path(path).expanduser()
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: {len(data)} bytes is too short for an IDX header (truncated or empty file)")
    zero, code, n_dims = struct.unpack(">HBB", data[:4])
    magic = f"0x{data[0]:02X}{data[1]:02X}{data[2]:02X}{data[3]:02X}"
    if zero != 0 or code not in IDX_DTYPES:
        raise IDXFormatError(f"{path}: magic number {magic} is not IDX (expected 0x0000 then a dtype code in "
                             f"{', '.join(f'0x{c:02X}' for c in IDX_DTYPES)})")
    if dtype_code is not None and code != dtype_code:
        raise IDXFormatError(f"{path}: IDX dtype code is 0x{code:02X} ({_name(code)}), expected "
                             f"0x{dtype_code:02X} ({_name(dtype_code)})")
    if ndim is not None and n_dims != ndim:
        raise IDXFormatError(f"{path}: magic number {magic} says {n_dims} dimension(s), expected {ndim} "
                             f"(expected magic 0x0000{code:02X}{ndim:02X}; is this the wrong file?)")
    header_len = 4 + 4 * n_dims
    if len(data) < header_len:
        raise IDXFormatError(f"{path}: header needs {header_len} bytes for {n_dims} dimensions, file has "
                             f"{len(data)} (truncated)")
    shape = struct.unpack(f">{n_dims}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_len
    if payload < expected:
        raise IDXFormatError(f"{path}: header says shape {tuple(shape)} ({expected} bytes of data) but only "
                             f"{payload} bytes follow (truncated file; delete it and download again)")
    if payload > expected:
        raise IDXFormatError(f"{path}: header says shape {tuple(shape)} ({expected} bytes of data) but "
                             f"{payload} bytes follow ({payload - expected} unexpected trailing bytes)")
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx_images(path: PathLike) -> np.ndarray:
    """Read an unsigned-byte image file (magic ``0x00000803``): uint8 array ``(N, rows, cols)``."""
    return read_idx(path, ndim=3, dtype_code=0x08)


def read_idx_labels(path: PathLike) -> np.ndarray:
    """Read an unsigned-byte label file (magic ``0x00000801``): uint8 array ``(N,)``."""
    return read_idx(path, ndim=1, dtype_code=0x08)


def read_idx_pair(images_path: PathLike, labels_path: PathLike, *, num_classes: int | None = None,
                  image_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image and label files and check that they belong together.

    Checks the counts agree, optionally the image size (``image_shape``) and that every label is below
    ``num_classes``.
    """
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise IDXFormatError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                             f"labels; the two files do not belong together")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise IDXFormatError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
                             f"{image_shape[0]}x{image_shape[1]}")
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise IDXFormatError(f"{labels_path}: label {int(labels.max())} is out of range for {num_classes} classes")
    return images, labels


def write_idx(path: PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip-compressed when ``compress`` is true or the name ends in ``.gz``."""
    path = Path(path).expanduser()
    array = np.asarray(array)
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX code; use one of "
                         f"{', '.join(str(d.newbyteorder('=')) for d in IDX_DTYPES.values())}")
    if array.ndim > 255:
        raise ValueError(f"write_idx: {array.ndim} dimensions do not fit the IDX header")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        blob = gzip.compress(blob, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path
