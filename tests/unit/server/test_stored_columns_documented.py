"""docs/protocol.md §22 lists every column the server stores, why and for how long:
a column added without a line there fails here."""

from __future__ import annotations

import re
from pathlib import Path

from bisik.server.stores.schema import metadata

PROTOCOL = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def documented() -> set[tuple[str, str]]:
    text = PROTOCOL.read_text(encoding="utf-8")
    section = text.split("## 22. What the server stores", 1)[1].split("\n## ", 1)[0]
    columns: set[tuple[str, str]] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        table = None
        for name in re.findall(r"`([^`]+)`", first_cell):
            if "." in name:
                table, name = name.split(".", 1)
            if table is not None:
                columns.add((table, name))
    return columns


def test_every_stored_column_is_documented() -> None:
    stored = {(t.name, c.name) for t in metadata.tables.values() for c in t.columns}
    listed = documented()
    missing = sorted(f"{t}.{c}" for t, c in stored - listed if (t, "*") not in listed)
    assert missing == [], f"add these to docs/protocol.md §22: {missing}"
    gone = sorted(f"{t}.{c}" for t, c in listed - stored if c != "*")
    assert gone == [], f"no longer stored, remove from docs/protocol.md §22: {gone}"
