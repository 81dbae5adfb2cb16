"""Sensitivity analysis: each layer pruned alone with exact counts, model restored, suggestions, TensorBoard, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.core.masks import num_to_prune
from lightning_compress.sensitivity import SensitivityResult, analyze_sensitivity, main, top1_accuracy


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_each_layer_is_pruned_alone_with_exact_counts_and_the_model_is_restored():
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def evaluate(m):
        assert not m.training  # measured in eval mode
        seen.append({name: int((m.get_parameter(name) == 0).sum()) for name in ("0.weight", "2.weight")})
        return float(len(seen))  # a distinct "accuracy" per call, to check where each value lands

    result = analyze_sensitivity(model, sparsities=[0.2, 0.5, 0.9], evaluate=evaluate)

    assert seen[0] == {"0.weight": 0, "2.weight": 0}  # baseline: nothing pruned
    for i, s in enumerate([0.2, 0.5, 0.9]):
        assert seen[1 + i] == {"0.weight": num_to_prune(30, s), "2.weight": 0}
        assert seen[4 + i] == {"0.weight": 0, "2.weight": num_to_prune(15, s)}
    assert result.baseline == 1.0
    assert result.curves == {"0.weight": [2.0, 3.0, 4.0], "2.weight": [5.0, 6.0, 7.0]}
    assert result.numel == {"0.weight": 30, "2.weight": 15}
    assert model.training  # mode restored
    for k, v in model.state_dict().items():  # weights restored bit-exactly
        assert torch.equal(v, before[k])


def test_the_smallest_magnitudes_go_first():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -4.0, 0.3, -0.2]]))
    kept = []
    analyze_sensitivity(model, sparsities=[0.25, 0.75],
                        evaluate=lambda m: kept.append(m[0].weight.detach().clone()) or 0.0)
    assert torch.equal(kept[1], torch.tensor([[0.0, -4.0, 0.3, -0.2]]))
    assert torch.equal(kept[2], torch.tensor([[0.0, -4.0, 0.0, 0.0]]))


def test_suggest_stops_at_the_first_sparsity_outside_the_tolerance():
    result = SensitivityResult(
        baseline=0.90,
        sparsities=[0.5, 0.7, 0.9],
        curves={"a": [0.90, 0.895, 0.85], "b": [0.85, 0.90, 0.90], "c": [0.91, 0.90, 0.89]},
        numel={"a": 100, "b": 50, "c": 10},
    )
    assert result.suggest(0.01) == {"a": 0.7, "b": 0.0, "c": 0.9}  # b: a later pass after a drop does not count
    assert result.suggest(0.0) == {"a": 0.5, "b": 0.0, "c": 0.7}
    assert result.suggest(0.1) == {"a": 0.9, "b": 0.9, "c": 0.9}
    # kept fraction of the suggestion, weighted by layer size: (100*0.3 + 50*1 + 10*0.1) / 160
    assert result.kept_fraction(0.01) == pytest.approx((30 + 50 + 1) / 160)
    assert SensitivityResult.from_dict(json.loads(json.dumps(result.as_dict(0.01)))) == result
    with pytest.raises(ValueError, match="tolerance"):
        result.suggest(-0.1)
    assert "| a | 100 | 0.9000 | 0.8950 | 0.8500 | 0.7 |" in result.table(0.01)


def test_top1_accuracy_exact():
    x = torch.eye(3).repeat(2, 1)  # logits = x: predicts the position of the 1
    y = torch.tensor([0, 1, 0, 0, 1, 2])  # predictions 0 1 2 0 1 2: only the third is wrong
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    assert top1_accuracy(nn.Identity(), loader) == pytest.approx(5 / 6)
    assert top1_accuracy(nn.Identity(), loader, max_batches=1) == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sparsities": [0.5, 0.5]}, "strictly increasing"),
        ({"sparsities": [1.5]}, r"in \[0, 1\]"),
        ({"sparsities": []}, "empty"),
        ({"include": ["nope*"]}, "nope"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        analyze_sensitivity(tiny_model(), evaluate=lambda m: 0.0, **kwargs)


def test_needs_data_or_an_evaluate_function():
    with pytest.raises(ValueError, match="dataloader"):
        analyze_sensitivity(tiny_model())


def test_curves_in_tensorboard(tmp_path):
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)),
                        batch_size=16)
    result = analyze_sensitivity(model, loader, sparsities=[0.5, 0.9], log_dir=str(tmp_path))
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    events = acc.Scalars("compress/sensitivity/accuracy/2.weight")
    assert [e.step for e in events] == [0, 500, 900]  # sparsity in per mille; 0 is the unpruned model
    assert [e.value for e in events] == pytest.approx([result.baseline, *result.curves["2.weight"]])
    assert acc.Scalars("compress/sensitivity/baseline")[0].value == pytest.approx(result.baseline)
    assert result.baseline == pytest.approx(top1_accuracy(model, loader))


def test_command_line_from_a_checkpoint_and_from_a_compressed_file(tmp_path, capsys):
    from lightning_compress.export import save_compressed
    from lightning_compress.zoo import DigitsDataModule, LeNet300100

    torch.manual_seed(0)
    model = LeNet300100()
    with torch.no_grad():  # a model that is not the constructor's, so loading it is visible
        model.fc3.weight.mul_(3.0)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.ckpt")
    save_compressed(model, tmp_path / "model.lcz", compare_gzip=False)
    dm = DigitsDataModule(batch_size=128)
    dm.setup("fit")
    expected = top1_accuracy(model.eval(), dm.val_dataloader())

    for name in ("model.ckpt", "model.lcz"):
        out = tmp_path / f"{name}.json"
        main([
            "--model=LeNet300100", "--data=DigitsDataModule", "--data.batch_size=128",
            f"--ckpt_path={tmp_path / name}", "--sparsities=[0.5, 0.99]", "--tolerance=0.02",
            f"--log_dir={tmp_path / 'tb'}", f"--output={out}",
        ])
        data = json.loads(out.read_text())
        assert data["baseline"] == pytest.approx(expected)
        assert set(data["curves"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
        assert data["tolerance"] == 0.02
        assert set(data["suggested_final_sparsity"]) == set(data["curves"])
        assert "final_sparsity: {fc1.weight:" in capsys.readouterr().out


# ---- the command line: arguments checked first, files are data, progress and one TensorBoard run each -------


@pytest.fixture
def saved_lenet(tmp_path):
    from lightning_compress.zoo import LeNet300100

    torch.manual_seed(0)
    model = LeNet300100()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.ckpt")
    return tmp_path / "model.ckpt"


def _cli(*argv, ckpt=None):
    base = ["--model=LeNet300100", "--data=DigitsDataModule", "--data.batch_size=256"]
    return main([*base, *([f"--ckpt_path={ckpt}"] if ckpt else []), *argv])


@pytest.mark.parametrize("argv, named", [
    (["--tolerance=-1"], "tolerance"),
    (["--max_batches=0"], "max_batches"),
    (["--sparsities=[0.5, 1.5]"], "sparsities"),
    (["--sparsities=[0.9, 0.5]"], "sparsities"),
    (["--split=train"], "split"),
    (["--fit_epochs=-2"], "fit_epochs"),
    (["--include=[nope*]"], "nope"),
    (["--ckpt_path=missing.ckpt"], "ckpt_path"),
])
def test_every_argument_is_checked_before_any_work(argv, named, saved_lenet, tmp_path, monkeypatch, capsys):
    from lightning_compress import sensitivity

    def no_work(*_, **__):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(sensitivity, "_load_weights", no_work)
    monkeypatch.setattr(sensitivity, "analyze_sensitivity", no_work)
    monkeypatch.chdir(tmp_path)
    ckpt = None if any(a.startswith("--ckpt_path") for a in argv) else saved_lenet
    with pytest.raises(SystemExit) as exit_info:
        _cli(*argv, "--fit_epochs=0" if named != "fit_epochs" else "--log_dir=null", ckpt=ckpt)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert err.startswith("lightning-compress-sensitivity: error:")
    assert not (tmp_path / "runs").exists()


def test_output_under_a_regular_file_is_refused_first(saved_lenet, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit):
        _cli(f"--output={tmp_path / 'afile' / 'out.json'}", "--log_dir=null", ckpt=saved_lenet)
    assert "output" in capsys.readouterr().err


def test_an_unknown_model_name_is_one_line_naming_the_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model=LeNet3", "--data=DigitsDataModule"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--model" in err and "LeNet300100" in err and len(err.splitlines()) == 1


def test_a_malicious_checkpoint_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    torch.save({"state_dict": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        _cli("--log_dir=null", ckpt=tmp_path / "evil.ckpt")
    assert exit_info.value.code == 2
    assert not marker.exists()  # weights_only=True: the pickle's code never ran
    assert "ckpt_path" in capsys.readouterr().err


def test_upper_case_lcz_path_progress_lines_and_one_tensorboard_run_per_invocation(tmp_path, capsys, caplog):
    import logging

    from lightning_compress.export import save_compressed
    from lightning_compress.zoo import LeNet300100

    torch.manual_seed(0)
    save_compressed(LeNet300100(), tmp_path / "MODEL.LCZ", compare_gzip=False)
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            _cli("--sparsities=[0.5]", "--max_batches=1", f"--log_dir={tmp_path / 'tb'}", ckpt=tmp_path / "MODEL.LCZ")
    progress = [r.getMessage() for r in caplog.records if "sensitivity: [" in r.getMessage()]
    assert [p.split(" (")[0] for p in progress] == [f"sensitivity: [{i}/3] fc{i}.weight" for i in (1, 2, 3)] * 2
    runs = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert runs == ["version_0", "version_1"]
    for run in runs:
        assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "tb" / run).iterdir())
