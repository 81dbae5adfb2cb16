"""DataModules on IDX files the tests write (never the network), the embedded digits, and real Fashion-MNIST."""

from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_trainer

from lightning_compress.zoo import data as data_mod
from lightning_compress.zoo.data import DatasetNotFoundError, DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from lightning_compress.zoo.idx import IDXFormatError, write_idx
from lightning_compress.zoo.models import LeNet300100

N_TRAIN, N_TEST = 120, 30
STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def make_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=N_TRAIN, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=N_TEST, dtype=np.uint8),
    }


def write_dataset(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True, keys=tuple(STEMS)) -> Path:
    for key in keys:
        write_idx(folder / (STEMS[key] + (".gz" if gz else "")), arrays[key])
    return folder


@pytest.fixture(scope="module")
def arrays():
    return make_arrays()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach the network fails the way an offline machine does; file:// URLs still work."""
    real = data_mod.urllib.request.urlopen

    def offline(url, *args, **kwargs):
        if str(url).startswith("file:"):
            return real(url, *args, **kwargs)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution (test is offline)")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", offline)


def unnormalise(x: torch.Tensor, dm) -> torch.Tensor:
    """Back to the uint8 pixel values the files held."""
    return torch.round((x * dm.std + dm.mean) * 255).to(torch.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_folder_shapes_dtypes_and_exact_values(tmp_path, arrays, gz):
    write_dataset(tmp_path, arrays, gz=gz)
    dm = MNISTDataModule(tmp_path, download=False, val_size=20, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (100, 20)
    x, y = dm.train_dataset.tensors
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert (dm.mean, dm.std) == (0.1307, 0.3081)
    idx = dm.train_indices.numpy()
    np.testing.assert_array_equal(unnormalise(x, dm)[:, 0].numpy(), arrays["train_images"][idx])
    np.testing.assert_array_equal(y.numpy(), arrays["train_labels"][idx])
    np.testing.assert_array_equal(dm.val_dataset.tensors[1].numpy(), arrays["train_labels"][dm.val_indices.numpy()])
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 1, 28, 28) and yb.shape == (16,)
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 20

    dm.setup("test")
    xt, yt = dm.test_dataset.tensors
    assert xt.shape == (N_TEST, 1, 28, 28)
    np.testing.assert_array_equal(unnormalise(xt, dm)[:, 0].numpy(), arrays["test_images"])
    np.testing.assert_array_equal(yt.numpy(), arrays["test_labels"])


def test_normalisation_is_scale_then_standardise(tmp_path, arrays):
    write_dataset(tmp_path, arrays)
    dm = MNISTDataModule(tmp_path, download=False, val_size=0, mean=0.5, std=0.25)
    dm.setup("fit")
    x = dm.train_dataset.tensors[0][:, 0]
    expected = (torch.from_numpy(arrays["train_images"][dm.train_indices.numpy()]).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    assert len(dm.val_dataset) == 0 and len(dm.train_dataset) == N_TRAIN


def test_split_is_seeded_disjoint_and_reproducible(tmp_path, arrays):
    write_dataset(tmp_path, arrays)

    def split(seed, val_size=0.25):
        dm = MNISTDataModule(tmp_path, download=False, val_size=val_size, seed=seed)
        dm.setup("fit")
        return dm

    a, b, c = split(7), split(7), split(8)
    assert len(a.val_indices) == 30 and len(a.train_indices) == 90
    assert torch.equal(a.val_indices, b.val_indices) and torch.equal(a.train_indices, b.train_indices)
    assert torch.equal(a.train_dataset.tensors[0], b.train_dataset.tensors[0])
    assert not torch.equal(a.val_indices.sort().values, c.val_indices.sort().values)
    union = torch.cat([a.train_indices, a.val_indices]).sort().values
    assert torch.equal(union, torch.arange(N_TRAIN))


def test_limits_take_small_slices(tmp_path, arrays):
    write_dataset(tmp_path, arrays)
    dm = MNISTDataModule(tmp_path, download=False, val_size=40, train_limit=25, val_limit=10, test_limit=7)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (25, 10, 7)
    full = MNISTDataModule(tmp_path, download=False, val_size=40)
    full.setup("fit")
    # A limit is a prefix of the same seeded split, so the slice never leaks validation examples into training.
    assert torch.equal(dm.train_indices, full.train_indices[:25])
    assert torch.equal(dm.val_indices, full.val_indices[:10])


def test_invalid_arguments_name_the_parameter(tmp_path, arrays):
    from lightning_compress import CompressionConfigError

    for kwargs, match in [  # the package's one error type, naming the datamodule and the argument (issue 11)
        ({"val_size": 1.0}, r"MNISTDataModule: val_size must be a finite number >= 0 and < 1"),
        ({"val_size": -1}, r"MNISTDataModule: val_size must be an int >= 0"),
        ({"val_size": True}, "val_size must be a count"),
        ({"train_limit": 0}, "train_limit"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size must be an int"),
        ({"std": 0.0}, "std must be a finite number > 0"),
    ]:
        with pytest.raises(CompressionConfigError, match=match):
            MNISTDataModule(tmp_path, **kwargs)
    write_dataset(tmp_path, arrays)
    with pytest.raises(CompressionConfigError, match=f"val_size=120 leaves no training examples out of {N_TRAIN}"):
        MNISTDataModule(tmp_path, download=False, val_size=120).setup("fit")


def test_dotted_file_names_are_found(tmp_path, arrays):
    for key, stem in STEMS.items():
        write_idx(tmp_path / stem.replace("-idx", ".idx"), arrays[key])
    dm = MNISTDataModule(tmp_path, download=False, val_size=10)
    dm.setup("fit")
    assert len(dm.train_dataset) == N_TRAIN - 10


def test_absent_without_download_says_where_to_put_which_files(tmp_path):
    folder = tmp_path / "mnist"
    dm = MNISTDataModule(folder, download=False)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert f"missing from {folder}" in message
    assert "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in message
    assert "ossci-datasets.s3.amazonaws.com" in message and "download=True" in message
    assert isinstance(info.value, FileNotFoundError)


def test_absent_and_download_fails_offline(tmp_path):
    folder = tmp_path / "mnist"
    dm = MNISTDataModule(folder)  # download=True, default mirrors: the autouse fixture makes urlopen fail
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "Download failed" in message and "Temporary failure in name resolution" in message
    for stem in STEMS.values():
        assert f"{stem}.gz" in message
    for mirror in MNISTDataModule.MIRRORS:
        assert mirror + "train-images-idx3-ubyte.gz" in message
    assert list(folder.iterdir()) == []  # no half-written .part files left behind
    with pytest.raises(DatasetNotFoundError, match="Download failed"):
        MNISTDataModule(folder).setup("fit")  # a bare setup() tries too, with the same clear error


def test_download_from_mirror_verifies_md5(tmp_path, arrays, monkeypatch):
    mirror = write_dataset(tmp_path / "mirror", arrays, gz=True)
    md5 = {f"{s}.gz": hashlib.md5((mirror / f"{s}.gz").read_bytes()).hexdigest() for s in STEMS.values()}
    monkeypatch.setattr(MNISTDataModule, "MD5", md5)
    dead = "http://mirror.invalid/mnist/"
    dm = MNISTDataModule(tmp_path / "dl", val_size=20, mirrors=[dead, mirror.as_uri() + "/"])
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(md5)
    dm.setup("fit")
    assert len(dm.train_dataset) == 100
    np.testing.assert_array_equal(dm.train_dataset.tensors[1].numpy(),
                                  arrays["train_labels"][dm.train_indices.numpy()])


def test_download_with_wrong_md5_is_rejected(tmp_path, arrays):
    mirror = write_dataset(tmp_path / "mirror", arrays, gz=True)  # real MNIST MD5s cannot match these files
    dm = MNISTDataModule(tmp_path / "dl", mirrors=[mirror.as_uri()])
    with pytest.raises(DatasetNotFoundError, match="MD5 mismatch"):
        dm.prepare_data()
    assert list((tmp_path / "dl").iterdir()) == []


def test_only_train_files_present(tmp_path, arrays):
    write_dataset(tmp_path, arrays, keys=("train_images", "train_labels"))
    dm = MNISTDataModule(tmp_path, download=False, val_size=10)
    dm.setup("fit")
    with pytest.raises(DatasetNotFoundError, match=r"missing from .*: t10k-images-idx3-ubyte.gz, t10k-labels"):
        dm.setup("test")


def test_corrupt_and_mismatched_files_raise_idx_errors(tmp_path, arrays):
    write_dataset(tmp_path, arrays)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", arrays["train_labels"][:-1])
    with pytest.raises(IDXFormatError, match="holds 120 images but .* holds 119 labels"):
        MNISTDataModule(tmp_path, download=False).setup("fit")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", arrays["train_images"])  # images where labels belong
    with pytest.raises(IDXFormatError, match="train-labels-idx1-ubyte.gz: magic number 0x00000803"):
        MNISTDataModule(tmp_path, download=False).setup("fit")


def test_fashion_given_folder(tmp_path, arrays):
    write_dataset(tmp_path, arrays, gz=False)
    dm = FashionMNISTDataModule(tmp_path, download=False, val_size=20)
    dm.setup("fit")
    assert dm._folder() == tmp_path and (dm.mean, dm.std) == (0.2860, 0.3530)
    np.testing.assert_array_equal(unnormalise(dm.train_dataset.tensors[0], dm)[:, 0].numpy(),
                                  arrays["train_images"][dm.train_indices.numpy()])


def test_fashion_falls_back_to_debian_path_then_cache(tmp_path, arrays, monkeypatch):
    debian, cache = tmp_path / "usr-share-datasets-fashion-mnist", tmp_path / "cache"
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST_DIR", debian)
    monkeypatch.setattr(data_mod, "CACHE_DIR", cache)

    dm = FashionMNISTDataModule(download=False)
    assert dm._folder() == cache / "fashion-mnist"
    with pytest.raises(DatasetNotFoundError, match=r"(?s)Fashion-MNIST data is missing from .*cache.*apt-get install "
                                                   r"dataset-fashion-mnist"):
        dm.setup("fit")

    write_dataset(debian, arrays)  # what `apt-get install dataset-fashion-mnist` provides
    dm = FashionMNISTDataModule(val_size=0.5)
    assert dm._folder() == debian
    dm.prepare_data()  # nothing to download: the Debian files are found first
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (60, 60, N_TEST)
    assert not cache.exists()


REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_debian_fashion_mnist_loads():
    dm = FashionMNISTDataModule(download=False, test_limit=None)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (55000, 5000, 10000)
    x, y = dm.train_dataset.tensors
    assert x.shape == (55000, 1, 28, 28) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01  # the published mean/std fit
    assert torch.bincount(dm.test_dataset.tensors[1]).tolist() == [1000] * 10


def test_digits_split_sizes_and_standardisation():
    dm = DigitsDataModule(seed=3)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (1079, 359, 359)
    x, y = dm.train_dataset.tensors
    assert x.shape == (1079, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4  # stats from this very split
    assert set(y.tolist()) == set(range(10))
    raw, labels = DigitsDataModule.load_images()
    assert raw.shape == (1797, 1, 28, 28) and float(raw.min()) == 0.0 and float(raw.max()) <= 1.0
    assert torch.bincount(labels).sum() == 1797


def test_digits_test_split_fixed_across_seeds_val_split_not():
    a, b, c = DigitsDataModule(seed=1), DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    for dm in (a, b, c):
        dm.setup("fit")
        dm.setup("test")
    assert torch.equal(a.val_dataset.tensors[0], b.val_dataset.tensors[0])
    assert not torch.equal(a.val_indices.sort().values, c.val_indices.sort().values)
    assert torch.equal(a.test_dataset.tensors[1], c.test_dataset.tensors[1])
    # test-only setup (Trainer.test without fit) standardises the same way
    alone = DigitsDataModule(seed=1)
    alone.setup("test")
    assert torch.equal(alone.test_dataset.tensors[0], a.test_dataset.tensors[0])


def test_digits_end_to_end_through_lenet300100():
    dm = DigitsDataModule(batch_size=32, train_limit=64, val_limit=32)
    model = LeNet300100()
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert dm.hparams.train_limit == 64 and dm.hparams.val_size == 0.2  # saved for checkpoints and loggers
    assert 0.0 <= float(trainer.callback_metrics["val_acc"]) <= 1.0
    x, _ = next(iter(dm.train_dataloader()))
    assert model(x).shape == (32, 10)
