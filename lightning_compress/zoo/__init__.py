"""Reference models and datamodules for examples, tests and benchmarks."""

from lightning_compress.zoo.data import DatasetNotFoundError, DigitsDataModule, FashionMNISTDataModule, MNISTDataModule
from lightning_compress.zoo.idx import IDXError, read_idx, write_idx
from lightning_compress.zoo.models import ImageClassifier, LeNet5, LeNet300100
from lightning_compress.zoo.resnet import ResNet
from lightning_compress.zoo.text import TextDataModule
from lightning_compress.zoo.tinygpt import TinyGPT

__all__ = [
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "IDXError",
    "ImageClassifier",
    "LeNet300100",
    "LeNet5",
    "MNISTDataModule",
    "ResNet",
    "TextDataModule",
    "TinyGPT",
    "read_idx",
    "write_idx",
]
