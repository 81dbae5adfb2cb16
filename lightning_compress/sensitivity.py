"""Per-layer pruning sensitivity: how Han et al. (2015) chose each layer's threshold.

Each selected layer is pruned *alone* (magnitude pruning, the others untouched, no retraining) at
increasing sparsity and the validation accuracy is measured. Layers whose accuracy barely moves can be
pruned hard; sensitive ones (the first conv layer, the last classifier) get a lower target. The suggestion
for a layer is the largest tested sparsity whose accuracy, and that of every lower sparsity, stays within
``tolerance`` of the unpruned model: a starting point for ``GradualMagnitudePruning(final_sparsity=...)``,
where retraining usually recovers more.

From Python::

    from lightning_compress.sensitivity import analyze_sensitivity

    result = analyze_sensitivity(model, datamodule.val_dataloader(), log_dir="runs/sensitivity")
    print(result.table())
    pruning = GradualMagnitudePruning(final_sparsity=result.suggest(tolerance=0.01))

From the command line (a Lightning checkpoint, a state_dict file or a ``.lcz`` compressed file)::

    lightning-compress-sensitivity --model LeNet300100 --data FashionMNISTDataModule \\
        --ckpt_path runs/dense/last.ckpt --tolerance 0.01 --output sensitivity.json
    tensorboard --logdir runs/sensitivity

TensorBoard gets ``compress/sensitivity/accuracy/<layer>`` with the sparsity in per mille as the step
(900 = 90%), all layers in one chart under the *Custom Scalars* tab, and the table as text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn

from lightning_compress.tags import tag
from lightning_compress.core import masks as M
from lightning_compress.core.targets import find_targets

#: Sparsities tried by default: coarse where layers rarely care, fine where they start to.
DEFAULT_SPARSITIES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
#: TensorBoard steps are integers: the x axis is sparsity in per mille.
STEP_SCALE = 1000


def top1_accuracy(model: nn.Module, batches: Iterable, max_batches: int | None = None) -> float:
    """Top-1 accuracy of ``model(x)`` over ``(x, y)`` batches (eval mode, no grad, on the model's device)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = total = 0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ValueError("top1_accuracy: batches must be (x, y) pairs; pass evaluate= for other data")
            x, y = batch[0].to(device), batch[1].to(device)
            correct += int((model(x).argmax(-1) == y).sum())
            total += y.numel()
    if total == 0:
        raise ValueError("top1_accuracy: the dataloader gave no examples")
    return correct / total


@dataclass
class SensitivityResult:
    """Accuracy of the model with one layer pruned at a time.

    ``curves[layer][i]`` is the metric with only ``layer`` pruned to ``sparsities[i]``; ``baseline`` is
    the metric of the unpruned model (higher is better).
    """

    baseline: float
    sparsities: list[float]
    curves: dict[str, list[float]]
    numel: dict[str, int] = field(default_factory=dict)

    def suggest(self, tolerance: float = 0.01) -> dict[str, float]:
        """``{layer: sparsity}``: the largest sparsity such that it and every lower one lose <= ``tolerance``.

        Requiring every lower sparsity to pass ignores a lucky point past a drop. A layer that already
        fails at the lowest tested sparsity gets 0.0 (leave it dense).
        """
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
        out: dict[str, float] = {}
        for layer, accs in self.curves.items():
            best = 0.0
            for s, acc in zip(self.sparsities, accs):
                if self.baseline - acc > tolerance + 1e-12:
                    break
                best = s
            out[layer] = best
        return out

    def kept_fraction(self, tolerance: float = 0.01) -> float:
        """Fraction of the analysed weights that the suggestion keeps (each layer pruned to its own target)."""
        total = sum(self.numel.values())
        if not total:
            return 1.0
        targets = self.suggest(tolerance)
        return sum(n * (1.0 - targets[name]) for name, n in self.numel.items()) / total

    def table(self, tolerance: float | None = None) -> str:
        """Markdown: one row per layer, accuracy at each sparsity, and the suggestion when ``tolerance`` is given."""
        head = ["layer", "weights", *(f"{100 * s:g}%" for s in self.sparsities)]
        suggestion = self.suggest(tolerance) if tolerance is not None else None
        if suggestion is not None:
            head.append(f"suggested (tol {tolerance:g})")
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for layer, accs in self.curves.items():
            cells = [layer, f"{self.numel.get(layer, 0):,}", *(f"{a:.4f}" for a in accs)]
            if suggestion is not None:
                cells.append(f"{suggestion[layer]:g}")
            rows.append("| " + " | ".join(cells) + " |")
        return f"baseline (unpruned): {self.baseline:.4f}\n\n" + "\n".join(rows)

    def as_dict(self, tolerance: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "baseline": self.baseline,
            "sparsities": list(self.sparsities),
            "curves": {k: list(v) for k, v in self.curves.items()},
            "numel": dict(self.numel),
        }
        if tolerance is not None:
            out["tolerance"] = tolerance
            out["suggested_final_sparsity"] = self.suggest(tolerance)
            out["kept_fraction"] = self.kept_fraction(tolerance)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SensitivityResult":
        return cls(float(data["baseline"]), [float(s) for s in data["sparsities"]],
                   {k: [float(a) for a in v] for k, v in data["curves"].items()}, dict(data.get("numel", {})))


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    values = [float(s) for s in sparsities]
    if not values:
        raise ValueError("sparsities must not be empty")
    if any(not 0.0 <= s <= 1.0 for s in values):
        raise ValueError(f"sparsities must be in [0, 1], got {list(sparsities)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"sparsities must be strictly increasing, got {list(sparsities)}")
    return values


def analyze_sensitivity(
    model: nn.Module,
    dataloader: Iterable | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    max_batches: int | None = None,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    types: Sequence[str] | None = None,
    log_dir: str | None = None,
    writer: Any = None,
) -> SensitivityResult:
    """Prune each selected layer alone at each of ``sparsities`` and measure the model.

    Args:
        model: the trained model; it is left exactly as it was (weights restored, train/eval mode kept).
        dataloader: ``(x, y)`` batches for top-1 accuracy (usually validation), unless ``evaluate`` is given.
        sparsities: increasing fractions of each layer's weights to zero (magnitude, exact counts).
        evaluate: ``model -> float`` (higher is better) instead of top-1 accuracy on ``dataloader``.
        max_batches: evaluate on the first ``max_batches`` batches only (faster, noisier).
        include, exclude, types: layer selection, as for the callbacks (default: Linear/Conv weights).
        log_dir / writer: write the curves to TensorBoard (a ``SummaryWriter`` or a folder for a new one).
    """
    values = _check_sparsities(sparsities)
    if evaluate is None:
        if dataloader is None:
            raise ValueError("analyze_sensitivity: give a dataloader of (x, y) batches or an evaluate function")
        evaluate = lambda m: top1_accuracy(m, dataloader, max_batches)  # noqa: E731
    targets = find_targets(model, include, exclude, types, owner="analyze_sensitivity")
    was_training = model.training
    model.eval()
    curves: dict[str, list[float]] = {}
    try:
        baseline = float(evaluate(model))
        for t in targets:
            original = t.param.detach().clone()
            accs = []
            try:
                for s in values:
                    with torch.no_grad():
                        t.param.copy_(original)
                        M.apply_mask_(t.param, M.magnitude_mask(original, s))
                    accs.append(float(evaluate(model)))
            finally:
                with torch.no_grad():
                    t.param.copy_(original)
            curves[t.name] = accs
    finally:
        model.train(was_training)
    result = SensitivityResult(baseline, values, curves, {t.name: t.param.numel() for t in targets})
    if writer is not None or log_dir is not None:
        log_sensitivity(result, writer=writer, log_dir=log_dir)
    return result


def log_sensitivity(result: SensitivityResult, writer: Any = None, log_dir: str | None = None,
                    tolerance: float | None = None) -> None:
    """Write the curves to TensorBoard (step = sparsity in per mille), one chart per layer and one for all."""
    own = writer is None
    if own:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=log_dir)
    try:
        tags = []
        for layer, accs in result.curves.items():
            name = tag("sensitivity", "accuracy", layer)
            tags.append(name)
            writer.add_scalar(name, result.baseline, global_step=0)
            for s, acc in zip(result.sparsities, accs):
                writer.add_scalar(name, acc, global_step=int(round(s * STEP_SCALE)))
        writer.add_scalar(tag("sensitivity", "baseline"), result.baseline, global_step=0)
        writer.add_custom_scalars({"sensitivity": {"accuracy vs sparsity (per mille), one layer pruned": ["Multiline", tags]}})
        writer.add_text(tag("sensitivity", "table"), result.table(tolerance))
        writer.flush()
    finally:
        if own:
            writer.close()


# ---- command line -------------------------------------------------------------------------------------


def _load_weights(model: nn.Module, path: str) -> None:
    """A ``.lcz`` compressed file, a Lightning checkpoint (``state_dict`` key) or a plain state_dict."""
    if path.endswith(".lcz"):
        from lightning_compress.export import load_compressed

        load_compressed(path, model)
        return
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    model.load_state_dict(state)


def run(
    model: LightningModule,
    data: LightningDataModule,
    ckpt_path: str | None = None,
    fit_epochs: int = 0,
    sparsities: list[float] = list(DEFAULT_SPARSITIES),
    tolerance: float = 0.01,
    split: str = "val",
    max_batches: int | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    log_dir: str | None = "runs/sensitivity",
    output: str | None = None,
    seed: int = 0,
) -> SensitivityResult:
    """Per-layer pruning sensitivity of a trained model; prints the table and suggested ``final_sparsity``.

    Args:
        model: the LightningModule (short zoo names work: ``LeNet300100``, ``LeNet5``).
        data: the LightningDataModule providing ``(x, y)`` batches.
        ckpt_path: trained weights: Lightning ``.ckpt``, a ``state_dict`` file, or a ``.lcz`` compressed file.
        fit_epochs: without ``ckpt_path``, train this many dense epochs first (0: analyse the model as built).
        sparsities: increasing sparsities to try per layer.
        tolerance: largest accepted accuracy drop (absolute, 0.01 = one point) for the suggestion.
        split: ``val`` or ``test`` dataloader to measure on.
        max_batches: only the first batches of that dataloader.
        include, exclude: layer globs, as for the callbacks.
        log_dir: TensorBoard folder (``null``: none).
        output: JSON file for the curves and the suggestion.
        seed: seed for ``fit_epochs`` training and the data split.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_warn

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if fit_epochs < 0:
        raise ValueError(f"fit_epochs must be >= 0, got {fit_epochs}")
    pl.seed_everything(seed)
    if ckpt_path is not None:
        _load_weights(model, ckpt_path)
    elif fit_epochs > 0:
        trainer = pl.Trainer(max_epochs=fit_epochs, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, datamodule=data)
    else:
        rank_zero_warn("lightning-compress-sensitivity: no ckpt_path and fit_epochs=0: analysing untrained weights")
    data.setup("fit" if split == "val" else "test")
    loader = data.val_dataloader() if split == "val" else data.test_dataloader()
    result = analyze_sensitivity(model, loader, sparsities, max_batches=max_batches, include=include,
                                 exclude=exclude, log_dir=None)
    if log_dir:
        log_sensitivity(result, log_dir=log_dir, tolerance=tolerance)
    suggestion = result.suggest(tolerance)
    print(result.table(tolerance))
    print(f"\nsuggested final_sparsity (accuracy drop <= {tolerance:g} per layer, no retraining; "
          f"keeps {100 * result.kept_fraction(tolerance):.1f}% of the weights):")
    print("final_sparsity: {" + ", ".join(f"{k}: {v:g}" for k, v in suggestion.items()) + "}")
    if output:
        folder = os.path.dirname(os.path.abspath(output))
        os.makedirs(folder, exist_ok=True)
        with open(output, "w") as f:
            json.dump(result.as_dict(tolerance), f, indent=2)
    return result


def main(args: Sequence[str] | None = None) -> None:
    """Console script ``lightning-compress-sensitivity``."""
    from jsonargparse import CLI

    import lightning_compress.zoo  # noqa: F401 - makes the zoo's short class names resolvable

    CLI(run, args=args, as_positional=False)


__all__ = ["DEFAULT_SPARSITIES", "SensitivityResult", "analyze_sensitivity", "log_sensitivity", "main", "run",
           "top1_accuracy"]

if __name__ == "__main__":  # pragma: no cover
    main()
