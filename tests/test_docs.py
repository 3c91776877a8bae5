"""The documentation's promises: the site builds with warnings as errors, the Python examples of
its pages run as written, and the figure script draws its figures."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.integrations._accelerate_state import reset_accelerate_state

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
# Every fenced block at the start of a line: (language, body).
FENCED_BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)

# Pages whose ```python blocks run here, in order, in one namespace per page, and the modules
# they need beyond torch (pages of the integrations extra are also marked `integrations`).
EXECUTED_PAGES: dict[str, tuple[str, ...]] = {
    "index.md": (),
    "getting-started.md": (),
    "algorithm.md": (),
    "choosing-k-alpha.md": (),
    "evaluation.md": (),
    "checkpoints.md": (),
    "amp.md": (),
    "compile.md": (),
    "migration.md": ("pytorch_optimizer",),
    "integrations/lightning.md": ("lightning",),
    "integrations/transformers.md": ("transformers",),
    "integrations/accelerate.md": ("accelerate",),
}


def _page_params() -> list[object]:
    params = []
    for page, modules in EXECUTED_PAGES.items():
        marks = []
        if page.startswith("integrations/"):
            marks = [pytest.mark.integrations]
        params.append(pytest.param(page, modules, marks=marks, id=page))
    return params


@pytest.mark.parametrize(("page", "modules"), _page_params())
# Deprecated torch APIs used by Lightning (pytree LeafSpec) and by torch.compile's own imports.
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*")
# A resume example that leaves out a callback which wrote the checkpoint is wrong.
@pytest.mark.filterwarnings("error:.*callbacks used to create the checkpoint.*")
def test_page_python_blocks_run(
    page: str, modules: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in modules:
        pytest.importorskip(module)
    if page.startswith("integrations/"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    path = DOCS / page
    blocks = FENCED_BLOCK.findall(path.read_text(encoding="utf-8"))
    assert any(language == "python" for language, _ in blocks), f"{page} has no ```python block"
    monkeypatch.chdir(tmp_path)  # examples write their checkpoints here
    # The page's examples run in a module of their own, registered in sys.modules: torch.compile
    # imports the module a compiled function's globals belong to by name (torch 2.6 does).
    page_module = ModuleType(f"docs.{page}")
    monkeypatch.setitem(sys.modules, page_module.__name__, page_module)
    namespace = page_module.__dict__
    reset_accelerate_state()  # the examples make Accelerators (the HF Trainer too) of their own
    printed = ""
    try:
        for index, (language, body) in enumerate(blocks):
            if language == "python":
                output = io.StringIO()
                with contextlib.redirect_stdout(output):
                    exec(compile(body, f"{path}[block {index}]", "exec"), namespace)
                printed = output.getvalue()
            elif language == "text" and index and blocks[index - 1][0] == "python":
                # A text block right after a Python block shows what that block prints.
                assert printed.strip() == body.strip(), f"{page}[block {index}] is not the output"
    finally:
        reset_accelerate_state()


def test_every_page_with_python_examples_is_executed() -> None:
    """A new page with examples must join EXECUTED_PAGES (or be owned elsewhere and listed here)."""
    tested_elsewhere = {
        "optimizers.md",
        "distributed.md",
        "distributed-workers.md",
        "benchmarks.md",
        "lab.md",
    }
    with_examples = {
        str(path.relative_to(DOCS))
        for path in DOCS.rglob("*.md")
        if PYTHON_BLOCK.search(path.read_text(encoding="utf-8"))
    }
    assert with_examples - tested_elsewhere <= set(EXECUTED_PAGES)


# Words a page may have, counted as `wc -w` counts them (code included); the API reference,
# generated from the docstrings, is exempt.
PAGE_WORD_LIMIT = 1_500


@pytest.mark.parametrize(
    "page",
    sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md") if path.name != "api.md"),
)
def test_page_is_short_enough_to_read(page: str) -> None:
    words = len((DOCS / page).read_text(encoding="utf-8").split())
    assert words <= PAGE_WORD_LIMIT, f"{page}: {words} words, over {PAGE_WORD_LIMIT}"


def test_choosing_k_alpha_states_the_grid_of_the_committed_demo_report() -> None:
    page = (DOCS / "choosing-k-alpha.md").read_text(encoding="utf-8")
    stated = re.search(r"demo report sweeps `k` in \{([^}]*)\} and `alpha` in \{([^}]*)\}", page)
    assert stated, "choosing-k-alpha.md no longer states the demo's (k, alpha) grid"
    with (ROOT / "reports" / "demo" / "runs.csv").open(newline="") as runs:
        grid = [
            (row["k"], row["alpha"]) for row in csv.DictReader(runs) if row["part"] == "k_alpha"
        ]
    assert grid, "the demo report has no (k, alpha) runs"
    measured_k = {int(k) for k, _ in grid if k}
    measured_alpha = {float(alpha) for _, alpha in grid if alpha}
    assert {int(k) for k in stated.group(1).split(",")} == measured_k
    assert {float(alpha) for alpha in stated.group(2).split(",")} == measured_alpha


def test_docs_build_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mathjax"):
        pytest.importorskip(module)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def _docs_script(name: str) -> ModuleType:
    """Import ``docs/scripts/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, DOCS / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figure_script_draws_every_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location(
        "make_figures", DOCS / "scripts" / "make_figures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(["--out", str(tmp_path)])
    assert written
    for path in written:
        assert path.stat().st_size > 10_000
        # Every figure the script draws is committed, under the same name, for the pages.
        assert (DOCS / "img" / path.name).is_file()


def test_api_reference_renders_the_rest_parts_of_docstrings() -> None:
    pytest.importorskip("griffe")
    module = _docs_script("rst_docstrings")
    docstring = (
        "Summary.\n\n.. math::\n   a \\\\\n   b\n\nText.\n\n"
        "Example:\n    >>> x = 1\n    ... + 2\n\n"
        ".. _Paper title\\: subtitle:\n    https://arxiv.org/abs/1907.08610\n"
    )
    assert module.rst_to_markdown(docstring) == (
        "Summary.\n\n$$\na \\\\\nb\n$$\n\nText.\n\n"
        "Example:\n    ```pycon\n    >>> x = 1\n    ... + 2\n    ```\n\n"
        "[Paper title: subtitle](https://arxiv.org/abs/1907.08610)\n"
    )
