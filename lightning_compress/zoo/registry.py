"""One resolver of model names for every console script (``lightning-compress``, ``-export``, ``-sensitivity``).

A name is a zoo short name (``LeNet5``), ``package.module.Class`` or ``package.module:Class``. Errors name the
argument and list the zoo, so a typo on any command line reads the same.
"""

from __future__ import annotations

import importlib

from torch import nn

from lightning_compress.validation import fail

#: Zoo short name -> class path. Add a zoo model here and every command knows it.
MODELS: dict[str, str] = {
    "LeNet300100": "lightning_compress.zoo.models.LeNet300100",
    "LeNet5": "lightning_compress.zoo.models.LeNet5",
    "TinyGPT": "lightning_compress.zoo.tinygpt.TinyGPT",
    "ResNet": "lightning_compress.zoo.resnet.ResNet",
}


def resolve_model_class(spec: str, argument: str = "model") -> type[nn.Module]:
    """The ``nn.Module`` subclass that ``spec`` names; ``CompressionConfigError`` naming ``argument`` otherwise."""
    if not isinstance(spec, str) or not spec:
        fail("", f"{argument}: expected a zoo name {sorted(MODELS)} or 'package.module.Class', got {spec!r}")
    path = MODELS.get(spec, spec)
    module_name, _, cls_name = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not cls_name:
        fail("", f"{argument}: expected a zoo name {sorted(MODELS)} or 'package.module.Class', got {spec!r}")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        fail("", f"{argument}: cannot import {spec!r}: {err}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        fail("", f"{argument}: {spec!r} is not an nn.Module subclass")
    return cls


__all__ = ["MODELS", "resolve_model_class"]
