"""The README's promises: its code runs, and its behaviour notes hold; CITATION.cff cites the paper
and this version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from torch_lookahead import Lookahead

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        namespace: dict[str, object] = {}
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "opt.pt").exists()
    state = torch.load(tmp_path / "opt.pt", weights_only=True)
    assert "lookahead_slow" in state["state"][0]


def test_readme_opens_with_the_install_path() -> None:
    """A user reads how to install and use the library before the repository's own set-up."""
    text = README.read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[:3] == ["Install", "Usage", "Set-up for development and the lab"]
    setup = text.split("## Set-up for development and the lab", 1)[1]
    assert text.index("pip install .") < text.index("make demo")
    assert "make demo" in setup and "make test" in setup


def test_readme_links_work_as_the_package_description() -> None:
    """The README is the package's long description (pyproject.toml), shown away from the
    repository: a relative link there leads nowhere."""
    targets = re.findall(r"\]\(([^)]*)\)", README.read_text())
    assert [target for target in targets if not target.startswith("https://")] == []


def test_citation_names_the_paper_and_this_version() -> None:
    yaml = pytest.importorskip("yaml")
    import torch_lookahead

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == torch_lookahead.__version__
    paper = citation["preferred-citation"]
    assert paper["title"] == "Lookahead Optimizer: k steps forward, 1 step back"
    assert [a["family-names"] for a in paper["authors"]] == ["Zhang", "Lucas", "Ba", "Hinton"]
    assert paper["url"] == "https://arxiv.org/abs/1907.08610"


def test_buffers_are_not_slow_weights() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = Lookahead(torch.optim.SGD(model.parameters(), lr=0.1), k=3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).mean().backward()
        opt.step()
    running_mean = model[1].running_mean.clone()
    with opt.slow_weights():
        assert torch.equal(model[1].running_mean, running_mean)
    assert torch.equal(model[1].running_mean, running_mean)


def test_public_api_exports() -> None:
    import torch_lookahead

    assert torch_lookahead.RAdam is torch.optim.RAdam
    for name in torch_lookahead.__all__:
        value = getattr(torch_lookahead, name)
        assert callable(value), name
        assert value.__module__.startswith(("torch_lookahead", "torch.optim")), name
    assert {"novograd", "adabound", "radam", "ranger", "lookahead_adamw"} <= set(
        torch_lookahead.list_optimizers()
    )
