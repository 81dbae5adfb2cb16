"""Checkpoint writes that a kill cannot turn into a bad ``last.ckpt``.

Lightning's default ``TorchCheckpointIO`` serializes the checkpoint into memory and writes it through an
fsspec transaction. For a local path that transaction writes a temporary file in the *system* temp folder
(``tempfile.mkstemp()``) and then moves it over the target with ``shutil.move``. When the temp folder is on another
filesystem than the checkpoint folder (``/tmp`` on tmpfs, a mounted volume or network disk for the
checkpoints), ``shutil.move`` is a copy into the target path, so a process killed during that copy leaves
a truncated ``last.ckpt`` in place of the previous good one: ``ckpt_path="last"`` then fails to load and the
last good state is gone. Neither path calls ``fsync``, and a killed write leaks its temp file in ``/tmp``.

:class:`AtomicCheckpointIO` writes each checkpoint next to its target, as ``.<name>.tmp-<pid>`` (a name that
neither ``ckpt_path="last"`` nor a ``*.ckpt`` glob picks up), syncs it to disk (``fsync``), renames it over
the target with ``os.replace`` and syncs the folder. ``os.replace`` within one folder is atomic: at every instant
the target is either the complete old checkpoint or the complete new one. It also streams ``torch.save``
straight to the file instead of holding a second serialized copy of the checkpoint in memory.

Example::

    from lightning.pytorch import Trainer
    from lightning_compress.checkpoint_io import AtomicCheckpointIO

    trainer = Trainer(plugins=[AtomicCheckpointIO()], callbacks=[...])

Remote paths (``s3://``, ``gs://``, ...) go through Lightning's own code: object stores publish an upload
only when it completes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

#: Marker in the name of a checkpoint being written; such a file is never a checkpoint to load.
TEMP_MARKER = ".tmp-"


def temp_path_for(path: str | os.PathLike) -> str:
    """Where the checkpoint for ``path`` is written before it is renamed into place (same folder)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}{TEMP_MARKER}{os.getpid()}")


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (POSIX); folders cannot be opened for syncing everywhere, so best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable (temp file in the target folder,
    ``fsync``, ``os.replace``). Loading and removal are Lightning's."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "AtomicCheckpointIO: storage_options is not supported (Trainer.save_checkpoint(..., "
                "storage_options=...)); write a CheckpointIO of your own for them"
            )
        fs = get_filesystem(path)
        if not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        target = os.path.abspath(fs._strip_protocol(os.fspath(path)))
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        tmp = temp_path_for(target)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        _fsync_folder(folder)


__all__ = ["AtomicCheckpointIO", "TEMP_MARKER", "temp_path_for"]
