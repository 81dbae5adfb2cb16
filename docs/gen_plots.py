"""Draw the schedule curves shown in ``docs/schedules.md`` from the real schedule classes.

Run from the repository root (needs matplotlib, which the ``docs`` and ``bench`` extras install:
``pip install -e ".[docs]"``)::

    python docs/gen_plots.py

Every curve is computed by ``lightning_compress.schedules``, so the pictures change when the code does.
The PNGs in ``docs/img/`` are committed; re-run this after changing a schedule.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import matplotlib
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit('docs/gen_plots.py needs matplotlib: pip install -e ".[docs]" (or ".[bench]")')

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lightning_compress.schedules import (  # noqa: E402
    ConstantSchedule,
    CubicSchedule,
    ExponentialSchedule,
    LinearSchedule,
    MultiStepSchedule,
    PolynomialSchedule,
)
from lightning_compress.schedules.events import EventSchedule  # noqa: E402

IMG = Path(__file__).resolve().parent / "img"
FINAL = 0.9
EPOCHS = 12.0
T = np.linspace(0.0, EPOCHS, 1201)

# One ramp for all: start at epoch 1, final sparsity 0.9 at epoch 8, masks updated every half epoch.
RAMP = dict(start=1.0, end=8.0, frequency=0.5)
SCHEDULES = {
    "cubic": CubicSchedule(**RAMP),
    "polynomial_power2": PolynomialSchedule(**RAMP, power=2.0),
    "linear": LinearSchedule(**RAMP),
    "exponential": ExponentialSchedule(**RAMP),
    "constant": ConstantSchedule(start=3.0),
    "multistep": MultiStepSchedule({1: 0.5, 3: 0.8, 5: 0.9}),
}
TITLES = {
    "cubic": 'CubicSchedule  (schedule="cubic", the default)',
    "polynomial_power2": "PolynomialSchedule(power=2)",
    "linear": 'LinearSchedule  (schedule="linear")',
    "exponential": 'ExponentialSchedule  (schedule="exponential")',
    "constant": 'ConstantSchedule(start=3)  (schedule="constant")',
    "multistep": "MultiStepSchedule({1: 0.5, 3: 0.8, 5: 0.9})  (schedule={1: 0.5, 3: 0.8, 5: 0.9})",
}


def draw(name: str, sched) -> Path:
    held = [sched.target_at_update(t, final=FINAL) for t in T]
    exact = [sched.target(t, final=FINAL) for t in T]
    points = sched.update_points()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    if not isinstance(sched, (MultiStepSchedule, ConstantSchedule)):
        ax.plot(T, exact, color="0.7", lw=1, ls="--", label="target(t)")
    ax.plot(T, held, color="C0", lw=2, label="sparsity held by the masks")
    ax.plot(points, [sched.target(p, final=FINAL) for p in points], "o", color="C1", ms=4, label="update points")
    ax.set_xlabel("epoch")
    ax.set_ylabel("sparsity")
    ax.set_ylim(-0.03, 1.0)
    ax.set_xlim(0, EPOCHS)
    ax.grid(alpha=0.3)
    ax.set_title(TITLES[name], fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = IMG / f"schedule_{name}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_overlay() -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name in ("cubic", "polynomial_power2", "linear", "exponential"):
        sched = SCHEDULES[name]
        ax.plot(T, [sched.target(t, final=FINAL) for t in T], lw=2, label=name.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("sparsity")
    ax.set_xlim(0, EPOCHS)
    ax.grid(alpha=0.3)
    ax.set_title("Ramps from epoch 1 to 8, final sparsity 0.9 (target(t), exact)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = IMG / "schedule_ramps.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def draw_events() -> Path:
    """WeightSharing's layer-by-layer timing: ``EventSchedule(start=4, interval=2)`` over three layers."""
    layers = ["fc1.weight", "fc2.weight", "fc3.weight"]
    sched = EventSchedule(start=4, unit="epoch", interval=2)
    epochs = np.arange(0, 12)
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    for row, (name, when) in enumerate(sched.times(layers).items()):
        shared = epochs >= when
        ax.step(epochs, np.array(shared, dtype=float) * 0.8 + row, where="post", lw=2)
        ax.text(-0.2, row + 0.35, name, ha="right", va="center", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-3.2, 11)
    ax.set_xticks(range(0, 12))
    ax.set_xlabel("epoch (clustering happens at the start of the epoch)")
    ax.set_title("EventSchedule(start=4, interval=2): WeightSharing(start_epoch=4, layer_interval=2)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = IMG / "schedule_events.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    written = [draw(name, sched) for name, sched in SCHEDULES.items()]
    written += [draw_overlay(), draw_events()]
    for path in written:
        print(path.relative_to(IMG.parent.parent))


if __name__ == "__main__":
    main()
