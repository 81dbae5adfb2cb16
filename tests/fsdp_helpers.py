"""Helpers for the sharded-training tests: a 2-process gloo group to run torch code on.

* :func:`spawn` runs ``fn(rank, world_size, *args)`` on ``world_size`` CPU processes joined in one gloo
  process group and returns each rank's return value (through files: anything ``torch.save`` can write).
  Start-up costs a couple of seconds per process: tests put many checks in one spawned function.

Torch only (spawned workers import this module; Lightning's import would double their start-up): the
Lightning side (a tiny FSDP2 module, 2-process fits) is in ``fsdp_fit.py``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, *args: Any, world_size: int = 2) -> list:
    """Each rank's ``fn(rank, world_size, *args)``; ``fn`` must be importable (a module-level function)."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world_size, free_port(), out, fn, args), nprocs=world_size, join=True)
        return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


#: Test modules whose ``_checks(rank, world_size)`` run together in one spawned group (start-up is the cost).
CHECK_MODULES = ("test_fsdp_distributed", "test_fsdp_masks", "test_fsdp_sharing")
_results: dict[str, list] = {}


def _all_checks(rank: int, world: int) -> dict:
    import importlib

    return {name: importlib.import_module(name)._checks(rank, world) for name in CHECK_MODULES}


def spawned_checks(module: str) -> list:
    """Each rank's ``module._checks`` result; the first call runs every module's checks in one 2-process group."""
    if not _results:
        for rank, result in enumerate(spawn(_all_checks)):
            for name, value in result.items():
                _results.setdefault(name, [None] * 2)[rank] = value
    return _results[module]


def cpu_mesh(world_size: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world_size,))


__all__ = ["cpu_mesh", "free_port", "spawn", "spawned_checks"]
