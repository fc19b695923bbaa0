"""The notebook runs end to end in quick mode."""

from __future__ import annotations

from tests._util import REPO, run_notebook
from tests.test_notebook_claims import check_quick_claims


def test_notebook_quick():
    nb = run_notebook(REPO / "notebooks" / "hessian_spectrum.ipynb", quick=True)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) >= 8  # every figure rendered
    check_quick_claims(nb)  # the text's claims that hold at quick sizes (tests/test_notebook_claims.py)
