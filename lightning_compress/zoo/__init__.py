"""Reference models and datamodules for examples, tests and benchmarks."""

from lightning_compress.zoo.models import ImageClassifier, LeNet5, LeNet300100

__all__ = ["ImageClassifier", "LeNet300100", "LeNet5"]
