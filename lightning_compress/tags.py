"""TensorBoard tag names, shared by the callbacks, the monitor and the sensitivity tool (no Lightning here).

Scheme: ``compress/sparsity``, ``compress/sparsity/<layer>``, ``compress/target_sparsity[/<layer>]``,
``compress/bits/<layer>``, ``compress/estimated_ratio`` (the monitor's estimate), ``compress/ratio`` (a written
file's real ratio), ``compress/perplexity``, ``compress/rank/<layer>``, ...
"""

from __future__ import annotations

PREFIX = "compress"


def tag(*parts: str) -> str:
    """``tag("sparsity", "fc1.weight") -> "compress/sparsity/fc1.weight"``."""
    return "/".join((PREFIX, *parts))


__all__ = ["PREFIX", "tag"]
