"""docs/distributed.md: its Python examples run as written, in order, on two gloo ranks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests._torch_versions import needs_fsdp2_on_cpu
from tests.distributed._cluster import Cluster

pytestmark = [pytest.mark.distributed, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def run_page_blocks(rank: int, world_size: int, blocks: list[str], directory: str) -> None:
    previous = os.getcwd()
    os.chdir(directory)  # the examples write their checkpoints under the working directory
    try:
        namespace: dict[str, object] = {"__name__": "docs.distributed"}
        for index, body in enumerate(blocks):
            exec(compile(body, f"{PAGE}[python block {index}]", "exec"), namespace)
    finally:
        os.chdir(previous)


@needs_fsdp2_on_cpu
def test_page_examples_run_on_two_ranks(cluster: Cluster, tmp_path: Path) -> None:
    blocks = PYTHON_BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 7
    cluster.run(run_page_blocks, blocks, str(tmp_path))
