"""Everything a reader is shown runs: every ```python and ```yaml block of README.md and docs/**.md.

The convention, stated on ``docs/index.md`` ("Code on these pages"):

* **Python** blocks of one page run in order in one namespace, in a scratch folder that holds what the
  documented steps leave behind (the quickstart's ``runs/quickstart/...`` from a tiny run of its config), with
  ``model`` and ``datamodule`` predefined as "your" LightningModule and data (LeNet-300-100 on scikit-learn's
  digits) for the snippets that say so. Every ``Trainer(...)`` must set ``max_epochs`` or ``max_steps`` (Lightning
  would train 1000 epochs otherwise); the harness keeps the epochs and cuts each to two batches.
* **YAML** blocks are parsed by ``lightning-compress fit --print_config``. A *fragment* (no ``model:`` or no
  ``data:``) gets LeNet-300-100 / digits (LeNet-5 / Fashion-MNIST for ``class_path: LeNet5``), and its page must
  say what to add (a link to ``cli.md#config-fragments``); its callbacks are built and set up on the model, which
  checks every glob and per-layer key against real layer names. A *full* config (``model:`` and ``data:``) is fit
  for two batches per epoch.
* A block that cannot run offline is marked by an HTML comment on the line before it,
  ``<!-- not-run: why -->``; the marks are counted, so they cannot hide more than a few blocks.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*not-run:(?P<reason>[^>]*?)-->\s*\n(?:[ \t]*\n)*)?^```(?P<lang>python|yaml)[^\n]*\n"
                   r"(?P<body>.*?)^```", re.S | re.M)
INCLUDE = re.compile(r'^--8<--\s+"([^"]+)"\s*$', re.M)
MAX_NOT_RUN = 3  # blocks that may be marked not-run, over all pages
FRAGMENT_HELP = "cli.md#config-fragments"
TINY = dict(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2, limit_predict_batches=2,
            num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False)


def _expand(body: str) -> str:
    """pymdownx.snippets: ``--8<-- "path"`` is the file's text (paths relative to the repository)."""
    return INCLUDE.sub(lambda m: (REPO / m.group(1)).read_text(), body)


def blocks() -> list[tuple[str, int, str, str, str | None]]:
    """``(page, index, lang, text, not_run_reason)`` of every python/yaml block, in page order."""
    out = []
    for page in PAGES:
        rel = str(page.relative_to(REPO))
        for i, m in enumerate(BLOCK.finditer(page.read_text())):
            reason = m.group("reason")
            out.append((rel, i, m.group("lang"), _expand(m.group("body")), reason.strip() if reason is not None else None))
    return out


BLOCKS = blocks()
PY_PAGES = sorted({page for page, _, lang, _, _ in BLOCKS if lang == "python"})
YAML_BLOCKS = [(page, i, text, reason) for page, i, lang, text, reason in BLOCKS if lang == "yaml"]


def test_the_not_run_marks_are_few_and_say_why():
    marked = [(page, i, reason) for page, i, _, _, reason in BLOCKS if reason is not None]
    assert all(reason for _, _, reason in marked), f"a not-run mark without a reason: {marked}"
    assert len(marked) <= MAX_NOT_RUN, f"{len(marked)} blocks marked not-run (at most {MAX_NOT_RUN}): {marked}"
    assert len(BLOCKS) >= 20 and PY_PAGES, "the block extractor found too little: is the fence syntax changed?"


# ---- the scratch folder: what the documented steps leave behind ------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with ``examples/`` and the quickstart's artifacts, as after ``lightning-compress fit --config
    examples/configs/quickstart_digits.yaml`` (two batches per epoch)."""
    from lightning_compress.cli import main

    root = tmp_path_factory.mktemp("docs_workdir")
    (root / "examples").symlink_to(REPO / "examples")
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(root)
    sys.argv = ["lightning-compress"]
    try:
        main(["fit", "--config", "examples/configs/quickstart_digits.yaml",
              *(f"--trainer.{k}={v}" for k, v in TINY.items())])
    finally:
        os.chdir(cwd)
        sys.argv = argv
    assert (root / "runs" / "quickstart" / "lenet300100.lcz").is_file()
    return root


@pytest.fixture
def tiny_trainers(monkeypatch):
    """Every ``Trainer(...)`` keeps its epochs but runs two batches each; one without an end is an error."""
    from lightning.pytorch import Trainer

    original = Trainer.__init__

    def init(self, *args, **kwargs):
        if kwargs.get("max_epochs") is None and kwargs.get("max_steps", -1) == -1 and not kwargs.get("fast_dev_run"):
            raise AssertionError("a documented Trainer(...) sets neither max_epochs nor max_steps: "
                                 "Lightning would train 1000 epochs")
        original(self, *args, **{**kwargs, **TINY})

    monkeypatch.setattr(Trainer, "__init__", init)


@pytest.mark.slow
@pytest.mark.parametrize("page", PY_PAGES)
def test_python_blocks_run(page, workdir, tiny_trainers, monkeypatch, tmp_path):
    from lightning_compress.zoo import DigitsDataModule, LeNet300100

    folder = tmp_path / "run"
    folder.mkdir()
    for entry in workdir.iterdir():  # a private copy of the artifacts' links: snippets may write next to them
        (folder / entry.name).symlink_to(entry)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["snippet"])
    namespace: dict = {"__name__": "__docs__", "model": LeNet300100(), "datamodule": DigitsDataModule()}
    ran = 0
    for p, i, lang, text, reason in BLOCKS:
        if p != page or lang != "python" or reason is not None:
            continue
        try:
            exec(compile(text, f"{page} python block {i}", "exec"), namespace)  # noqa: S102 - the page's own code
        except Exception as err:
            raise AssertionError(f"{page}, python block {i} failed: {type(err).__name__}: {err}\n{text}") from err
        ran += 1
    assert ran or page in {p for p, _, _, _, r in BLOCKS if r is not None}


# ---- YAML --------------------------------------------------------------------------------------------------------


def _is_cli_config(text: str) -> bool:
    config = yaml.safe_load(text)
    return isinstance(config, dict) and "trainer" in config


def _complete(config: dict) -> dict:
    """A fragment made a config: the page's model (or LeNet-300-100) and matching offline data."""
    config = dict(config)
    model = config.setdefault("model", {"class_path": "LeNet300100"})
    five = isinstance(model, dict) and str(model.get("class_path", "")).endswith("LeNet5")
    config.setdefault("data", {"class_path": "FashionMNISTDataModule" if five else "DigitsDataModule"})
    return config


@pytest.mark.parametrize("page,index,text,reason", YAML_BLOCKS, ids=[f"{p}#{i}" for p, i, _, _ in YAML_BLOCKS])
def test_yaml_block_is_a_config_the_cli_reads(page, index, text, reason, tmp_path, monkeypatch, capsys):
    from lightning.pytorch.callbacks import Callback

    from lightning_compress.cli import CompressCLI, main

    if reason is not None:
        pytest.skip(f"not-run: {reason}")
    config = yaml.safe_load(text)
    assert isinstance(config, dict) and "trainer" in config, f"{page} block {index}: not a lightning-compress config"
    assert {"max_epochs", "max_steps"} & set(config["trainer"] or {}), \
        f"{page} block {index}: trainer sets neither max_epochs nor max_steps (Lightning would train 1000 epochs)"
    if not ("model" in config and "data" in config) and not page.endswith("cli.md"):
        assert FRAGMENT_HELP in (REPO / page).read_text(), \
            f"{page} shows a config without model/data but does not link to {FRAGMENT_HELP} (what to add)"
    monkeypatch.chdir(tmp_path)  # loggers and checkpoint folders of the snippet land here
    monkeypatch.setattr(sys, "argv", ["lightning-compress"])
    path = tmp_path / "snippet.yaml"
    path.write_text(yaml.safe_dump(_complete(config)))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err[-2000:]
    capsys.readouterr()

    cli = CompressCLI(args=["--config", str(path)], run=False)
    ours = [cb for cb in cli.trainer.callbacks if type(cb).__module__.startswith("lightning_compress")]
    for cb in ours:  # setup resolves globs, type aliases and per-layer keys against the model's real layer names
        assert isinstance(cb, Callback)
        cb.setup(cli.trainer, cli.model, "fit")
        if hasattr(cb, "make_plan"):
            cb.make_plan(cli.model)
        cb.teardown(cli.trainer, cli.model, "fit")


FULL = [(p, i, t) for p, i, t, r in YAML_BLOCKS if r is None and {"model", "data"} <= set(yaml.safe_load(t))]


@pytest.mark.slow
@pytest.mark.parametrize("page,index,text", FULL, ids=[f"{p}#{i}" for p, i, _ in FULL])
def test_full_yaml_configs_fit(page, index, text, tmp_path, monkeypatch):
    from lightning_compress.cli import main

    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lightning-compress"])
    path = tmp_path / "config.yaml"
    path.write_text(text)
    main(["fit", "--config", str(path), *(f"--trainer.{k}={v}" for k, v in TINY.items())])
    assert any(tmp_path.rglob("events.out.tfevents*")) or any(tmp_path.rglob("*.lcz"))


def test_there_are_full_configs_to_fit():
    assert FULL, "no full YAML config (model: and data:) on any page"


@pytest.mark.slow
def test_documented_export_command_reads_the_quickstart_checkpoint(workdir, tmp_path, monkeypatch, capsys):
    """docs/cli.md's ``lightning-compress-export ... runs/quickstart/checkpoints/last.ckpt`` after the quickstart."""
    import shlex

    from lightning_compress.export_cli import main

    text = (DOCS / "cli.md").read_text()
    line = next(ln for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                for ln in block.splitlines() if ln.startswith("lightning-compress-export "))
    argv = shlex.split(line)[1:]
    for entry in workdir.iterdir():
        (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0, capsys.readouterr().err
    assert "verified" in capsys.readouterr().out
