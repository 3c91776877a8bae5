"""Lookahead(inner) / inner step time and memory against every installed peer:
``torch-lookahead bench --sections step,memory``.

    python benchmarks/bench_step.py [--quick] [--shapes 0,1,2] [--inner 0,1,2] [--rounds N]

Every option of ``torch-lookahead bench`` is accepted; see ``torch_lookahead/bench.py``.
"""

from __future__ import annotations

import sys

from torch_lookahead import bench


def main() -> int:
    return bench.main(["--sections", "step,memory", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
