"""Every row of the export-path table in docs/saving-and-export.md names a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "saving-and-export.md"


def _table_rows() -> list[list[str]]:
    section = PAGE.read_text(encoding="utf-8").split("## Every export path", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_every_export_path_row_names_an_existing_test() -> None:
    rows = _table_rows()
    assert len(rows) >= 10
    current: Path | None = None
    for row in rows:
        names = re.findall(r"`([\w/.]*?)::(\w+)`", row[-1])
        assert names, f"no test named in the row {row}"
        for file, test in names:
            if file:
                found = [
                    p for p in (ROOT / "tests" / "integrations" / file, ROOT / file) if p.exists()
                ]
                assert found, f"{file} does not exist"
                current = found[0]
            assert current is not None, f"{row}: `::{test}` follows no file"
            source = current.read_text(encoding="utf-8")
            assert re.search(rf"^def {test}\(", source, flags=re.M), f"{current} has no {test}"
