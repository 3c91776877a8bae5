"""The Lookahead sync against the memory floor: ``torch-lookahead bench --sections sync``.

    python benchmarks/bench_sync.py [--quick] [--shapes 0,1,2] [--rounds N] [--no-compiled]

Every option of ``torch-lookahead bench`` is accepted; see ``torch_lookahead/bench.py``.
"""

from __future__ import annotations

import sys

from torch_lookahead import bench


def main() -> int:
    return bench.main(["--sections", "sync", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
