"""DataModules for the reference models: MNIST, Fashion-MNIST and scikit-learn's embedded digits.

All three hold their tensors in memory (MNIST-sized data fits), yield ``(x, y)`` batches with ``x`` float32
of shape ``(N, 1, 28, 28)`` (scaled to [0, 1], then standardised with the dataset's mean/std) and ``y``
int64, and split a validation set off the training set with a seeded permutation, so the same ``seed`` gives
the same split on every machine and every run.

Example::

    from lightning_compress.zoo import DigitsDataModule, LeNet300100
    import lightning.pytorch as pl

    dm = DigitsDataModule(batch_size=64)              # offline: data ships inside scikit-learn
    pl.Trainer(max_epochs=5).fit(LeNet300100(), datamodule=dm)

    dm = MNISTDataModule("~/data/mnist", train_limit=5000)   # reads the IDX files, downloads if absent
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.validation import check_fraction, check_int, check_number, fail, is_int
from lightning_compress.zoo.idx import read_idx_pair

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Where downloads go when no folder is given.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "lightning-compress"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_DOWNLOAD_TIMEOUT_S = 60


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are absent and could not be downloaded."""


def _check_split_size(owner: str, name: str, value: int | float) -> int | float:
    """A split size is a count (int >= 0) or a fraction of the examples (float in [0, 1))."""
    if is_int(value):
        return check_int(owner, name, value, low=0)
    if isinstance(value, float):
        return check_fraction(owner, name, value, high_open=True)
    fail(owner, f"{name} must be a count (int) or a fraction (float in [0, 1)), got {value!r}")


def _split_count(val_size: int | float, n: int, name: str = "val_size") -> int:
    count = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if count >= n:
        fail("", f"{name}={val_size} leaves no training examples out of {n}")
    return count


def _unit(images: torch.Tensor) -> torch.Tensor:
    """Pixels as float32 in [0, 1]: uint8 images are divided by 255, float images are taken as they are."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


class _InMemoryDataModule(pl.LightningDataModule):
    """Shared machinery: seeded train/val split, limits, standardisation, TensorDataset loaders."""

    #: Mean and std of the training pixels after scaling to [0, 1]; ``None`` means computed at setup.
    MEAN: float | None = None
    STD: float | None = None
    num_classes = 10
    dims = (1, 28, 28)

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 42,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        mean: float | None = None,
        std: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # collects the concrete class's arguments too: logged with checkpoints
        owner = type(self).__name__
        check_int(owner, "batch_size", batch_size, low=1)
        check_int(owner, "num_workers", num_workers, low=0)
        _check_split_size(owner, "val_size", val_size)
        check_int(owner, "seed", seed)
        for name, limit in (("train_limit", train_limit), ("val_limit", val_limit), ("test_limit", test_limit)):
            check_int(owner, name, limit, low=1, allow_none=True)
        check_number(owner, "mean", mean, allow_none=True)
        check_number(owner, "std", std, low=0, low_open=True, allow_none=True)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.seed = seed
        self.train_limit = train_limit
        self.val_limit = val_limit
        self.test_limit = test_limit
        self.mean = mean if mean is not None else self.MEAN
        self.std = std if std is not None else self.STD
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None
        #: Indices into the full training set, kept so a split can be inspected and compared.
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None

    # --- what subclasses provide: images (N, 28, 28) or (N, 1, 28, 28), uint8 0..255 (kept compact until the
    # split is made) or float in [0, 1]; labels (N,)
    def _load_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _load_test(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _val_count(self, n: int) -> int:
        """How many of the ``n`` training examples go to validation."""
        return _split_count(self.val_size, n)

    # --- Lightning hooks, in the order a fit calls them
    def setup(self, stage: str | None = None) -> None:
        # The test set is standardised with training statistics, so computing them needs the train split.
        if stage in (None, "fit", "validate") or self.mean is None or self.std is None:
            self._setup_train_val()
        if stage in (None, "test", "predict"):
            self._setup_test()

    def _setup_train_val(self) -> None:
        if self.train_dataset is not None:
            return
        images, labels = self._load_train()
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
        n_val = self._val_count(len(images))
        self.val_indices = perm[:n_val][: self.val_limit]
        self.train_indices = perm[n_val:][: self.train_limit]
        if self.mean is None or self.std is None:
            pixels = _unit(images[self.train_indices])
            self.mean = float(pixels.mean()) if self.mean is None else self.mean
            self.std = float(pixels.std()) if self.std is None else self.std
        self.train_dataset = self._dataset(images[self.train_indices], labels[self.train_indices])
        self.val_dataset = self._dataset(images[self.val_indices], labels[self.val_indices])

    def _setup_test(self) -> None:
        if self.test_dataset is not None:
            return
        images, labels = self._load_test()
        self.test_dataset = self._dataset(images[: self.test_limit], labels[: self.test_limit])

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
        x = _unit(images).reshape(-1, *self.dims)
        x = (x - self.mean) / self.std
        return TensorDataset(x.contiguous(), labels.to(torch.int64))

    def _loader(self, dataset: TensorDataset | None, stage: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: no {stage} data; call setup() first")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "predict")


class _IDXDataModule(_InMemoryDataModule):
    """MNIST-format data: four IDX files in a folder, downloaded from mirrors (MD5-checked) if absent."""

    NAME = "IDX"
    #: Base URLs tried in order; each must serve the four ``.gz`` files.
    MIRRORS: tuple[str, ...] = ()
    #: MD5 of each upstream ``.gz`` file.
    MD5: dict[str, str] = {}
    HINT = ""

    def __init__(self, data_dir: str | Path | None, download: bool = True,
                 mirrors: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.download = download
        self.mirrors = tuple(mirrors) if mirrors is not None else self.MIRRORS

    # --- locating the files
    def _folder(self) -> Path:
        return self.data_dir

    @staticmethod
    def _find(folder: Path, stem: str) -> Path | None:
        """The file for ``stem`` in ``folder``: raw, ``.gz``, or the ``train-images.idx3-ubyte`` spelling."""
        dotted = stem.replace("-idx", ".idx")
        for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
            if (folder / name).is_file():
                return folder / name
        return None

    def _missing(self, folder: Path, keys: Sequence[str] = tuple(IDX_FILES)) -> list[str]:
        return [IDX_FILES[k] for k in keys if self._find(folder, IDX_FILES[k]) is None]

    # --- downloading
    def prepare_data(self) -> None:
        folder = self._folder()
        missing = self._missing(folder)
        if missing and self.download:
            self._download(folder, missing)

    def _download(self, folder: Path, stems: Sequence[str]) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._not_found(folder, stems, f"Cannot create the folder to download into: {err}") from err
        for stem in stems:
            name = f"{stem}.gz"
            errors = []
            for mirror in self.mirrors:
                url = mirror.rstrip("/") + "/" + name
                try:
                    self._fetch(url, folder / name, self.MD5.get(name))
                    break
                except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, timeouts: OSError
                    errors.append(f"{url}: {err}")
            else:  # every mirror failed: the network is likely down, so do not wait on the other files
                tried = "\n  ".join(errors) if errors else "(no mirrors configured)"
                still_missing = [s for s in stems if self._find(folder, s) is None]
                raise self._not_found(folder, still_missing, f"Download failed:\n  {tried}")

    @staticmethod
    def _fetch(url: str, dest: Path, md5: str | None) -> None:
        part = dest.with_name(dest.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
                shutil.copyfileobj(response, out)
            if md5 is not None:
                got = hashlib.md5(part.read_bytes(), usedforsecurity=False).hexdigest()
                if got != md5:
                    raise ValueError(f"MD5 mismatch (got {got}, expected {md5})")
            part.replace(dest)
        finally:
            part.unlink(missing_ok=True)

    def _not_found(self, folder: Path, missing: Sequence[str], why: str = "") -> DatasetNotFoundError:
        files = ", ".join(f"{stem}.gz" for stem in missing)
        mirrors = " or ".join(self.mirrors) if self.mirrors else "the dataset's home page"
        hint = f"\n{self.HINT}" if self.HINT else ""
        reason = f"\n{why}" if why else ""
        return DatasetNotFoundError(
            f"{self.NAME} data is missing from {folder}: {files}.{reason}\n"
            f"Put the files there (gzip or uncompressed), downloaded from {mirrors}, or pass data_dir= to a "
            f"folder that holds all four of {', '.join(f'{s}.gz' for s in IDX_FILES.values())}"
            f"{'' if self.download else ', or set download=True'}.{hint}")

    # --- reading
    def _read(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        folder = self._folder()
        keys = (f"{split}_images", f"{split}_labels")
        missing = self._missing(folder, keys)
        if missing and self.download:
            self._download(folder, missing)  # setup() without prepare_data(), e.g. a bare script
            missing = self._missing(folder, keys)
        if missing:
            raise self._not_found(folder, missing)
        images, labels = read_idx_pair(self._find(folder, IDX_FILES[keys[0]]), self._find(folder, IDX_FILES[keys[1]]),
                                       num_classes=self.num_classes, image_shape=self.dims[1:])
        return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

    def _load_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._read("train")

    def _load_test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._read("test")


class MNISTDataModule(_IDXDataModule):
    """MNIST (60,000 train / 10,000 test digits) from the four IDX files in ``data_dir``.

    The files may be gzip-compressed or not. When they are absent and ``download`` is true they are
    downloaded from ``mirrors`` and checked against their published MD5 sums; without network a
    ``DatasetNotFoundError`` says which files to put where. ``val_size`` training examples, drawn by a
    permutation seeded with ``seed``, form the validation split.
    """

    NAME = "MNIST"
    MIRRORS = (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    MD5 = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    MEAN = 0.1307
    STD = 0.3081

    def __init__(
        self,
        data_dir: str | Path = "~/.cache/lightning-compress/mnist",
        download: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 42,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        mean: float | None = None,
        std: float | None = None,
        mirrors: Sequence[str] | None = None,
    ) -> None:
        super().__init__(data_dir, download=download, mirrors=mirrors, batch_size=batch_size,
                         num_workers=num_workers, val_size=val_size, seed=seed, train_limit=train_limit,
                         val_limit=val_limit, test_limit=test_limit, mean=mean, std=std)


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST (60,000 train / 10,000 test, MNIST's format), found without network where possible.

    Looks in ``data_dir`` if given; otherwise in Debian's location (``apt-get install dataset-fashion-mnist``
    puts the files in ``/usr/share/datasets/fashion-mnist``), then in the download cache
    (``~/.cache/lightning-compress/fashion-mnist``), downloading there when ``download`` is true.
    """

    NAME = "Fashion-MNIST"
    MIRRORS = (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    )
    MD5 = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    MEAN = 0.2860
    STD = 0.3530
    HINT = "On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist (installs them in /usr/share/datasets/fashion-mnist)."

    def __init__(
        self,
        data_dir: str | Path | None = None,
        download: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 42,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        mean: float | None = None,
        std: float | None = None,
        mirrors: Sequence[str] | None = None,
    ) -> None:
        super().__init__(data_dir, download=download, mirrors=mirrors, batch_size=batch_size,
                         num_workers=num_workers, val_size=val_size, seed=seed, train_limit=train_limit,
                         val_limit=val_limit, test_limit=test_limit, mean=mean, std=std)

    def _folder(self) -> Path:
        """``data_dir``, else the Debian folder when it holds all four files, else the download cache."""
        if self.data_dir is not None:
            return self.data_dir
        # Looked up at call time so tests (and users) can repoint the module-level constants.
        debian = Path(DEBIAN_FASHION_MNIST_DIR)
        if not self._missing(debian):
            return debian
        return Path(CACHE_DIR) / "fashion-mnist"


class DigitsDataModule(_InMemoryDataModule):
    """scikit-learn's embedded 8x8 digits (1,797 images, no download), upsampled to 28x28.

    Pixels 0..16 are scaled to [0, 1] and bilinearly interpolated to 28x28 so LeNet-300-100 and LeNet-5 take
    them unchanged. The test split (``test_size``) is drawn with a fixed seed, so it is the same for every
    ``seed``; the validation split (``val_size``, of all examples) is drawn from the rest with ``seed``.
    Default 60/20/20. Mean/std are computed from the training split unless given.
    """

    TEST_SPLIT_SEED = 0

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int | float = 0.2,
        test_size: int | float = 0.2,
        seed: int = 42,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        mean: float | None = None,
        std: float | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, val_size=val_size, seed=seed,
                         train_limit=train_limit, val_limit=val_limit, test_limit=test_limit, mean=mean, std=std)
        _check_split_size(type(self).__name__, "test_size", test_size)
        self.test_size = test_size
        self._pool: tuple[torch.Tensor, torch.Tensor] | None = None
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def load_images() -> tuple[torch.Tensor, torch.Tensor]:
        """All 1,797 digits as float images ``(N, 1, 28, 28)`` in [0, 1] and int64 labels."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        small = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1) / 16.0
        images = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        return images, torch.from_numpy(digits.target.astype(np.int64))

    def _split_test(self) -> None:
        if self._pool is not None:
            return
        images, labels = self.load_images()
        n = len(images)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.TEST_SPLIT_SEED))
        n_test = _split_count(self.test_size, n, "test_size")
        self._test = images[perm[:n_test]], labels[perm[:n_test]]
        rest = perm[n_test:]
        self._pool = images[rest], labels[rest]

    def _val_count(self, n: int) -> int:
        # A fraction means a fraction of *all* examples (60/20/20), not of what the test split left.
        n_all = n + len(self._test[0])
        count = round(self.val_size * n_all) if isinstance(self.val_size, float) else int(self.val_size)
        if count >= n:
            fail(type(self).__name__, f"val_size={self.val_size} leaves no training examples out of {n}")
        return count

    def _load_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._split_test()
        return self._pool

    def _load_test(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._split_test()
        return self._test
