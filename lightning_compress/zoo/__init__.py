"""Reference models and datamodules for examples, tests and benchmarks."""

from lightning_compress.zoo.data import DatasetNotFoundError, DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from lightning_compress.zoo.idx import IDXError, read_idx, write_idx
from lightning_compress.zoo.models import ImageClassifier, LeNet5, LeNet300100

__all__ = [
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "IDXError",
    "ImageClassifier",
    "LeNet300100",
    "LeNet5",
    "MNISTDataModule",
    "read_idx",
    "write_idx",
]
