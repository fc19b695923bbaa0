"""The loss-surfaces notebook runs top to bottom in quick mode."""

from __future__ import annotations

from tests._util import REPO, run_notebook
from tests.test_notebook_claims import check_quick_claims


def test_loss_surfaces_notebook_runs_quick():
    nb = run_notebook(REPO / "notebooks" / "loss_surfaces.ipynb", timeout=300)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # interpolation, 1-D, 2-D (3 panels), ResNets, PCA trajectory
    check_quick_claims(nb)  # the text's claims that hold at quick sizes (tests/test_notebook_claims.py)
