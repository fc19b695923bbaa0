"""The harness shared by the notebook tests whose claims live in their own module
(``tests/test_trainability_notebook.py``, ``tests/test_global_structure_notebook.py``,
``tests/test_transformers_notebook.py``).

A :class:`ClaimSuite` holds a notebook's claim registry (``claim(nb, quick)`` functions, marked
with whether they also hold at quick sizes) and the bodies of the tests every such module runs:
the committed notebook renders, every claim holds on it, every claim has a mutation that makes
it fail, the quick run renders and satisfies the quick claims, and the quick check rejects the
full-mode notebook. The claims themselves are read with the helpers of
``tests/test_notebook_claims.py``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import pytest

from tests._util import REPO, run_notebook
from tests.test_notebook_claims import FLOAT, NB, LabelNotFound, _mutated, committed, committed_raw


class ClaimSuite:
    def __init__(self, name: str, figures: dict[str, int]):
        self.name = name
        self.path = REPO / "notebooks" / f"{name}.ipynb"
        self.figures = figures  # rendered PNGs expected in "full" and "quick" mode
        self.claims: dict[str, tuple[Callable[[NB, bool], None], bool]] = {}

    def claim(self, quick: bool = False):
        """Register ``f(nb, quick)``; ``quick``: the claim also holds at quick sizes."""

        def deco(f):
            self.claims[f.__name__] = (f, quick)
            return f

        return deco

    def rendered(self, raw, label: str, mode: str) -> None:
        outs = [o for c in raw.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        errors = [
            f"{o.get('ename')}: {o.get('evalue')}" for o in outs if o.get("output_type") == "error"
        ]
        assert not errors, f"{label}: error outputs {errors}"
        pngs = sum(1 for o in outs if "image/png" in o.get("data", {}))
        want = self.figures[mode]
        assert pngs == want, f"{label}: {pngs} rendered figures, expected {want}"
        for c in raw.cells:
            if c.cell_type == "code":
                assert c.get("execution_count"), (
                    f"{label}: a code cell did not run: {c.source[:60]!r}"
                )

    # -- the test bodies ------------------------------------------------------------------------
    def committed_renders(self) -> None:
        self.rendered(committed_raw(self.name), f"notebooks/{self.name}.ipynb (committed)", "full")

    def claim_holds(self, claim_id: str) -> None:
        fn, _ = self.claims[claim_id]
        fn(committed(self.name), False)

    def every_claim_has_a_mutation(self, mutations) -> None:
        missing = sorted(set(self.claims) - {m[0] for m in mutations})
        assert not missing, f"claims without a self-check mutation: {missing}"
        unknown = sorted({m[0] for m in mutations} - set(self.claims))
        assert not unknown, f"mutations of unknown claims: {unknown}"

    def claim_can_fail(self, claim_id: str, where: str, find, change) -> None:
        fn, _ = self.claims[claim_id]
        fn(committed(self.name), False)  # passes on the committed notebook ...
        bad = _mutated(self.name, where, find, change)
        with pytest.raises(AssertionError, match=re.escape(f"notebooks/{self.name}.ipynb")):
            fn(bad, False)  # ... and fails on the corrupted copy

    @functools.cached_property
    def quick_run(self):
        return run_notebook(self.path, quick=True)

    def quick_claims_hold(self) -> None:
        raw = self.quick_run
        self.rendered(raw, f"notebooks/{self.name}.ipynb (quick run)", "quick")
        nb = NB(raw, self.name)
        failures = []
        for cid, (fn, quick_ok) in self.claims.items():
            if quick_ok:
                try:
                    fn(nb, True)
                except (AssertionError, LabelNotFound) as e:
                    failures.append(f"[{cid}] {e}")
        assert not failures, "quick-mode claims failed:\n" + "\n".join(failures)

    def quick_check_rejects_full_mode(self) -> None:
        # the quick check reads the mode marker: on the committed (full-mode) notebook it fails
        fn, _ = self.claims["committed_in_full_mode"]
        with pytest.raises(AssertionError, match="quick mode"):
            fn(committed(self.name), True)


    def standard_tests(self, mutations) -> dict[str, Callable]:
        """The tests every claim-checked notebook module runs, by name, for
        ``globals().update(SUITE.standard_tests(MUTATIONS))`` at the end of the module (after
        every claim is registered): the committed notebook renders, every claim holds, every
        claim has a mutation and each mutation makes its claim fail, the quick claims hold on a
        quick run, and the quick check rejects the full-mode notebook."""

        def test_committed_notebook_renders():
            self.committed_renders()

        @pytest.mark.parametrize("claim_id", list(self.claims))
        def test_claim(claim_id):
            self.claim_holds(claim_id)

        def test_every_claim_has_a_mutation():
            self.every_claim_has_a_mutation(mutations)

        @pytest.mark.parametrize(
            "claim_id, where, find, change",
            mutations,
            ids=[f"{m[0]}:{i}" for i, m in enumerate(mutations)],
        )
        def test_claim_can_fail(claim_id, where, find, change):
            self.claim_can_fail(claim_id, where, find, change)

        def test_notebook_quick():
            self.quick_claims_hold()

        def test_quick_claims_reject_the_full_mode_notebook():
            self.quick_check_rejects_full_mode()

        return {f.__name__: f for f in (
            test_committed_notebook_renders, test_claim, test_every_claim_has_a_mutation,
            test_claim_can_fail, test_notebook_quick,
            test_quick_claims_reject_the_full_mode_notebook)}


def committed_in_full_mode(nb: NB, quick: bool):
    """The claim both notebooks make in their introduction: the committed outputs come from
    the full run (its mode marker and timing line), with no errors and no section skipped."""
    s, _ = nb.sentence(r"the committed outputs come from the full run")
    m = nb.printed(r"^(full|quick) mode \[")
    want = "quick" if quick else "full"
    nb.check(m.group(1) == want, s, m.group(0), f"{want} mode")
    nb.check(not nb.errors, s, f"error outputs {nb.errors}", "no error outputs")
    skipped = re.findall(r".*skipped in quick mode.*", nb.out)
    if not quick:
        nb.check(not skipped, s, repr(skipped), "no section skipped (full mode runs them all)")
    r = nb.printed(rf"^(quick|full) run: ({FLOAT}) s$")
    nb.check(r.group(1) == want, s, r.group(0), f"the {want} run's time")
    if not quick:  # "full mode should run in a few minutes on 2 cores"
        nb.check(float(r.group(2)) < 600, s, r.group(0), "under 10 minutes")
