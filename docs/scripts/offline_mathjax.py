"""MkDocs hook: serve MathJax from the ``docs`` extra instead of a CDN, so the site renders math
offline.

The ``docs`` extra installs MathJax 3 as the files of the ``django-static-mathjax`` package (a
plain copy of MathJax's ``es5`` build; Django is not needed). This hook adds the parts the site
loads to the build, under ``javascripts/mathjax/``: the TeX-to-HTML component that
``mkdocs.yml`` lists in ``extra_javascript``, the TeX extensions it loads on demand, its fonts and
its menu, and MathJax's licence.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

TARGET = "javascripts/mathjax"
PARTS = ("tex-mml-chtml.js", "input/tex/extensions", "output/chtml", "ui", "a11y")


def mathjax_build() -> Path:
    """The installed MathJax ``es5`` folder."""
    spec = importlib.util.find_spec("mathjax")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        build = Path(location) / "static" / "mathjax" / "es5"
        if (build / PARTS[0]).is_file():
            return build
    raise PluginError(
        "MathJax is not installed: install the docs extra (pip install -e '.[docs]'), which "
        "brings it as the django-static-mathjax package"
    )


def on_files(files: Files, config: Any) -> Files:
    build = mathjax_build()
    sources: list[tuple[str, Path]] = [("LICENSE", build.parent / "LICENSE")]
    for part in PARTS:
        path = build / part
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        sources += [(p.relative_to(build).as_posix(), p) for p in found]
    for name, path in sources:
        files.append(File.generated(config, f"{TARGET}/{name}", abs_src_path=str(path)))
    return files
