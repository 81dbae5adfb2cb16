"""The package's error types: one for every user mistake in a setting, one family for every bad file.

``CompressionConfigError`` is both a ``ValueError`` (what a Python user catches) and Lightning's
``MisconfigurationException`` (what a Lightning user catches), so code written against either keeps working.
The file errors live in :mod:`lightning_compress.format.errors`, free of Lightning, and are re-exported here.
"""

from __future__ import annotations

from lightning.fabric.utilities.exceptions import MisconfigurationException

from lightning_compress.format.errors import (
    ArchitectureMismatchError,
    CompressedFileError,
    CorruptedFileError,
    NotCompressedFileError,
    TruncatedFileError,
    UnsupportedVersionError,
)


class CompressionConfigError(MisconfigurationException, ValueError):
    """A bad argument of a callback, schedule, datamodule or command: the message names the argument."""


__all__ = [
    "ArchitectureMismatchError",
    "CompressedFileError",
    "CompressionConfigError",
    "CorruptedFileError",
    "NotCompressedFileError",
    "TruncatedFileError",
    "UnsupportedVersionError",
]
