"""The ntk notebook runs top to bottom in quick mode and shows what it claims."""

import re

import numpy as np

from tests._util import REPO, run_notebook
from tests.test_notebook_claims import check_quick_claims


def _numbers(text: str, label: str) -> np.ndarray:
    m = re.search(re.escape(label) + r"\s*\[([^\]]*)\]", text)
    assert m, f"notebook output lacks {label!r}"
    return np.array([float(v) for v in m.group(1).split()])


def test_notebook_quick():
    nb = run_notebook(REPO / "notebooks" / "ntk.ipynb", quick=True)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum(1 for o in outputs if "image/png" in o.get("data", {})) >= 5  # every figure rendered
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    # the empirical NTK approaches the analytic one with width (MLP, NTK parameterisation), and
    # training moves the kernel less at larger width (lazy regime)
    dist = _numbers(text, "ntk mean distance")
    assert len(dist) >= 2 and np.all(np.diff(dist) < 0)
    drift = _numbers(text, "final drift")
    assert len(drift) >= 2 and np.all(np.diff(drift) < 0)
    check_quick_claims(nb)  # the text's claims that hold at quick sizes (tests/test_notebook_claims.py)
