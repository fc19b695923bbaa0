"""notebooks/index.ipynb, the entry notebook: it runs top to bottom in quick mode, every figure
renders, the consistency checks it prints hold, the one-call study reproduces the numbers it
computed by hand, and the text of the committed (full-mode) notebook agrees with its outputs.

The claims are read with the helpers of ``tests/test_notebook_claims.py`` (the markdown sentence
located by a regex, the printed numbers by their labels, quoted numbers equal to the printed ones
to the precision of both); a reworded sentence or a renamed print raises ``LabelNotFound``. The
checks that hold at every size run on both the quick execution and the committed outputs; the
numbers the text quotes (full mode) on the committed outputs only.
"""

from __future__ import annotations

import functools
import math
import re

import nbformat
import pytest

from tests._util import REPO, run_notebook
from tests.test_notebook_claims import FLOAT, NB, LabelNotFound, Num, agrees, nums

F = FLOAT
PATH = REPO / "notebooks" / "index.ipynb"
FIGURES = 4  # density + sharpness, the three slices, the two paths, the NTK spectra
NUM_OUTPUTS = 10  # digits classes


def _rendered(raw, name: str):
    outs = [o for c in raw.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [
        f"{o.get('ename')}: {o.get('evalue')}" for o in outs if o.get("output_type") == "error"
    ]
    assert not errors, f"{name}: error outputs {errors}"
    pngs = sum(1 for o in outs if "image/png" in o.get("data", {}))
    assert pngs == FIGURES, f"{name}: {pngs} rendered figures, expected {FIGURES}"
    for c in raw.cells:  # every code cell ran
        if c.cell_type == "code":
            assert c.get("execution_count"), f"{name}: a code cell did not run: {c.source[:60]!r}"


def _table(nb: NB) -> dict[str, tuple[Num, Num, str]]:
    """Section 8's comparison: {quantity: (this notebook, results.json, 'equal'|'DIFFERENT')}."""
    rows = {
        m.group(1).strip(): (Num(m.group(2)), Num(m.group(3)), m.group(4))
        for m in nb.printed_all(rf"^(.{{24}}) +({F}) +({F})  (equal|DIFFERENT)$")
    }
    return rows


def check_everywhere(nb: NB, quick: bool) -> None:
    """The checks that hold at every size (quick execution and committed outputs)."""
    mode = nb.printed(r"^(quick|full) mode \[")
    s, _ = nb.sentence(r"the committed outputs come from that full run")
    nb.check(
        mode.group(1) == ("quick" if quick else "full"),
        s,
        mode.group(0),
        "quick" if quick else "full (the committed notebook)",
    )

    # section 3: the run saved and loaded back unchanged; the loss falls
    s, _ = nb.sentence(r"The reloaded parameters equal the trained ones exactly")
    m = nb.printed(rf"^loaded back: .*max \|params difference\| = ({F})$")
    nb.check(float(m.group(1)) == 0.0, s, m.group(0), "0")
    tl = nb.printed(rf"^train loss ({F}) -> ({F}); test accuracy ({F}) -> ({F})$")
    nb.check(float(tl.group(2)) < float(tl.group(1)), s, tl.group(0), "the training loss falls")
    steps = int(nb.printed(r"^TrainResult\(steps=(\d+),").group(1))
    every = int(
        nb.in_code(r"SHARPNESS_EVERY = (\d+) if QUICK else (\d+)").group(1 if quick else 2)
    )
    sh = nb.printed(
        rf"^sharpness \((\d+) measurements\): ({F}) at step 0, largest ({F}) at step "
        rf"(\d+), ({F}) at step (\d+)$"
    )
    nb.check(
        int(sh.group(1)) == steps // every + 1 and int(sh.group(6)) == steps // every * every,
        s,
        sh.group(0),
        f"one measurement every {every} of {steps} steps, step 0 included",
    )

    # section 4: converged eigenpairs, the exact trace, the report's two checks
    s, _ = nb.sentence(r"so they should agree within their combined standard error")
    eig = nb.printed(r"^EigenResult\(largest, values=\[([^\]]*)\], .*converged=(\d+)/(\d+),")
    values = nums(eig.group(1))
    k = int(nb.in_code(r"\bK = (\d+) if QUICK else (\d+)").group(1 if quick else 2))
    nb.check(
        len(values) == k and eig.group(2) == eig.group(3) == str(k),
        s,
        eig.group(0),
        f"{k} converged eigenvalues",
    )
    tr = nb.printed(rf"^TraceResult\((\w+), estimate=({F}) \+- ({F}), .*\((\d+) exact passes\)")
    s_tr, _ = nb.sentence(r"which it computes exactly with one pass per output")
    nb.check(
        tr.group(1) == "exact" and int(tr.group(4)) == NUM_OUTPUTS,
        s_tr,
        tr.group(0),
        f"exact, {NUM_OUTPUTS} passes",
    )
    dens = nb.printed(rf"^DensityResult\(.*top_node=({F}), trace=({F}), num_hvps=\d+\)$")
    c1 = nb.printed(
        rf"^check 1: SLQ trace ({F}) \+- ({F}) vs trace ({F}) \+- ({F}) \((\w+)\): "
        rf"difference ({F}) = ({F}) combined standard errors$"
    )
    # printed with :.6g (traces), :.3g (standard errors), :.4g (difference), :.2f (ratio)
    slq, t = Num(c1.group(1), sig=6), Num(c1.group(3), sig=6)
    se1, se2 = Num(c1.group(2), sig=3), Num(c1.group(4), sig=3)
    diff, ratio = Num(c1.group(6), sig=4), Num(c1.group(7))
    nb.check(
        agrees(slq, Num(dens.group(2))) and agrees(t, Num(tr.group(2))),
        s,
        c1.group(0),
        "the density's and the trace's printed estimates",
    )
    nb.check(abs(abs(slq - t) - diff) <= slq.h + t.h + diff.h, s, c1.group(0), "the difference")
    lo = (diff - diff.h) / math.hypot(se1 + se1.h, se2 + se2.h)
    hi = (diff + diff.h) / max(math.hypot(max(se1 - se1.h, 0), max(se2 - se2.h, 0)), 1e-300)
    nb.check(
        lo - ratio.h <= ratio <= hi + ratio.h,
        s,
        c1.group(0),
        "difference / combined standard error",
    )
    nb.check(
        ratio <= 3, s, c1.group(0), "within three combined standard errors (the report's test)"
    )
    s, _ = nb.sentence(r"the largest Gauss node of the quadrature should equal the top eigenvalue")
    c2 = nb.printed(
        rf"^check 2: top Gauss node ({F}) vs top eigenvalue ({F}): relative difference ({F})$"
    )
    nb.check(
        agrees(Num(c2.group(1)), Num(dens.group(1))) and agrees(Num(c2.group(2)), values[0]),
        s,
        c2.group(0),
        "the printed top node and top eigenvalue",
    )
    nb.check(float(c2.group(3)) <= 0.02, s, c2.group(0), "relative difference <= 2%")

    # section 5: three routes to the trained parameters give the logged loss
    s, _ = nb.sentence(r"so they must give the training loss logged at the end of training")
    c3 = nb.printed(
        rf"^check 3: slice centre ({F}), plane centre ({F}), interpolation end ({F}), "
        rf"logged final loss ({F}) ; largest relative difference ({F})$"
    )
    nb.check(float(c3.group(5)) <= 1e-4, s, c3.group(0), "relative difference <= 1e-4")
    nb.check(agrees(Num(c3.group(4)), Num(tl.group(2))), s, c3.group(0), "the logged final loss")
    grids = {
        m.group(1): m.group(2)
        for m in nb.printed_all(
            r"^SliceResult\((slice_1d|slice_2d|interpolate), grid (\S+), .*non-finite=0\)$"
        )
    }
    n1, n2, ni = (
        int(v)
        for v in nb.in_code(
            r"POINTS_1D, POINTS_2D, POINTS_INTERP = \((\d+), (\d+), (\d+)\) if QUICK else "
            r"\((\d+), (\d+), (\d+)\)"
        ).groups()[0 if quick else 3 :][:3]
    )
    nb.check(
        grids == {"slice_1d": str(n1), "slice_2d": f"{n2}x{n2}", "interpolate": str(ni)},
        s,
        str(grids),
        f"grids {n1}, {n2}x{n2}, {ni}, every point finite",
    )

    # section 6: the paths end at the two networks
    s, _ = nb.sentence(r"so its end values must equal their own exact losses")
    c4 = nb.printed_all(
        rf"^check 4 \((linear|aligned)\): path start ({F}) vs loss of A ({F}), path "
        rf"end ({F}) vs loss of B ({F}); relative differences ({F}), ({F})$"
    )
    nb.check(sorted(m.group(1) for m in c4) == ["aligned", "linear"], s, str(len(c4)), "two paths")
    for m in c4:
        nb.check(
            float(m.group(6)) <= 1e-4 and float(m.group(7)) <= 1e-4,
            s,
            m.group(0),
            "relative differences <= 1e-4",
        )
        nb.check(agrees(Num(m.group(3)), Num(tl.group(2))), s, m.group(0), "A's logged loss")
    bars = {
        m.group(1): (Num(m.group(2)), Num(m.group(3)))
        for m in nb.printed_all(
            rf"^(linear|aligned)\s+loss barrier ({F}) \(train\), test error barrier ({F})$"
        )
    }
    s, _ = nb.sentence(r"after weight matching they drop to")
    nb.check(
        bars["aligned"][0] < bars["linear"][0], s, str(bars), "the aligned loss barrier lower"
    )

    # section 8: the config's sizes are the notebook's; the study reproduces every number
    s, _ = nb.sentence(r"Every other size it fills in is the one this notebook used")
    m = nb.printed(r"^the config's sizes are this notebook's: (True|False)$")
    nb.check(m.group(1) == "True", s, m.group(0), "True")
    s, _ = nb.sentence(r"its trained parameters are section 3's exactly")
    m = nb.printed(rf"^study's trained parameters: max \|difference\| from section 3's = ({F})$")
    nb.check(float(m.group(1)) == 0.0, s, m.group(0), "0")
    rows = _table(nb)
    want = {
        "final train loss",
        "final test accuracy",
        "sharpness at the start",
        "sharpness at the end",
        *(f"eigenvalue {i + 1}" for i in range(k)),
        "trace",
        "SLQ trace",
        "top Gauss node",
        "1-D slice centre",
        "2-D slice maximum",
        "interpolation at t=0",
    }
    nb.check(set(rows) == want, s, str(sorted(rows)), str(sorted(want)))
    for name, (mine, theirs, flag) in rows.items():
        nb.check(
            flag == "equal" and agrees(mine, theirs),
            s,
            f"{name}: {mine!r} {theirs!r} {flag}",
            "equal",
        )
    count = nb.printed(r"^(\d+) of (\d+) equal$")
    nb.check(
        int(count.group(1)) == int(count.group(2)) == len(want),
        s,
        count.group(0),
        f"{len(want)} of {len(want)}",
    )
    # the "this notebook" column is what the sections above printed
    interp = nb.printed(
        rf"^interpolation: train loss ({F}) at t=0, ({F}) at t=1, min ({F}) at "
        rf"t=({F}); falls monotonically on \[0, 1\]: (True|False), on \[1, 1.5\]: "
        rf"(True|False)$"
    )
    plane = nb.printed(rf"^2-D slice: train loss from ({F}) to ({F})$")
    earlier = {
        "final train loss": Num(c3.group(4)),
        "final test accuracy": Num(tl.group(4)),
        "sharpness at the start": Num(sh.group(2)),
        "sharpness at the end": Num(sh.group(5)),
        **{f"eigenvalue {i + 1}": v for i, v in enumerate(values)},
        "trace": Num(tr.group(2)),
        "SLQ trace": Num(dens.group(2)),
        "top Gauss node": Num(dens.group(1)),
        "1-D slice centre": Num(c3.group(1)),
        "2-D slice maximum": Num(plane.group(2)),
        "interpolation at t=0": Num(interp.group(1)),
    }
    for name, v in earlier.items():
        nb.check(
            agrees(rows[name][0], v),
            s,
            f"{name}: {rows[name][0]!r} in the table, {v!r} above",
            "the same number",
        )
    checks = nb.printed_all(r"^report check \[(\w+)\] (.*): (\S+)$")
    # quick mode's two SLQ probes cannot make the SLQ comparison fail: not applicable (None)
    slq_na = quick and all(c.group(3) == "None" for c in checks if c.group(2).startswith("SLQ"))
    nb.check(
        len(checks) == 3
        and all(c.group(3) == "passed" or (slq_na and c.group(2).startswith("SLQ"))
                for c in checks),
        s,
        "; ".join(c.group(0) for c in checks),
        "the report's three checks passed (quick mode: the SLQ one not applicable)",
    )


def check_quoted(nb: NB) -> None:
    """The numbers the text quotes (full mode) against the committed outputs."""
    # the architecture and the data
    s, _ = nb.sentence(r"the demo's 64-256-256-10 ReLU MLP")
    m = nb.printed(r"^Model\(mlp, num_params=(\d+), state_leaves=0\) (.*)$")
    shapes = [
        tuple(int(d) for d in x) for x in re.findall(r"'kernel': \((\d+), (\d+)\)", m.group(2))
    ]
    nb.check(shapes == [(64, 256), (256, 256), (256, 10)], s, m.group(0), "64-256-256-10")
    s, q = nb.sentence(r"split 80/20 by class: (\d+) training and (\d+) test examples")
    d = nb.printed(r"^Dataset\(digits: train \((\d+), 64\), test \((\d+), 64\)")
    nb.check(d.groups() == q.groups(), s, d.group(0), f"{q.group(1)} and {q.group(2)}")
    s, q = nb.sentence(r"In full mode it has (\d+) parameters")
    nb.check(m.group(1) == q.group(1), s, m.group(0), q.group(1))

    # training
    s, q = nb.sentence(
        rf"the training loss falls from ({F}) to ({F}) and the test accuracy reaches ({F})"
    )
    tl = nb.printed(rf"^train loss ({F}) -> ({F}); test accuracy ({F}) -> ({F})$")
    nb.check(
        all(agrees(Num(a), Num(b)) for a, b in zip(q.groups(), tl.group(1, 2, 4))),
        s,
        tl.group(0),
        str(q.groups()),
    )
    steps = int(nb.printed(r"^TrainResult\(steps=(\d+),").group(1))
    s_e, _ = nb.sentence(r"on mini-batches of 64 for 20 epochs")
    nb.check(steps == 20 * (1437 // 64), s_e, f"steps={steps}", "20 epochs of 1437 // 64 steps")
    s, q = nb.sentence(
        rf"The sharpness rises at first \(({F}) at step 0, ({F}) at step (\d+)\) and "
        rf"then falls to ({F}) at step (\d+)"
    )
    sh = nb.printed(
        rf"^sharpness \(\d+ measurements\): ({F}) at step 0, largest ({F}) at step "
        rf"(\d+), ({F}) at step (\d+)$"
    )
    nb.check(
        all(agrees(Num(a), Num(b)) for a, b in zip(q.groups(), sh.groups())),
        s,
        sh.group(0),
        str(q.groups()),
    )
    nb.check(
        float(sh.group(4)) < float(sh.group(1)) < float(sh.group(2)),
        s,
        sh.group(0),
        "rises, then falls below its start",
    )

    # curvature
    s, q = nb.sentence(
        rf"the top five eigenvalues are ({F}), ({F}), ({F}), ({F}) and ({F}), all converged"
    )
    eig = nb.printed(r"^EigenResult\(largest, values=\[([^\]]*)\], .*converged=(\d+)/(\d+),")
    nb.check(
        len(nums(eig.group(1))) == 5
        and all(agrees(Num(a), b) for a, b in zip(q.groups(), nums(eig.group(1)))),
        s,
        eig.group(0),
        str(q.groups()),
    )
    s, q = nb.sentence(
        rf"The exact trace is ({F}) and the SLQ trace ({F}) \+- ({F}), ({F}) combined "
        r"standard errors apart: check \(1\) passes"
    )
    c1 = nb.printed(
        rf"^check 1: SLQ trace ({F}) \+- ({F}) vs trace ({F}) \+- ({F}) \((\w+)\): "
        rf"difference ({F}) = ({F}) combined standard errors$"
    )
    got = (c1.group(3), c1.group(1), c1.group(2), c1.group(7))
    nb.check(
        all(agrees(Num(a), Num(b)) for a, b in zip(q.groups(), got)) and c1.group(5) == "exact",
        s,
        c1.group(0),
        str(q.groups()),
    )
    s, q = nb.sentence(
        rf"The top Gauss node equals the top eigenvalue to a relative ({F}): check \(2\) passes"
    )
    c2 = nb.printed(rf"^check 2: .*: relative difference ({F})$")
    nb.check(agrees(Num(q.group(1)), Num(c2.group(1))), s, c2.group(0), q.group(1))

    # shape
    s, q = nb.sentence(
        rf"the trained network is the lowest point of both slices \(the slices' minimum, "
        rf"({F}), is their centre\), and on the plane the training loss rises to ({F}) at most"
    )
    mins = [
        Num(m.group(1))
        for m in nb.printed_all(rf"^SliceResult\(slice_[12]d, grid \S+, train loss min ({F}),")
    ]
    c3 = nb.printed(rf"^check 3: slice centre ({F}), plane centre ({F}),")
    plane = nb.printed(rf"^2-D slice: train loss from ({F}) to ({F})$")
    nb.check(
        len(mins) == 2
        and all(agrees(v, Num(q.group(1))) for v in mins)
        and agrees(Num(c3.group(1)), Num(q.group(1)))
        and agrees(Num(c3.group(2)), Num(q.group(1)))
        and agrees(Num(plane.group(2)), Num(q.group(2))),
        s,
        f"{mins}; {c3.group(0)}; {plane.group(0)}",
        str(q.groups()),
    )
    s, q = nb.sentence(
        rf"The line from the initialisation falls monotonically from ({F}) at t = 0 to "
        rf"({F}) at t = 1 and keeps falling beyond it, to ({F}) at t = ({F})"
    )
    interp = nb.printed(
        rf"^interpolation: train loss ({F}) at t=0, ({F}) at t=1, min ({F}) at "
        rf"t=({F}); falls monotonically on \[0, 1\]: (True|False), on \[1, 1.5\]: "
        rf"(True|False)$"
    )
    nb.check(
        all(agrees(Num(a), Num(b)) for a, b in zip(q.groups(), interp.groups()[:4]))
        and interp.group(5) == interp.group(6) == "True",
        s,
        interp.group(0),
        str(q.groups()),
    )
    s, _ = nb.sentence(
        r"41 points on \[-1, 1\] in one dimension \(training and test sets\) and 21 x 21 in two"
    )
    g = {
        m.group(1): m.group(2)
        for m in nb.printed_all(r"^SliceResult\((slice_1d|slice_2d|interpolate), grid (\S+),")
    }
    nb.check(
        g == {"slice_1d": "41", "slice_2d": "21x21", "interpolate": "41"},
        s,
        str(g),
        "41, 21x21, 41",
    )

    # connectivity
    s, q = nb.sentence(
        rf"the straight line from A to B has a training-loss barrier of ({F}) and a "
        rf"test-error barrier of ({F}) \((\d+) of the (\d+) test images\); after weight "
        rf"matching they drop to ({F}) and ({F}) \(one image\)"
    )
    bars = {
        m.group(1): (Num(m.group(2)), Num(m.group(3)))
        for m in nb.printed_all(
            rf"^(linear|aligned)\s+loss barrier ({F}) \(train\), test error barrier ({F})$"
        )
    }
    lin, al = bars["linear"], bars["aligned"]
    nb.check(
        agrees(Num(q.group(1)), lin[0])
        and agrees(Num(q.group(2)), lin[1])
        and agrees(Num(q.group(5)), al[0])
        and agrees(Num(q.group(6)), al[1]),
        s,
        str(bars),
        str(q.groups()),
    )
    n_test = int(q.group(4))
    nb.check(
        n_test == int(nb.printed(r"test \((\d+), 64\)").group(1))
        and abs(lin[1] * n_test - int(q.group(3))) < 1e-3
        and abs(al[1] * n_test - 1) < 1e-3,
        s,
        str(bars),
        f"{q.group(3)} and 1 of {n_test} images",
    )

    # tangent kernel
    s, q = nb.sentence(
        rf"training multiplies the kernel's trace by ({F}) and its top eigenvalue by "
        rf"({F}), every eigenvalue grows \(by a factor between ({F}) and ({F})\), and "
        rf"the relative change is ({F})"
    )
    m = nb.printed(
        rf"^top eigenvalue {F} -> {F} \(x({F})\), trace {F} -> {F} \(x({F})\); eigenvalue "
        rf"ratios trained/init from ({F}) to ({F})$"
    )
    rc = nb.printed(rf"^relative change \|\|K_trained - K_init\|\|_F / \|\|K_init\|\|_F = ({F})$")
    got = (m.group(2), m.group(1), m.group(3), m.group(4), rc.group(1))
    nb.check(
        all(agrees(Num(a), Num(b)) for a, b in zip(q.groups(), got))
        and float(m.group(3)) > 1
        and float(rc.group(1)) > 1,
        s,
        f"{m.group(0)}; {rc.group(0)}",
        str(q.groups()),
    )
    s, q = nb.sentence(r"on the first (\d+) test inputs \((\d+) in quick mode\)")
    n = nb.printed(r"^EmpiricalKernel\(matrix=float32\[(\d+), (\d+)\]")
    nb.check(n.group(1) == n.group(2) == q.group(1), s, n.group(0), f"{q.group(1)} x {q.group(1)}")

    # the study
    s, q = nb.sentence(r"all (\d+) numbers are equal \((\d+) in quick mode, with k = 2\)")
    count = nb.printed(r"^(\d+) of (\d+) equal$")
    nb.check(count.group(1) == count.group(2) == q.group(1), s, count.group(0), q.group(1))
    nb.check(int(q.group(2)) == int(q.group(1)) - 5 + 2, s, q.group(0), "three fewer eigenvalues")


@functools.cache
def _committed():
    return nbformat.read(PATH, as_version=4)


def test_committed_notebook_text_agrees_with_its_outputs():
    raw = _committed()
    _rendered(raw, "notebooks/index.ipynb (committed)")
    nb = NB(raw, "index")
    check_everywhere(nb, quick=False)
    check_quoted(nb)


def _corrupted(old: str, new: str, *, markdown: bool):
    """The committed notebook with ``old`` replaced by ``new`` in its markdown text or in its
    printed outputs."""
    import copy

    raw = copy.deepcopy(_committed())
    for c in raw.cells:
        if markdown and c.cell_type == "markdown":
            c.source = c.source.replace(old, new)
        elif not markdown and c.cell_type == "code":
            for o in c.outputs:
                if o.get("output_type") == "stream" and old in o.get("text", ""):
                    o["text"] = o["text"].replace(old, new)
    return NB(raw, "index")


def test_a_changed_number_or_sentence_fails():
    # the checks can fail: a corrupted printed number or a reworded sentence is caught
    with pytest.raises(AssertionError, match="notebooks/index.ipynb"):
        check_everywhere(_corrupted("15 of 15 equal", "14 of 15 equal", markdown=False),
                         quick=False)
    with pytest.raises(AssertionError, match="9.4143"):
        check_quoted(_corrupted("relative change is 9.3143", "relative change is 9.4143",
                                markdown=True))
    with pytest.raises(LabelNotFound):
        check_everywhere(_corrupted("so its end values must equal", "so its end values equal",
                                    markdown=True), quick=False)


def test_notebook_quick():
    raw = run_notebook(PATH, quick=True)
    _rendered(raw, "notebooks/index.ipynb (quick run)")
    check_everywhere(NB(raw, "index"), quick=True)
