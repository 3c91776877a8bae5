"""The built documentation site: no page shows a raw reST role or raw LaTeX, and every page reads
offline (MathJax and everything else from the site itself, nothing from the network).

Building the site takes seconds; these tests need the ``docs`` extra (in the dev environment).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A reST role (:class:`X`, :math:`\alpha`, ...) left in a page: Markdown turns its backticks into
# <code>, or leaves them.
RAW_ROLE = re.compile(r":(class|meth|func|mod|math|attr|data|obj|exc|ref|py:\w+):(?:<code>|`)")
# Where TeX may stand as written: math that arithmatex marked for MathJax, code, scripts.
NOT_PROSE = re.compile(
    r"<(code|pre|script|style|textarea)\b.*?</\1>"
    r"|<(span|div)\b[^>]*\bclass=\"[^\"]*\barithmatex\b[^\"]*\"[^>]*>.*?</\2>",
    flags=re.S,
)
TAG = re.compile(r"<[^>]*>")
# TeX in prose: a control word (\frac, \alpha), a math delimiter \( \) \[ \] or $$.
RAW_TEX = re.compile(r"\\(?:[A-Za-z]{2,}|[\[\]()])|\$\$")
# A script, stylesheet, font or preconnect loaded from another host.
REMOTE_RESOURCE = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mathjax"):
        pytest.importorskip(module)
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def _pages(site: Path) -> dict[str, str]:
    return {
        str(path.relative_to(site)): path.read_text(encoding="utf-8")
        for path in sorted(site.rglob("*.html"))
    }


def test_no_page_shows_a_raw_rest_role(site: Path) -> None:
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "torch_lookahead.Lookahead" in api  # the reference was rendered
    raw = {
        page: sorted(set(RAW_ROLE.findall(html)))
        for page, html in _pages(site).items()
        if RAW_ROLE.search(html)
    }
    assert raw == {}


def test_the_role_pattern_finds_roles_as_pages_show_them() -> None:
    html = "<p>moment :math:<code>v</code>, :class:`~x.Y`, not <code>a:b</code> or :class:</p>"
    assert RAW_ROLE.findall(html) == ["math", "class"]


def raw_tex(page_html: str) -> list[str]:
    """The TeX a reader sees as typed: outside the math MathJax typesets and outside code."""
    prose = unescape(TAG.sub(" ", NOT_PROSE.sub(" ", page_html)))
    return RAW_TEX.findall(prose)


def test_no_page_shows_raw_latex(site: Path) -> None:
    raw = {page: sorted(set(raw_tex(text))) for page, text in _pages(site).items()}
    assert {page: found for page, found in raw.items() if found} == {}


def test_the_latex_pattern_finds_math_that_markdown_did_not_hand_to_mathjax() -> None:
    # A display equation inside a list item, indented too little: Markdown ate the \[ and \].
    broken = "<li>is\n  [\n  \\frac{V^<em>_{\\text{L}}}{V^</em>}\n  ]\n  below</li>"
    assert raw_tex(broken) == ["\\frac", "\\text"]
    typeset = (
        '<p><span class="arithmatex">\\(\\alpha\\)</span></p>'
        '<div class="arithmatex">\\[\n\\frac{a}{b}\n\\]</div>'
        "<pre><code>x = r'\\alpha'</code></pre><p>a $5 fee, C:\\ drive</p>"
    )
    assert raw_tex(typeset) == []
    assert raw_tex("<p>\\(x\\) and $$y$$</p>") == ["\\(", "\\)", "$$", "$$"]


def test_code_blocks_wrap_inside_the_content_column(site: Path) -> None:
    """Long code lines wrap (docs/stylesheets/extra.css) instead of running past the column."""
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert re.search(r"\.md-typeset pre > code \{[^}]*white-space: pre-wrap;", css)
    for page, text in _pages(site).items():
        if "<pre" not in text:
            continue
        assert re.search(r'<link rel="stylesheet" href="(\.\./)*stylesheets/extra\.css"', text), (
            page
        )
        # one element per line, which the stylesheet indents when it wraps
        assert '<code><span id="__span-' in text, page


def test_every_page_reads_offline(site: Path) -> None:
    pages = _pages(site)
    assert {"index.html", "api/index.html", "algorithm/index.html"} <= set(pages)
    remote = {page: REMOTE_RESOURCE.findall(html) for page, html in pages.items()}
    assert {page: found for page, found in remote.items() if found} == {}


def test_math_is_typeset_by_the_mathjax_the_site_ships(site: Path) -> None:
    mathjax = site / "javascripts" / "mathjax"
    assert (mathjax / "tex-mml-chtml.js").stat().st_size > 100_000
    assert list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert (mathjax / "LICENSE").is_file()
    for page in ("algorithm/index.html", "api/index.html"):
        html = (site / page).read_text(encoding="utf-8")
        assert 'class="arithmatex"' in html  # math for MathJax to typeset
        assert re.search(r'<script src="(\.\./)*javascripts/mathjax/tex-mml-chtml\.js"', html)
