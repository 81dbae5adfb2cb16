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
        --ckpt_path runs/dense/checkpoints/last.ckpt --tolerance 0.01 --output sensitivity.json
    tensorboard --logdir runs/sensitivity

Every argument is checked before any weight is loaded or any batch is seen; a bad one stops the command with a
one-line message naming it. Each invocation writes its own TensorBoard run, ``<log_dir>/version_N``, with
``compress/sensitivity/accuracy/<layer>`` over the sparsity in per mille as the step (900 = 90%), all layers in one
chart under the *Custom Scalars* tab, and the table as text. Checkpoints are read with
``torch.load(weights_only=True)``: a file can hold tensors, never code.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_compress.core import masks
from lightning_compress.core.metrics import top1_accuracy
from lightning_compress.core.targets import find_targets
from lightning_compress.errors import CompressedFileError
from lightning_compress.tags import tag
from lightning_compress.validation import (
    as_config_error,
    check_choice,
    check_int,
    check_number,
    check_writable_file,
    fail,
    is_number,
)

#: Sparsities tried by default: coarse where layers rarely care, fine where they start to.
DEFAULT_SPARSITIES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
#: TensorBoard steps are integers: the x axis is sparsity in per mille.
STEP_SCALE = 1000


OWNER = "lightning-compress-sensitivity"


def _accuracy(model: nn.Module, batches: Iterable, max_batches: int | None) -> float:
    """Top-1 accuracy (:func:`lightning_compress.core.metrics.top1_accuracy`); an error when there is none."""
    acc = top1_accuracy(model, batches, max_batches)
    if acc is None:
        fail("analyze_sensitivity", "the dataloader gave no (x, y) classification batches (logits (B, C), integer "
                                    "targets); pass evaluate= to measure something else")
    return acc


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
        check_number("suggest", "tolerance", tolerance, low=0)
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


def _check_sparsities(sparsities: Sequence[float], owner: str = "analyze_sensitivity") -> list[float]:
    values = list(sparsities) if isinstance(sparsities, (list, tuple)) else None
    if not values:
        fail(owner, f"sparsities must be a non-empty list of numbers in [0, 1], got {sparsities!r}")
    if not all(is_number(s) and 0 <= s <= 1 for s in values):
        fail(owner, f"sparsities must be numbers in [0, 1], got {list(sparsities)}")
    if any(b <= a for a, b in zip(values, values[1:])):
        fail(owner, f"sparsities must be strictly increasing, got {list(sparsities)}")
    return [float(s) for s in values]


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
    verbose: bool = False,
) -> SensitivityResult:
    """Prune each selected layer alone at each of ``sparsities`` and measure the model.

    Args:
        model: the trained model; it is left exactly as it was (weights restored, train/eval mode kept).
        dataloader: ``(x, y)`` batches for top-1 accuracy (usually validation), unless ``evaluate`` is given.
        sparsities: increasing fractions of each layer's weights to zero (magnitude, exact counts).
        evaluate: ``model -> float`` (higher is better) instead of top-1 accuracy on ``dataloader``.
        max_batches: evaluate on the first ``max_batches`` batches only (faster, noisier).
        include: globs of the layers to analyse, as for the callbacks (default: every layer of ``types``).
        exclude: globs of layers to leave out.
        types: layer types to select (``"linear"``, ``"conv"``, ... or classes; default Linear and Conv).
        log_dir: write the curves to TensorBoard in this folder (a new ``SummaryWriter``).
        writer: write the curves to this ``SummaryWriter`` instead.
        verbose: one progress line per layer (``rank_zero_info``), for long sweeps.
    """
    values = _check_sparsities(sparsities)
    check_int("analyze_sensitivity", "max_batches", max_batches, low=1, allow_none=True)
    if evaluate is None:
        if dataloader is None:
            fail("analyze_sensitivity", "give a dataloader of (x, y) batches or an evaluate function")
        evaluate = lambda m: _accuracy(m, dataloader, max_batches)  # noqa: E731
    with as_config_error("analyze_sensitivity"):
        targets = find_targets(model, include, exclude, types, owner="analyze_sensitivity")
    was_training = model.training
    model.eval()
    curves: dict[str, list[float]] = {}
    try:
        baseline = float(evaluate(model))
        if verbose:
            rank_zero_info(f"sensitivity: baseline {baseline:.4f}; {len(targets)} layers x {len(values)} sparsities")
        for i, t in enumerate(targets):
            curves[t.name] = _sweep(model, t.param, values, evaluate)
            if verbose:
                rank_zero_info(f"sensitivity: [{i + 1}/{len(targets)}] {t.name} ({t.param.numel():,} weights): "
                               + " ".join(f"{100 * s:g}%={a:.4f}" for s, a in zip(values, curves[t.name])))
    finally:
        model.train(was_training)
    result = SensitivityResult(baseline, values, curves, {t.name: t.param.numel() for t in targets})
    if writer is not None or log_dir is not None:
        log_sensitivity(result, writer=writer, log_dir=log_dir)
    return result


def _sweep(model: nn.Module, param: torch.Tensor, values: list[float], evaluate: Callable) -> list[float]:
    """The metric with ``param`` alone magnitude-pruned to each sparsity; ``param`` restored bit-exactly."""
    original = param.detach().clone()
    accs = []
    try:
        for s in values:
            with torch.no_grad():
                param.copy_(original)
                masks.apply_mask_(param, masks.magnitude_mask(original, s))
            accs.append(float(evaluate(model)))
    finally:
        with torch.no_grad():
            param.copy_(original)
    return accs


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
    """A ``.lcz`` compressed file, a Lightning checkpoint (``state_dict`` key) or a plain state_dict.

    Never unpickles: ``torch.load(weights_only=True)`` reads tensors and plain containers only.
    """
    if os.path.splitext(path)[1].lower() == ".lcz":
        from lightning_compress.export import load_compressed

        load_compressed(path, model)
        return
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable or unsafe file ends in one message naming it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fail(OWNER, f"ckpt_path: cannot read {path!r} as a checkpoint of tensors ({first}); a checkpoint that "
                    "needs more than weights_only=True allows is not loaded: load it yourself if you trust it, "
                    "and save its state_dict with torch.save")
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    if not isinstance(state, dict):
        fail(OWNER, f"ckpt_path: {path!r} holds no state_dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        fail(OWNER, f"ckpt_path: {path!r} does not fit the model: {str(err).splitlines()[0]}")


def _new_run_dir(root: str) -> str:
    """``root/version_N`` with N one more than the largest there: one TensorBoard run per invocation."""
    taken = [int(m.group(1)) for name in (os.listdir(root) if os.path.isdir(root) else [])
             if (m := re.fullmatch(r"version_(\d+)", name))]
    return os.path.join(root, f"version_{max(taken, default=-1) + 1}")


def _check_arguments(model: nn.Module, ckpt_path, fit_epochs, sparsities, tolerance, split, max_batches,
                     include, exclude, log_dir, output, seed) -> list[float]:
    """Every argument of :func:`run`, before any weight is loaded or any batch is seen."""
    if ckpt_path is not None:
        if not isinstance(ckpt_path, str) or not os.path.isfile(ckpt_path):
            fail(OWNER, f"ckpt_path: no such file: {ckpt_path!r}")
    check_int(OWNER, "fit_epochs", fit_epochs, low=0)
    values = _check_sparsities(sparsities, OWNER)
    check_number(OWNER, "tolerance", tolerance, low=0, high=1)
    check_choice(OWNER, "split", split, ("val", "test"))
    check_int(OWNER, "max_batches", max_batches, low=1, allow_none=True)
    check_int(OWNER, "seed", seed)
    if log_dir is not None and (not isinstance(log_dir, str) or os.path.isfile(log_dir)):
        fail(OWNER, f"log_dir: expected a folder (or null for no TensorBoard run), got {log_dir!r}")
    if output is not None:
        check_writable_file(OWNER, "output", output)
    with as_config_error(OWNER):  # globs that match no layer fail here, not after training
        find_targets(model, include, exclude, owner=OWNER)
    return values


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
        model: the LightningModule (zoo short names work: ``LeNet300100``, ``LeNet5``).
        data: the LightningDataModule providing ``(x, y)`` batches.
        ckpt_path: trained weights: Lightning ``.ckpt``, a ``state_dict`` file, or a ``.lcz`` compressed file.
        fit_epochs: without ``ckpt_path``, train this many dense epochs first (0: analyse the model as built).
        sparsities: increasing sparsities to try per layer.
        tolerance: largest accepted accuracy drop (absolute, 0.01 = one point) for the suggestion.
        split: ``val`` or ``test`` dataloader to measure on.
        max_batches: only the first batches of that dataloader.
        include: globs of the layers to analyse, as for the callbacks (default: every Linear/Conv weight).
        exclude: globs of layers to leave out.
        log_dir: TensorBoard folder; each run writes a new ``version_N`` subfolder (``null``: none).
        output: JSON file for the curves and the suggestion.
        seed: seed for ``fit_epochs`` training and the data split.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_warn

    values = _check_arguments(model, ckpt_path, fit_epochs, sparsities, tolerance, split, max_batches, include,
                              exclude, log_dir, output, seed)
    pl.seed_everything(seed)
    if ckpt_path is not None:
        _load_weights(model, ckpt_path)
    elif fit_epochs > 0:
        trainer = pl.Trainer(max_epochs=fit_epochs, logger=False, enable_checkpointing=False,
                             enable_model_summary=False)  # Lightning's progress bar shows the training
        trainer.fit(model, datamodule=data)
    else:
        rank_zero_warn(f"{OWNER}: no ckpt_path and fit_epochs=0: analysing untrained weights")
    data.setup("fit" if split == "val" else "test")
    loader = data.val_dataloader() if split == "val" else data.test_dataloader()
    result = analyze_sensitivity(model, loader, values, max_batches=max_batches, include=include,
                                 exclude=exclude, log_dir=None, verbose=True)
    if log_dir:
        run_dir = _new_run_dir(log_dir)
        log_sensitivity(result, log_dir=run_dir, tolerance=tolerance)
        rank_zero_info(f"sensitivity: TensorBoard run {run_dir}")
    suggestion = result.suggest(tolerance)
    print(result.table(tolerance))
    print(f"\nsuggested final_sparsity (accuracy drop <= {tolerance:g} per layer, no retraining; "
          f"keeps {100 * result.kept_fraction(tolerance):.1f}% of the weights):")
    print("final_sparsity: {" + ", ".join(f"{k}: {v:g}" for k, v in suggestion.items()) + "}")
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(result.as_dict(tolerance), f, indent=2)
    return result


def _resolve_model_names(args: list[str]) -> list[str]:
    """``--model NAME``: the zoo's short names through the one resolver (``zoo/registry``), as a class path."""
    from lightning_compress.zoo.registry import resolve_model_class

    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--model" and i + 1 < len(out):
            j, spec = i + 1, out[i + 1]
        elif arg.startswith("--model="):
            j, spec = i, arg.partition("=")[2]
        else:
            continue
        if spec.startswith(("{", "[")) or spec.endswith((".yaml", ".yml", ".json")):
            continue  # a mapping with init_args, or a config file: jsonargparse's to read
        cls = resolve_model_class(spec, argument="--model")
        path = f"{cls.__module__}.{cls.__qualname__}"
        out[j] = path if j == i + 1 else f"--model={path}"
    return out


def main(args: Sequence[str] | None = None) -> None:
    """Console script ``lightning-compress-sensitivity``: a bad argument or file ends in one line on stderr."""
    from jsonargparse import CLI

    import lightning_compress.zoo  # noqa: F401 - makes the zoo's short class names resolvable

    argv = list(sys.argv[1:] if args is None else args)
    try:
        CLI(run, args=_resolve_model_names(argv), as_positional=False)
    except (ValueError, CompressedFileError) as err:  # CompressionConfigError, and core's selection errors
        print(f"{OWNER}: error: {str(err).removeprefix(OWNER + ': ')}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["DEFAULT_SPARSITIES", "SensitivityResult", "analyze_sensitivity", "log_sensitivity", "main", "run",
           "top1_accuracy"]

if __name__ == "__main__":  # pragma: no cover
    main()
