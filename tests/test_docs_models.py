"""docs/models.md keeps up with the registry: every registered ``model_type`` has its row in the
summary table (family, HF class, backbone, token layout, verifying tests, measured differences,
TransformerLens backends),
and every test file a row names exists."""

from __future__ import annotations

import re
from pathlib import Path

import mapflow_tl as mf

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
HEADING = "## Every supported `model_type`"


def summary_rows() -> dict[str, list[str]]:
    """``model_type`` → the cells of its row in the summary table of docs/models.md."""
    text = DOC.read_text(encoding="utf-8")
    assert HEADING in text, f"docs/models.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| `") or line.startswith("| `model_type` |"):
            continue  # not a row, or the header
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        for model_type in re.findall(r"`([a-z0-9_]+)`", cells[0]):
            rows[model_type] = cells
    return rows


def test_every_registered_model_type_has_a_row():
    rows = summary_rows()
    registered = set(mf.supported_architectures())
    missing = sorted(registered - set(rows))
    assert not missing, (f"docs/models.md: add a row for {missing} to the table under "
                         f"{HEADING!r}")
    stale = sorted(set(rows) - registered)
    assert not stale, f"docs/models.md lists {stale}, which load_videollm does not register"
    for model_type, cells in rows.items():
        assert len(cells) == 8 and all(cells), f"{model_type}: a cell of its row is empty"


def test_every_verifying_test_file_exists():
    root = DOC.parents[1]
    for model_type, cells in summary_rows().items():
        files = re.findall(r"tests/[\w/]+\.py", cells[5])
        assert files, f"{model_type}: its row names no verifying test file"
        for name in files:
            assert (root / name).is_file(), f"{model_type}: {name} does not exist"
