"""``lightning-compress``: the LightningCLI entry point.

Any LightningModule / LightningDataModule works by class path; the zoo's by short name
(``--model LeNet300100 --data FashionMNISTDataModule``). Every callback of this package is configurable
under ``trainer.callbacks`` with ``class_path``/``init_args`` in YAML, or on the command line
(``--trainer.callbacks+=GradualMagnitudePruning --trainer.callbacks.final_sparsity=0.9``).

Importing the package's classes here is what makes their short names resolvable: the callbacks' and zoo's
modules below, and the module of every model in :data:`lightning_compress.zoo.registry.MODELS` (the one list
of zoo models that ``lightning-compress-export`` and ``lightning-compress-sensitivity`` read too), so a model added
to the registry is known to every command.
"""

from __future__ import annotations

from importlib import import_module

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# Modules whose classes become resolvable by short name. A module that fails to import is a bug, not
# something to hide, so there is no try/except around the imports.
_REGISTERED = (
    "lightning_compress.zoo.models",
    "lightning_compress.zoo.data",
    "lightning_compress.callbacks.monitor",
    "lightning_compress.callbacks.pruning",
    "lightning_compress.callbacks.sharing",
    "lightning_compress.callbacks.factorization",
    "lightning_compress.callbacks.export",
)


def _model_modules() -> list[str]:
    from lightning_compress.zoo.registry import MODELS

    return [path.partition(":")[0] if ":" in path else path.rpartition(".")[0] for path in MODELS.values()]


def _register() -> None:
    for name in dict.fromkeys([*_REGISTERED, *_model_modules()]):
        import_module(name)


class CompressCLI(LightningCLI):
    """LightningCLI with the zoo and the compression callbacks registered."""

    def __init__(self, *args, **kwargs) -> None:
        _register()
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)


def main(args=None) -> None:
    CompressCLI(args=args)


if __name__ == "__main__":
    main()
