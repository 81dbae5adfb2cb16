"""Shared test fixtures.

Tests run on 2 CPU cores: keep models tiny and Trainer runs to a few batches.

Hypothesis runs under the deterministic "ci" profile by default (derandomized, fixed example count, no
example database), so a run's outcome never depends on a random seed or on ``.hypothesis/``. For a longer,
randomized search run ``HYPOTHESIS_PROFILE=thorough pytest tests/test_kmeans.py``.

Every test starts from the same global random state (``_fixed_global_rng``): a test that samples without its
own generator would otherwise see whatever state earlier tests left (``seed_everything()`` without a seed picks
a random one), and its outcome would depend on which tests ran before it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)
os.environ.setdefault("PL_DISABLE_FORK", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fixed_global_rng():
    """Seed torch, NumPy and ``random`` before every test: the same draws whatever ran before."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def run_script(tmp_path):
    """Run Python source in a fresh interpreter (for DDP launches and kill/resume tests).

    Returns the ``CompletedProcess``; fails the test with the script's output when it exits non-zero
    (unless ``check=False``).
    """

    def _run(source: str, *args: str, timeout: float = 300, check: bool = True, env: dict | None = None):
        path = tmp_path / f"script_{abs(hash(source)) % 10**8}.py"
        path.write_text(textwrap.dedent(source))
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
        proc = subprocess.run(
            [sys.executable, str(path), *args],
            cwd=tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"script exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
        return proc

    return _run


settings.register_profile("ci", derandomize=True, max_examples=40, database=None, deadline=None, print_blob=True)
settings.register_profile(
    "thorough",
    max_examples=2000,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
