"""Every benchmark's ``--quick`` mode runs (so none can rot): ``benchmarks/*.py``, found by glob.

Each script runs in a subprocess from a scratch copy of the repository layout (the scripts copied, everything
else linked), so what a script writes beside itself (``benchmarks/results/``, ``runs/``) lands in the scratch
folder and the committed results are never overwritten. Scripts built on ``benchmarks/_common.py`` also get
``--out`` pointing into the scratch folder. A quick mode is a smoke run: each should take well under a minute
of CPU; the timeout only stops a hung one.

Marked ``bench``: the default run leaves them out (``addopts`` in ``pyproject.toml``), CI runs them as a step of its
own (``.ci/run``: ``python -m pytest -m bench tests/test_benchmarks_quick.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 420


def _scratch_repo(root: Path) -> None:
    """``root`` laid out like the repository: ``benchmarks/*.py`` copied, the rest symlinked."""
    for entry in REPO.iterdir():
        if entry.name not in ("benchmarks", "runs"):
            (root / entry.name).symlink_to(entry)
    bench = root / "benchmarks"
    bench.mkdir()
    for script in (REPO / "benchmarks").glob("*.py"):
        shutil.copy(script, bench / script.name)
    (bench / "results").mkdir()


def test_benchmarks_are_found():
    names = {p.name for p in SCRIPTS}
    assert {"deep_compression.py", "factorization.py", "lenet_tuning.py"} <= names


@pytest.mark.bench
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_quick_mode_runs(script, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    _scratch_repo(root)
    out = tmp_path / "out"
    argv = [sys.executable, str(root / "benchmarks" / script.name), "--quick"]
    if "from _common import" in script.read_text():
        argv += ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"{script.name} --quick exited {proc.returncode} after {seconds:.0f}s\n" \
                                 f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"
    written = list(out.rglob("*.json")) + list((root / "benchmarks" / "results").rglob("*.json"))
    assert written, f"{script.name} --quick wrote no JSON result"
    print(f"{script.name} --quick: {seconds:.0f}s")
