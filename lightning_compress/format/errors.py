"""Errors a reader of ``.lcz`` files (and of checkpoints) raises: one hierarchy, nothing else escapes.

Every failure that comes from the bytes of a file is a :class:`CompressedFileError` (a ``ValueError``), so
code that opens files from strangers needs one ``except``. No Lightning here: ``format/`` works without it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class CompressedFileError(ValueError):
    """Base class of every error reading a compressed file."""


class NotCompressedFileError(CompressedFileError):
    """The file does not start with the format's magic bytes."""


class UnsupportedVersionError(CompressedFileError):
    """The file was written by a newer (or unknown) version of the format."""


class TruncatedFileError(CompressedFileError):
    """The file is shorter than its header says."""


class CorruptedFileError(CompressedFileError):
    """The checksum does not match, or the content cannot be decoded."""


class ArchitectureMismatchError(CompressedFileError):
    """The file's tensor names, shapes or dtypes differ from the model it is loaded into."""


class MemoryLimitError(CompressedFileError):
    """Decoding the file would need more memory than the reader's limit (``max_bytes``, or the model's size)."""


class UnsafeCheckpointError(CompressedFileError):
    """A checkpoint holds objects that only unpickling arbitrary code could rebuild; it is not loaded."""


@contextmanager
def payload_errors(what: str) -> Iterator[None]:
    """Whatever a malformed payload makes a decoder raise (an index out of range, an overflow) is a
    :class:`CorruptedFileError` naming ``what``; the package's own file errors pass through unchanged."""
    try:
        yield
    except CompressedFileError:
        raise
    except (IndexError, ValueError, OverflowError) as err:  # BitstreamError is a ValueError
        raise CorruptedFileError(f"cannot decode {what}: {err}") from err


__all__ = [
    "payload_errors",
    "ArchitectureMismatchError",
    "CompressedFileError",
    "CorruptedFileError",
    "MemoryLimitError",
    "NotCompressedFileError",
    "TruncatedFileError",
    "UnsafeCheckpointError",
    "UnsupportedVersionError",
]
