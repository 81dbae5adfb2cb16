"""lightning-compress: Lightning callbacks that compress a network while it trains.

Public names are imported lazily so that ``import lightning_compress`` stays cheap and a user of
``core/`` alone never pays for Lightning's import.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "GradualMagnitudePruning": "lightning_compress.callbacks.pruning",
    "WeightSharing": "lightning_compress.callbacks.sharing",
    "LowRankFactorization": "lightning_compress.callbacks.factorization",
    "load_factorized": "lightning_compress.callbacks.factorization",
    "CompressionMonitor": "lightning_compress.callbacks.monitor",
    "ExportCompressed": "lightning_compress.callbacks.export",
    "save_compressed": "lightning_compress.export",
    "load_compressed": "lightning_compress.export",
    "model_stats": "lightning_compress.core.stats",
    "share_weights": "lightning_compress.post_training",
    "AtomicCheckpointIO": "lightning_compress.checkpoint_io",
    "CompressionConfigError": "lightning_compress.errors",
    "CompressedFileError": "lightning_compress.format.errors",
    "ArchitectureMismatchError": "lightning_compress.format.errors",
    "MemoryLimitError": "lightning_compress.format.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_compress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
