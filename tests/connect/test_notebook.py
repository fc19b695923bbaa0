"""The mode-connectivity notebook runs top to bottom in quick mode."""

from __future__ import annotations

from tests._util import REPO, run_notebook
from tests.test_notebook_claims import check_quick_claims


def test_notebook_runs_in_quick_mode():
    nb = run_notebook(REPO / "notebooks" / "mode_connectivity.ipynb", timeout=300)
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "after weight matching" in text and "max train loss on the curve" in text
    images = sum(
        1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    )
    assert images >= 2
    check_quick_claims(nb)  # the text's claims that hold at quick sizes (tests/test_notebook_claims.py)
