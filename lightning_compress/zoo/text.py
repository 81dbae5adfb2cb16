"""TextDataModule: next-token batches from any text files, character- or byte-level, split by document.

Documents are the unit of the train/val/test split (a seeded shuffle), so no validation text leaks into
training through a shared passage. By default the corpus is Debian's ``fortunes`` package
(``apt-get install fortunes`` puts a few MB of English text in ``/usr/share/games/fortunes/``): every file
there except the ``.dat`` indexes and ``.u8`` links, documents separated by lines holding a single ``%``.
Any other files or folders work too (``separator=None``: one document per file).

Each split is its documents joined by newlines and cut into non-overlapping windows of ``context + 1`` tokens;
a batch is ``(x, y)`` with ``x = window[:-1]`` and ``y = window[1:]``, both ``(B, context)`` int64.

* ``level="byte"``: token = UTF-8 byte (vocabulary 256, no fitting needed; works with ``TinyGPT()``'s default).
* ``level="char"``: token = character, vocabulary fitted on the training split (``vocab_size``, ``vocab``);
  characters unseen in training map to id 0, reserved for them.

Example::

    dm = TextDataModule(context=64, batch_size=32)                     # fortunes, bytes
    dm = TextDataModule(["~/corpus"], level="char", separator=None)    # one document per file
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.validation import check_choice, check_fraction, check_int, fail
from lightning_compress.zoo.data import DatasetNotFoundError

#: Where Debian's ``fortunes`` package installs its text.
DEBIAN_FORTUNES_DIR = Path("/usr/share/games/fortunes")
_SKIP_SUFFIXES = (".dat", ".u8")
_OWNER = "TextDataModule"


def text_files(paths: Sequence[str | Path]) -> list[Path]:
    """The text files under ``paths`` (files as given; folders: their files, sorted, without ``.dat``/``.u8``)."""
    out: list[Path] = []
    for p in map(lambda q: Path(q).expanduser(), paths):
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix not in _SKIP_SUFFIXES)
        elif p.is_file():
            out.append(p)
    return out


def split_documents(text: str, separator: str | None) -> list[str]:
    """Documents of one file: split on lines equal to ``separator`` (or the whole file), empty ones dropped."""
    if separator is None:
        return [text] if text.strip() else []
    docs, current = [], []
    for line in text.splitlines():
        if line.strip() == separator:
            docs.append("\n".join(current))
            current = []
        else:
            current.append(line)
    docs.append("\n".join(current))
    return [d for d in docs if d.strip()]


class TextDataModule(pl.LightningDataModule):
    """Language-model batches from text files (default: Debian's fortunes), split by document.

    Args:
        paths: files or folders; ``None`` means ``/usr/share/games/fortunes``.
        level: ``"byte"`` (UTF-8 bytes, vocabulary 256) or ``"char"`` (characters seen in training, plus id 0).
        context: tokens per example (the model's context length).
        batch_size, num_workers: DataLoader settings.
        val_fraction, test_fraction: fraction of the documents in each held-out split.
        separator: line that separates documents inside a file (``"%"`` for fortunes); ``None``: one per file.
        seed: the document shuffle (same seed, same split on every machine).
        train_limit: cap on training windows per epoch (``None``: all), for quick runs.
    """

    def __init__(
        self,
        paths: Sequence[str] | str | None = None,
        level: str = "byte",
        context: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        separator: str | None = "%",
        seed: int = 42,
        train_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_choice(_OWNER, "level", level, ("byte", "char"))
        check_int(_OWNER, "context", context, low=1)
        check_int(_OWNER, "batch_size", batch_size, low=1)
        check_int(_OWNER, "num_workers", num_workers, low=0)
        check_fraction(_OWNER, "val_fraction", val_fraction, high_open=True)
        check_fraction(_OWNER, "test_fraction", test_fraction, high_open=True)
        if val_fraction + test_fraction >= 1:
            fail(_OWNER, f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
        check_int(_OWNER, "seed", seed)
        check_int(_OWNER, "train_limit", train_limit, low=1, allow_none=True)
        if separator is not None and not isinstance(separator, str):
            fail(_OWNER, f"separator must be a string or None, got {separator!r}")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        if paths is not None and (not isinstance(paths, Sequence) or not all(isinstance(p, (str, Path)) for p in paths)):
            fail(_OWNER, f"paths must be a list of files or folders, got {paths!r}")
        self.paths = [Path(p) for p in paths] if paths else [DEBIAN_FORTUNES_DIR]
        self.level, self.context, self.batch_size, self.num_workers = level, context, batch_size, num_workers
        self.val_fraction, self.test_fraction, self.separator, self.seed = val_fraction, test_fraction, separator, seed
        self.train_limit = train_limit
        self.vocab: list[str] | None = None  # characters by id (char level; id 0 = unknown)
        self.datasets: dict[str, TensorDataset] = {}

    @property
    def vocab_size(self) -> int:
        """Token ids the model needs: 256 for bytes; for characters known after ``setup``."""
        if self.level == "byte":
            return 256
        if self.vocab is None:
            self.setup("fit")
        return len(self.vocab)

    def documents(self) -> list[str]:
        """Every document of the corpus, in file order; ``DatasetNotFoundError`` when there is none."""
        files = text_files(self.paths)
        if not files:
            hint = " (install it with: apt-get install fortunes)" if DEBIAN_FORTUNES_DIR in self.paths else ""
            raise DatasetNotFoundError(f"{_OWNER}: no text files under {[str(p) for p in self.paths]}{hint}")
        docs = [d for f in files for d in split_documents(f.read_text(encoding="utf-8", errors="replace"), self.separator)]
        if len(docs) < 3:
            raise DatasetNotFoundError(f"{_OWNER}: {len(docs)} documents in {[str(f) for f in files]}; "
                                       "at least 3 are needed for train/val/test")
        return docs

    def split(self) -> dict[str, list[str]]:
        """Documents of each split after the seeded shuffle; val and test get at least one each."""
        docs = self.documents()
        perm = torch.randperm(len(docs), generator=torch.Generator().manual_seed(self.seed)).tolist()
        n_val = max(1, round(self.val_fraction * len(docs))) if self.val_fraction else 0
        n_test = max(1, round(self.test_fraction * len(docs))) if self.test_fraction else 0
        if n_val + n_test >= len(docs):
            fail(_OWNER, f"val_fraction/test_fraction leave no training document out of {len(docs)}")
        order = [docs[i] for i in perm]
        return {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` (int64)."""
        if self.level == "byte":
            return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)
        index = {c: i for i, c in enumerate(self.vocab)}
        return torch.tensor([index.get(c, 0) for c in text], dtype=torch.int64)

    def decode(self, ids: torch.Tensor) -> str:
        if self.level == "byte":
            return bytes(ids.to(torch.uint8).tolist()).decode("utf-8", errors="replace")
        return "".join(self.vocab[i] for i in ids.tolist())

    def _windows(self, tokens: torch.Tensor) -> TensorDataset:
        n = (tokens.numel() - 1) // self.context
        if n < 1:
            fail(_OWNER, f"context={self.context} is longer than a split of {tokens.numel()} tokens")
        x = tokens[: n * self.context].reshape(n, self.context)
        y = tokens[1: n * self.context + 1].reshape(n, self.context)
        return TensorDataset(x, y)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = self.split()
        texts = {k: "\n".join(v) + "\n" for k, v in splits.items() if v}
        if self.level == "char":
            self.vocab = ["\0"] + sorted(set(texts["train"]) - {"\0"})
        self.datasets = {k: self._windows(self.encode(t)) for k, t in texts.items()}
        if self.train_limit is not None:
            x, y = self.datasets["train"].tensors
            self.datasets["train"] = TensorDataset(x[: self.train_limit], y[: self.train_limit])

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            fail(_OWNER, f"no {split} split (is its fraction 0?); call setup() first")
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


__all__ = ["DEBIAN_FORTUNES_DIR", "TextDataModule", "split_documents", "text_files"]
