"""The IDX reader on good files (raw and gzip, every dtype) and on every kind of bad file."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from lightning_compress.zoo.idx import (
    IDXError,
    IDXFileNotFoundError,
    IDXFormatError,
    read_idx,
    read_idx_images,
    read_idx_labels,
    read_idx_pair,
    write_idx,
)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)


@pytest.fixture
def labels():
    return np.arange(7, dtype=np.uint8) % 10


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_images_and_labels(tmp_path, images, labels, suffix):
    ipath = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    lpath = write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
    assert (ipath.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    got_images, got_labels = read_idx_pair(ipath, lpath, num_classes=10, image_shape=(28, 28))
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_header_bytes_match_mnist_spec(tmp_path, images, labels):
    raw = write_idx(tmp_path / "img", images).read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert struct.unpack(">3I", raw[4:16]) == (7, 28, 28)
    assert len(raw) == 16 + images.size
    assert write_idx(tmp_path / "lbl", labels).read_bytes()[:8] == b"\x00\x00\x08\x01" + struct.pack(">I", 7)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_every_idx_dtype_round_trips(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    got = read_idx(write_idx(tmp_path / "a.gz", array))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


def test_gzip_detected_by_content_not_name(tmp_path, images):
    path = tmp_path / "no-gz-suffix"
    write_idx(path, images, compress=True)
    np.testing.assert_array_equal(read_idx_images(path), images)


def test_missing_file(tmp_path):
    with pytest.raises(IDXFileNotFoundError, match="not found.*nope-idx3-ubyte") as info:
        read_idx_images(tmp_path / "nope-idx3-ubyte")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, IDXError)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_payload(tmp_path, images, suffix):
    raw = write_idx(tmp_path / "full", images).read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(gzip.compress(raw[:-100]) if suffix else raw[:-100])
    with pytest.raises(IDXFormatError, match=r"cut.*shape \(7, 28, 28\) \(5488 bytes of data\) but only 5388 bytes.*truncated") as info:
        read_idx_images(path)
    assert isinstance(info.value, ValueError)


def test_truncated_gzip_stream(tmp_path, images):
    blob = write_idx(tmp_path / "full.gz", images).read_bytes()
    path = tmp_path / "half.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(IDXFormatError, match="half.gz.*gzip stream is corrupt or truncated"):
        read_idx_images(path)


def test_truncated_header(tmp_path):
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(IDXFormatError, match="2 bytes is too short"):
        read_idx(tmp_path / "tiny")
    (tmp_path / "hdr").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 7))
    with pytest.raises(IDXFormatError, match="header needs 16 bytes for 3 dimensions, file has 8"):
        read_idx_images(tmp_path / "hdr")


def test_trailing_bytes(tmp_path, labels):
    path = write_idx(tmp_path / "lbl", labels)
    path.write_bytes(path.read_bytes() + b"\x00\x01")
    with pytest.raises(IDXFormatError, match="2 unexpected trailing bytes"):
        read_idx_labels(path)


def test_wrong_magic(tmp_path):
    path = tmp_path / "page.html"
    path.write_bytes(b"<html><body>Not Found</body></html>")
    with pytest.raises(IDXFormatError, match=r"page.html: magic number 0x3C68746D is not IDX"):
        read_idx_images(path)
    (tmp_path / "badcode").write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 0))
    with pytest.raises(IDXFormatError, match="0x00000701 is not IDX"):
        read_idx(tmp_path / "badcode")


def test_labels_file_passed_as_images(tmp_path, labels):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(IDXFormatError, match=r"train-labels-idx1-ubyte.gz: magic number 0x00000801 says 1 "
                                             r"dimension\(s\), expected 3 \(expected magic 0x00000803"):
        read_idx_images(path)


def test_images_file_passed_as_labels(tmp_path, images):
    with pytest.raises(IDXFormatError, match="0x00000803 says 3 dimension.*expected 1"):
        read_idx_labels(write_idx(tmp_path / "img", images))


def test_wrong_dtype(tmp_path):
    path = write_idx(tmp_path / "floats", np.zeros((2, 28, 28), dtype=np.float32))
    with pytest.raises(IDXFormatError, match=r"floats: IDX dtype code is 0x0D \(float32\), expected 0x08 \(uint8\)"):
        read_idx_images(path)


def test_count_mismatch(tmp_path, images, labels):
    ipath = write_idx(tmp_path / "img.gz", images)
    lpath = write_idx(tmp_path / "lbl.gz", labels[:5])
    with pytest.raises(IDXFormatError, match="img.gz holds 7 images but .*lbl.gz holds 5 labels"):
        read_idx_pair(ipath, lpath)


def test_image_size_and_label_range_checks(tmp_path, labels):
    ipath = write_idx(tmp_path / "img", np.zeros((7, 8, 8), dtype=np.uint8))
    lpath = write_idx(tmp_path / "lbl", labels)
    with pytest.raises(IDXFormatError, match="images are 8x8, expected 28x28"):
        read_idx_pair(ipath, lpath, image_shape=(28, 28))
    bad = write_idx(tmp_path / "bad", np.array([0, 1, 2, 3, 4, 5, 10], dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="label 10 is out of range for 10 classes"):
        read_idx_pair(ipath, bad, num_classes=10)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="dtype uint16 has no IDX code"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))
