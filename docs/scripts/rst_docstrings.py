"""A Griffe extension for the API reference: render the reST parts of torch-style docstrings.

The docstrings follow ``torch.optim``: Google-style sections, plus a ``.. math::`` block with the
update rule, ``.. _Title: url`` references and ``>>>`` examples. mkdocstrings reads them as
Markdown, where the first two would show as plain text and the examples as nested quotes; this
turns them into a ``$$ ... $$`` block (rendered by ``pymdownx.arithmatex``), a Markdown link and a
``pycon`` code block. The docstrings themselves are unchanged.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

# ".. math::" followed by an indented block (up to the first line indented less, or the end).
_MATH = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:(?P=indent)[ \t]+\S.*\n?|[ \t]*\n)+)", re.M
)
# ".. _Title: url", the url possibly on the next, indented line; "\:" escapes a colon in the title.
_TARGET = re.compile(
    r"^(?P<indent>[ \t]*)\.\. _(?P<title>(?:[^:\\\n]|\\.)+):\s*(?P<url>\S+)[ \t]*$", re.M
)

# A run of doctest lines (">>> " then any "... " continuations) at one indentation.
_DOCTEST = re.compile(r"^(?P<indent>[ \t]*)>>>.*\n?(?:(?P=indent)(?:>>>|\.\.\.).*\n?)*", re.M)


def _math_block(match: re.Match[str]) -> str:
    indent = match.group("indent")
    body = textwrap.dedent(match.group("body")).strip("\n")
    return f"{indent}$$\n{textwrap.indent(body, indent)}\n{indent}$$\n\n"


def _link(match: re.Match[str]) -> str:
    title = match.group("title").replace("\\:", ":")
    return f"{match.group('indent')}[{title}]({match.group('url')})"


def _doctest_block(match: re.Match[str]) -> str:
    indent = match.group("indent")
    return f"{indent}```pycon\n{match.group(0).rstrip()}\n{indent}```\n"


def rst_to_markdown(text: str) -> str:
    """Rewrite ``.. math::`` blocks, ``.. _Title: url`` targets and ``>>>`` examples as Markdown."""
    text = _MATH.sub(_math_block, text)
    text = _TARGET.sub(_link, text)
    return _DOCTEST.sub(_doctest_block, text)


class RstDocstrings(griffe.Extension):
    """Apply :func:`rst_to_markdown` to every docstring Griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
