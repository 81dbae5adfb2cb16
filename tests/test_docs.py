"""The docs site: it builds with ``mkdocs build --strict``, each callback page documents every ``__init__``
argument, the tags and bytes it shows are what the code writes. (Every code block runs: ``test_docs_snippets.py``.)
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"
YAML_BLOCK = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.S | re.M)


def yaml_snippets() -> list[tuple[str, int, str]]:
    """``(page, index, text)`` of every ```yaml block of docs/**.md that holds a ``class_path``."""
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, match in enumerate(YAML_BLOCK.finditer(page.read_text())):
            if "class_path" in match.group(1):
                out.append((str(page.relative_to(DOCS)), i, match.group(1)))
    return out


SNIPPETS = yaml_snippets()


def _class_paths(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["class_path"]] if "class_path" in node else []
        for value in node.values():
            found += _class_paths(value)
        return found
    if isinstance(node, list):
        return [p for item in node for p in _class_paths(item)]
    return []


def test_docs_have_callback_snippets():
    pages = {page for page, _, _ in SNIPPETS}
    for name in ("pruning", "sharing", "factorization", "export", "monitor"):
        assert f"callbacks/{name}.md" in pages, f"docs/callbacks/{name}.md has no YAML example"


CALLBACK_PAGES = {
    "callbacks/pruning.md": "lightning_compress.callbacks.pruning:GradualMagnitudePruning",
    "callbacks/sharing.md": "lightning_compress.callbacks.sharing:WeightSharing",
    "callbacks/factorization.md": "lightning_compress.callbacks.factorization:LowRankFactorization",
    "callbacks/export.md": "lightning_compress.callbacks.export:ExportCompressed",
    "callbacks/monitor.md": "lightning_compress.callbacks.monitor:CompressionMonitor",
}


@pytest.mark.parametrize("page,target", sorted(CALLBACK_PAGES.items()))
def test_callback_page_documents_every_option(page, target):
    module, _, name = target.partition(":")
    cls = getattr(import_module(module), name)
    signature = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    params = [p.name for p in signature]
    text = (DOCS / page).read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, re.M))
    missing = [p for p in params if p not in rows]
    assert not missing, f"{page}: options table lacks {missing}"
    unknown = sorted(set(rows) - set(params))
    assert not unknown, f"{page}: options table documents arguments {name} does not have: {unknown}"
    for p in signature:  # the default column says what the code says
        want = "(required)" if p.default is inspect.Parameter.empty else f"`{p.default!r}`".replace("'", '"')
        assert rows[p.name].strip() == want, f"{page}: default of {p.name} is {want} in the code"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=180, env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert not warnings, "\n".join(warnings)
    site = tmp_path / "site"
    for page in ("index.html", "quickstart/index.html", "schedules/index.html", "cli/index.html",
                 "format/index.html", "results/index.html", "api/index.html",
                 *(f"callbacks/{name}/index.html" for name in ("pruning", "sharing", "factorization", "export", "monitor"))):
        assert (site / page).is_file(), page
    api = (site / "api" / "index.html").read_text()
    for documented in ("GradualMagnitudePruning", "WeightSharing", "LowRankFactorization", "ExportCompressed",
                       "CompressionMonitor", "save_compressed", "load_compressed", "CubicSchedule"):
        assert documented in api, f"API reference lacks {documented}"
    for page in ("schedules", "results"):
        html = (site / page / "index.html").read_text()
        images = re.findall(r'<img[^>]+src="([^"]+)"', html)
        if page == "schedules" or any(RESULTS.glob("deep_compression*.png")):
            assert images, f"{page} page shows no plot"
        for src in images:
            assert (site / page / src).resolve().is_file(), f"{page}: {src}"
    results = (site / "results" / "index.html").read_text()
    assert "<!-- results:" not in results and "Could not render" not in results
    for prefix in ("deep_compression", "lenet_tuning", "export", "pruning", "global_pruning_memory", "sharing_bits", "sharing_kmeans",
                   "factorization"):
        for path in sorted(RESULTS.glob(f"{prefix}*.json")):  # a quick run is replaced by its full run
            if "_quick" in path.stem and (RESULTS / path.name.replace("_quick", "")).exists():
                continue
            assert f"benchmarks/results/{path.name}" in results, f"results page does not show {path.name}"


def test_index_shows_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    commands = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()[:2]
    index = (DOCS / "index.md").read_text()
    for command in commands:
        assert command in index, f"docs/index.md lacks the README command: {command}"


def test_format_page_example_bytes_are_what_the_encoder_writes():
    text = (DOCS / "format.md").read_text()
    example = text[text.index("## A complete file"):]
    code = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    dump = re.search(r"```text\n(.*?)```", example, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the page's own example
    data = namespace["data"]
    assert bytes.fromhex(dump.replace("\n", " ")) == data
    assert f"gives these {len(data)} bytes" in example
    from lightning_compress.export import decode_file

    decoded = decode_file(data)
    for name, tensor in namespace["state_dict"].items():
        assert decoded[name].equal(tensor), name


def test_schedules_page_covers_every_schedule_and_name():
    import lightning_compress.schedules as schedules

    text = (DOCS / "schedules.md").read_text()
    classes = [n for n in dir(schedules) if n.endswith("Schedule") and n != "SparsitySchedule"]
    assert classes
    for name in classes:
        assert name in text, f"docs/schedules.md does not describe {name}"
    for name in schedules.SCHEDULE_NAMES:  # every short name the callback accepts
        assert f"`{name}`" in text or f"schedule: {name}" in text, f"docs/schedules.md lacks the name {name!r}"
    plotted = set(re.findall(r"\(img/(schedule_\w+\.png)\)", text))
    assert plotted == {p.name for p in (DOCS / "img").glob("schedule_*.png")}


def _tag_pattern(documented: str) -> re.Pattern:
    """``compress/sparsity/<layer>`` -> a regex; ``<layer>``/``<tensor>`` stand for one layer name."""
    parts = re.split(r"<(?:layer|tensor)>", documented)
    return re.compile("^" + r"[\w.]+".join(re.escape(p) for p in parts) + "$")


def test_tensorboard_tags_on_the_pages_are_the_ones_a_fit_writes(tmp_path):
    """One small fit with every callback: each ``compress/...`` tag it writes is documented, and vice versa."""
    from helpers import TinyNet, image_data, tiny_trainer
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_compress import (CompressionMonitor, ExportCompressed, GradualMagnitudePruning,
                                    LowRankFactorization, WeightSharing)

    loader = image_data(64, batch_size=32)
    logger = TensorBoardLogger(tmp_path, name="tags")
    trainer = tiny_trainer([LowRankFactorization(rank=2, epoch=1, include=["conv", "fc2"]),  # mid-fit: Tucker-2 + SVD
                            GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1, include=["fc1"]),
                            WeightSharing("auto", target_bits=3, start_epoch=2, include=["fc1"]),  # + chosen_bits
                            ExportCompressed(tmp_path / "m.lcz", compare_gzip=True),  # gzip is opt-in
                            CompressionMonitor()], max_epochs=3, logger=logger)
    trainer.fit(TinyNet(), loader, loader)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    written = {t.removesuffix("/text_summary") for kind in ("scalars", "histograms", "tensors") for t in tags[kind]}
    written = {t for t in written if t.startswith("compress/")}
    written |= {f"compress/final/{m}" for m in ("estimated_ratio", "sparsity", "accuracy")}  # hparams, checked below
    assert events.PluginTagToContent("hparams")
    # a language model adds perplexity (monitor); a tiny TinyGPT fit writes those tags
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_compress.zoo import TinyGPT

    tokens = torch.randint(0, 256, (8, 9))
    lm_loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)
    lm_logger = TensorBoardLogger(tmp_path, name="lm")
    tiny_trainer([CompressionMonitor(print_summary=False)], max_epochs=1, logger=lm_logger
                 ).fit(TinyGPT(context=8, d_model=16, n_heads=2, n_layers=1), lm_loader, lm_loader)
    lm_events = EventAccumulator(lm_logger.log_dir, size_guidance={"scalars": 0})
    lm_events.Reload()
    written |= {t for t in lm_events.Tags()["scalars"] if t.startswith("compress/")}
    written |= {"compress/final/perplexity"}
    written |= {"compress/sharing/chosen_bits"}  # WeightSharing(bits="auto") only: test_sharing_callback checks it

    pages = "\n".join(p.read_text() for p in (DOCS / "callbacks").glob("*.md"))
    documented = {t for t in re.findall(r"`(compress/[\w./<>]+)`", pages) if not t.endswith(".py")}
    patterns = {d: _tag_pattern(d) for d in documented}
    undocumented = sorted(t for t in written if not any(p.match(t) for p in patterns.values()))
    assert not undocumented, f"tags written but on no callback page: {undocumented}"
    never = sorted(d for d, p in patterns.items() if not any(p.match(t) for t in written))
    assert not never, f"tags documented but not written by a fit with every callback: {never}"


def cli_commands() -> list[tuple[str, list[str]]]:
    """``(program, argv)`` of every ``lightning-compress[-sensitivity] ...`` line in the docs' bash blocks."""
    import shlex

    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"\s+#\s", line)[0]
                match = re.search(r"(?:^|&& |/)(lightning-compress(?:-sensitivity)?) (.*)$", line.strip())
                if match and (match.group(1), shlex.split(match.group(2))) not in found:
                    found.append((match.group(1), shlex.split(match.group(2))))
    return found


def test_cli_commands_in_the_docs_parse(monkeypatch, capsys):
    """Each documented command line parses (``--print_config``): flags, short names and config paths exist."""
    from lightning_compress import sensitivity
    from lightning_compress.cli import CompressCLI

    commands = cli_commands()
    assert any(prog == "lightning-compress-sensitivity" for prog, _ in commands)
    monkeypatch.chdir(REPO)
    for prog, argv in commands:
        monkeypatch.setattr(sys, "argv", [prog])
        extra = [] if "--print_config" in argv or any(a.endswith(".help") for a in argv) else ["--print_config"]
        with pytest.raises(SystemExit) as exit_info:
            if prog == "lightning-compress":
                CompressCLI(args=argv + extra)
            else:
                sensitivity.main(argv + extra)
        out = capsys.readouterr()
        assert exit_info.value.code in (0, None), f"{prog} {' '.join(argv)}:\n{out.err[-2000:]}"


def test_nothing_cites_a_design_file_outside_the_repository():
    """The docs, code, examples and benchmarks stand alone: they cite papers and the project's own files."""
    roots = [REPO / "README.md", DOCS, REPO / "lightning_compress", REPO / "examples", REPO / "benchmarks"]
    files = [r for r in roots if r.is_file()] + [p for r in roots if r.is_dir() for p in r.rglob("*")
                                                 if p.suffix in (".md", ".py", ".yaml", ".yml")]
    citing = [str(p.relative_to(REPO)) for p in files if "DESIGN.md" in p.read_text(errors="replace")]
    assert not citing, f"these files cite DESIGN.md, which is not in the repository: {citing}"


def test_api_page_names_every_public_name():
    import lightning_compress

    text = (DOCS / "api.md").read_text()
    missing = [name for name in lightning_compress.__all__ if name != "__version__" and f"`{name}`" not in text]
    assert not missing, f"docs/api.md does not name: {missing}"
    from lightning_compress.zoo import __all__ as zoo

    missing = [name for name in zoo if name.endswith(("DataModule", "GPT", "ResNet")) and f"`{name}`" not in text]
    assert not missing, f"docs/api.md does not name the zoo's: {missing}"
