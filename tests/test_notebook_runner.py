"""The suite's in-process notebook runner (``tests._util.run_notebook``) gives what a new
Jupyter kernel gives: the outputs nbclient would record, the inline figures of this notebook
only, a clear failure for a raising or hanging cell, and nothing left behind in the process."""

from __future__ import annotations

import builtins
import sys

import matplotlib.pyplot as plt
import nbformat
import pytest

from tests._util import NotebookCellError, run_notebook


def _write(tmp_path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def _outputs(cell):
    return [
        (
            o.output_type,
            o.get("text", o.get("data", {}).get("text/plain")),
            "image/png" in o.get("data", {}),
        )
        for o in cell.outputs
    ]


def test_outputs_figures_and_a_clean_process(tmp_path):
    path = _write(
        tmp_path,
        "import matplotlib.pyplot as plt\nprint('a'); plt.plot([1, 2]); plt.show(); print('b')",
        "from IPython.display import display, clear_output\n"
        "print('x'); clear_output(wait=True); print('y')\n"
        "h = display('first', display_id=True); h.update('second')",
        "import jax.numpy as jnp\njnp.zeros(2).dtype, jnp.ones(3) + jnp.ones((2, 3))",
    )
    plt.subplots()  # a figure this process left open is not the notebook's
    main = sys.modules["__main__"]
    try:
        for _ in range(2):  # a second notebook gets its own shell, figures included
            nb = run_notebook(path)
            first, second, third = nb.cells
            assert _outputs(first) == [
                ("stream", "a\n", False),
                ("display_data", "<Figure size 640x480 with 1 Axes>", True),
                ("stream", "b\n", False),
            ]
            assert _outputs(second) == [
                ("stream", "y\n", False),
                ("display_data", "'second'", False),
            ]
            # a new kernel's defaults: float32, and rank promotion allowed (this suite raises)
            assert third.outputs[0]["data"]["text/plain"].startswith(
                "(dtype('float32'),\n Array([[2."
            )
            assert [c.execution_count for c in nb.cells] == [1, 2, 3]
    finally:
        plt.close("all")
    from IPython import get_ipython

    assert get_ipython() is None and "__IPYTHON__" not in vars(builtins)
    assert sys.modules["__main__"] is main


def test_a_raising_or_hanging_cell_fails_clearly(tmp_path):
    with pytest.raises(NotebookCellError, match=r"cell 1 raised ZeroDivisionError"):
        run_notebook(_write(tmp_path, "x = 1", "x / 0", "print('not reached')"))
    # a timeout is not an Exception: the library's except-Exception handlers cannot swallow it
    hang = "try:\n    while True: pass\nexcept Exception:\n    print('swallowed')"
    with pytest.raises(
        NotebookCellError, match=r"NotebookTimeout: nb.ipynb, cell 0: still running"
    ):
        run_notebook(_write(tmp_path, hang), timeout=1)


def test_ctrl_c_in_a_cell_stops_the_run(tmp_path):
    """IPython turns a KeyboardInterrupt into a cell error; the runner raises it again, so a
    Ctrl-C during a notebook ends the test session instead of failing one test."""
    with pytest.raises(KeyboardInterrupt, match="nb.ipynb: cell 0"):
        run_notebook(_write(tmp_path, "raise KeyboardInterrupt"))
