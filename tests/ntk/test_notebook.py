"""The ntk notebook runs top to bottom in quick mode."""

from tests._util import REPO, run_notebook


def test_notebook_quick():
    run_notebook(REPO / "notebooks" / "ntk.ipynb", quick=True)
