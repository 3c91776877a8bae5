"""The distributed pages (docs/distributed.md, docs/distributed-workers.md): each page's Python
examples run as written, in order, as one script on two gloo ranks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests._torch_versions import needs_fsdp2_on_cpu
from tests.distributed._cluster import Cluster

pytestmark = [pytest.mark.distributed, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DOCS = Path(__file__).resolve().parents[2] / "docs"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
# Each page and the number of examples it has at least (a page that lost them fails).
PAGES = {"distributed.md": 5, "distributed-workers.md": 7}


def run_page_blocks(
    rank: int, world_size: int, page: str, blocks: list[str], directory: str
) -> None:
    previous = os.getcwd()
    os.chdir(directory)  # the examples write their checkpoints under the working directory
    try:
        namespace: dict[str, object] = {"__name__": f"docs.{Path(page).stem}"}
        for index, body in enumerate(blocks):
            exec(compile(body, f"{DOCS / page}[python block {index}]", "exec"), namespace)
    finally:
        os.chdir(previous)


@pytest.mark.parametrize(
    ("page", "examples"),
    [
        # the FSDP2 example of distributed.md needs FSDP2 on CPU
        pytest.param("distributed.md", PAGES["distributed.md"], marks=needs_fsdp2_on_cpu),
        ("distributed-workers.md", PAGES["distributed-workers.md"]),
    ],
)
def test_page_examples_run_on_two_ranks(
    cluster: Cluster, tmp_path: Path, page: str, examples: int
) -> None:
    blocks = PYTHON_BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))
    assert len(blocks) >= examples
    cluster.run(run_page_blocks, page, blocks, str(tmp_path))
