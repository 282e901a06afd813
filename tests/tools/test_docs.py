"""Documents generated from the code are current."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))


def test_the_ops_doc_is_generated_from_the_op_tables():
    import write_ops_doc

    assert (ROOT / "docs" / "ops.md").read_text() == write_ops_doc.render(), \
        "docs/ops.md is stale: run python tools/write_ops_doc.py"
