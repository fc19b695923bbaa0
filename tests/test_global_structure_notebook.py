"""notebooks/global_structure.ipynb: it runs top to bottom in quick mode, every figure renders,
and every claim its text makes agrees with the numbers it printed.

Built as ``tests/test_trainability_notebook.py``: the claims are read with the helpers of
``tests/test_notebook_claims.py`` (the markdown sentence located by a regex, the printed numbers
by their labels, quoted numbers equal to the printed ones to the precision of both,
:func:`agrees`); a reworded sentence or a renamed print raises ``LabelNotFound``. Each claim is a
function ``claim(nb, quick)`` in ``CLAIMS``, marked with whether it also holds at quick sizes:
the committed (full-mode) notebook is checked against every claim, the quick execution of the
suite against those that hold at its sizes. ``MUTATIONS`` corrupts, for every claim, a printed
number or the quoted text in a copy of the committed notebook and checks that the claim then
fails.
"""

from __future__ import annotations

import re

import pytest

from tests._claim_suite import ClaimSuite, committed_in_full_mode
from tests.test_notebook_claims import (
    FLOAT,
    NB,
    LabelNotFound,
    Num,
    _mutated,
    agrees,
    nums,
    scale,
    to,
)

F = FLOAT
NAME = "global_structure"
# pruning curve, instability curve, spectra heat maps (one panel in quick mode, three in full)
FIGURES = {"full": 3, "quick": 3}
DIGITS_TEST = 360
C = 10

SUITE = ClaimSuite(NAME, FIGURES)
CLAIMS = SUITE.claims
claim = SUITE.claim


# --------------------------------------------------------------------------------------- setup
claim(quick=True)(committed_in_full_mode)


# ------------------------------------------------------------------------------ lottery tickets
_ROUND = re.compile(
    rf"^round (\d+): sparsity ({F}): test accuracy ticket ({F}), random mask ({F}), "
    rf"reinit ({F})$",
    re.M,
)


def _rounds(nb: NB) -> list[dict]:
    rows = [
        {
            "r": int(m.group(1)),
            "sparsity": Num(m.group(2)),
            "ticket": Num(m.group(3)),
            "random_mask": Num(m.group(4)),
            "reinit": Num(m.group(5)),
            "line": m.group(0),
        }
        for m in _ROUND.finditer(nb.out)
    ]
    if not rows:
        raise LabelNotFound(f"{nb.name}: no pruning rounds in the outputs")
    return rows


@claim(quick=True)
def pruning_sparsity(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"After (\d+) rounds ({F}) of the kernel weights are pruned \(`1 - 0\.8\^(\d+) = ({F})`\)"
    )
    setup = nb.printed(r"^hidden \((\d+),\), (\d+) steps, (\d+) rounds of 20%, rewind step (\d+)$")
    rows = _rounds(nb)
    rounds = int(setup.group(3))
    nb.check(
        [r["r"] for r in rows] == list(range(rounds + 1)), s, setup.group(0), "one row a round"
    )
    # each round removes 20% of the survivors, rounded to whole weights: at least 64 x 16 + 16
    # x 10 = 1184 prunable weights, so at most r / 1184 off 1 - 0.8^r after r rounds
    for r in rows:
        want = 1 - 0.8 ** r["r"]
        nb.check(
            abs(r["sparsity"] - want) <= r["r"] / 1184 + r["sparsity"].h,
            s,
            r["line"],
            f"sparsity 1 - 0.8^{r['r']} = {want:.4f}",
        )
    if not quick:
        last = rows[-1]
        nb.check(
            int(q.group(1)) == int(q.group(3)) == rounds
            and agrees(Num(q.group(2)), last["sparsity"])
            and agrees(Num(q.group(4)), Num(repr(1 - 0.8**rounds))),
            s,
            last["line"],
            f"{rounds} rounds, sparsity {last['sparsity']!r}",
        )


@claim()
def pruning_setup(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"A 64-(\d+)-10 ReLU MLP trained with momentum \(learning rate ({F}), (\d+) steps of (\d+) "
        r"examples\) is\s+pruned in (\d+) rounds of 20%.*rewound to their values at step (\d+)"
    )
    setup = nb.printed(r"^hidden \((\d+),\), (\d+) steps, (\d+) rounds of 20%, rewind step (\d+)$")
    code = nb.in_code(
        rf'cfg = dict\(optimizer="momentum", learning_rate=({F}), num_steps=STEPS, batch_size=(\d+)'
    )
    nb.check(
        setup.groups() == q.group(1, 3, 5, 6) and code.groups() == q.group(2, 4),
        s,
        f"{setup.group(0)}; {code.group(0)}",
        str(q.groups()),
    )


@claim()
def ticket_against_controls(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"The ticket's test accuracy is ({F}) at sparsity ({F}) against ({F}) \(random mask\) "
        rf"and ({F}) \(reinit\), and ({F}) at sparsity ({F}) against ({F}) \(random mask\) and "
        rf"({F}) \(reinit\)"
    )
    rows = {r["sparsity"].s: r for r in _rounds(nb)}
    for sp, t, rm, ri in ((2, 1, 3, 4), (6, 5, 7, 8)):
        r = rows.get(q.group(sp))
        nb.check(r is not None, s, str(list(rows)), f"a round at sparsity {q.group(sp)}")
        nb.check(
            agrees(Num(q.group(t)), r["ticket"])
            and agrees(Num(q.group(rm)), r["random_mask"])
            and agrees(Num(q.group(ri)), r["reinit"]),
            s,
            r["line"],
            f"ticket {q.group(t)}, random mask {q.group(rm)}, reinit {q.group(ri)}",
        )
    s, q = nb.sentence(
        rf"Every accuracy here lies between ({F}) and ({F}), a spread of (\d+) of the (\d+) test"
    )
    accs = [r[k] for r in rows.values() for k in ("ticket", "random_mask", "reinit")]
    nb.check(
        agrees(Num(q.group(1)), min(accs)) and agrees(Num(q.group(2)), max(accs)),
        s,
        str(accs),
        f"from {q.group(1)} to {q.group(2)}",
    )
    nb.check(
        int(q.group(4)) == DIGITS_TEST
        and round((max(accs) - min(accs)) * DIGITS_TEST) == int(q.group(3)),
        s,
        str(accs),
        f"{q.group(3)} test images of {DIGITS_TEST}",
    )
    # "does not show a winning-ticket advantage": the ticket is below a control at some round
    s, _ = nb.sentence(r"this network does not\s+show a winning-ticket advantage")
    nb.check(
        any(r["ticket"] < max(r["random_mask"], r["reinit"]) for r in rows.values()),
        s,
        str([r["line"] for r in rows.values()]),
        "the ticket below a control at some sparsity",
    )


# ---------------------------------------------------------------------------------- instability
_NETS = ("dense", "ticket", "random mask")
_BARRIER = re.compile(
    rf"^(dense|ticket|random mask) \(sparsity ({F})\), spawn step (\d+): test error barrier "
    rf"({F}); copies' test accuracy ({F}), ({F})$",
    re.M,
)
_SUMMARY = re.compile(
    rf"^(dense|ticket|random mask): largest barrier ({F}); copies' test accuracy ({F}) to ({F}); "
    r"(?:stable \(barrier < 0\.02\) from spawn step (\d+)|(not stable) at any spawn step)$",
    re.M,
)
_TICKET = (
    rf"^ticket after (\d+) rounds of 50%: sparsity ({F}), test accuracy ({F}) \(dense ({F})\)$"
)
# the smallest prunable count (kernels) of the CNNs: quick (8,) channels 3 x 3 x 1 x 8 + 40 x 8
# x 10 = 3272; full (32, 32, 32) 288 + 2 x 9216 + 40 x 32 x 10 = 31520
_MIN_PRUNABLE = 3272


def _instability(nb: NB) -> tuple[dict, dict]:
    """``{net: [row per spawn step]}`` and ``{net: summary}`` of section 2's prints."""
    rows: dict[str, list[dict]] = {}
    for m in _BARRIER.finditer(nb.out):
        rows.setdefault(m.group(1), []).append(
            {
                "sparsity": Num(m.group(2)),
                "step": int(m.group(3)),
                "barrier": Num(m.group(4)),
                "acc": (Num(m.group(5)), Num(m.group(6))),
                "line": m.group(0),
            }
        )
    summ = {
        m.group(1): {
            "largest": Num(m.group(2)),
            "lo": Num(m.group(3)),
            "hi": Num(m.group(4)),
            "stable_from": None if m.group(6) else int(m.group(5)),
            "line": m.group(0),
        }
        for m in _SUMMARY.finditer(nb.out)
    }
    if set(rows) != set(_NETS) or set(summ) != set(_NETS):
        raise LabelNotFound(f"{nb.name}: barrier rows or summaries missing ({list(rows)})")
    return rows, summ


def _stable_from(nb: NB, rows: list[dict]) -> int | None:
    """The first spawn step from which every printed barrier is below 0.02 (a printed value
    within its rounding of 0.02 cannot decide: it fails the claim rather than guess)."""
    close = [r["line"] for r in rows if abs(r["barrier"] - 0.02) <= r["barrier"].h]
    nb.check(not close, "(the 2% stability threshold)", str(close), "barriers clear of 0.02")
    for j, r in enumerate(rows):
        if all(x["barrier"] < 0.02 for x in rows[j:]):
            return r["step"]
    return None


@claim(quick=True)
def instability_summaries(nb: NB, quick: bool):
    # each network's summary line is what its rows say: the largest barrier, the copies'
    # accuracy range, the first spawn step from which it is stable; the three networks share
    # the spawn steps and the two sparse ones the ticket's sparsity
    s, q = nb.sentence(r"Its copies are spawned at steps (\d+), (\d+) and (\d+)")
    rows, summ = _instability(nb)
    t = nb.printed(_TICKET)
    steps = [r["step"] for r in rows["dense"]]
    for net in _NETS:
        rs, sm = rows[net], summ[net]
        nb.check([r["step"] for r in rs] == steps, s, str([r["line"] for r in rs]), str(steps))
        want_sp = Num("0") if net == "dense" else Num(t.group(2))
        nb.check(all(agrees(r["sparsity"], want_sp) for r in rs), s, rs[0]["line"], f"{want_sp!r}")
        accs = [a for r in rs for a in r["acc"]]
        nb.check(
            agrees(sm["largest"], max(r["barrier"] for r in rs))
            and agrees(sm["lo"], min(accs))
            and agrees(sm["hi"], max(accs))
            and sm["stable_from"] == _stable_from(nb, rs),
            s,
            sm["line"],
            f"{net}: from the rows {[r['line'] for r in rs]}",
        )
    if not quick:
        nb.check(steps == [int(v) for v in q.groups()], s, str(steps), str(q.groups()))


@claim(quick=True)
def ticket_sparsity(nb: NB, quick: bool):
    s, q = nb.sentence(r"the ticket of (\d+) rounds of iterative magnitude\s+pruning of 50%")
    t = nb.printed(_TICKET)
    r, sp = int(t.group(1)), Num(t.group(2))
    # each round prunes round(0.5 x survivors): at most half a weight off per round
    nb.check(
        abs(sp - (1 - 0.5**r)) <= r * 0.5 / _MIN_PRUNABLE + sp.h,
        s,
        t.group(0),
        f"sparsity 1 - 0.5^{r} = {1 - 0.5**r}",
    )
    if not quick:
        nb.check(int(q.group(1)) == r, s, t.group(0), f"{q.group(1)} rounds")


@claim()
def instability_setup(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"a CNN of three (\d+)-channel 3x3 convolutions and a flatten\s+readout trained with "
        rf"momentum \(learning rate ({F}), no warm-up, (\d+) steps of (\d+) examples\)"
    )
    m = nb.printed(
        r"^MNIST-1D train \((\d+), 40, 1, 1\), test \((\d+), 40, 1, 1\); CNN channels "
        r"\(([\d, ]+)\), (\d+) steps$"
    )
    code = nb.in_code(
        rf'cfg1d = dict\(optimizer="momentum", learning_rate=({F}), num_steps=STEPS_1D, '
        r"batch_size=(\d+)"
    )
    ch = [int(c) for c in m.group(3).split(",") if c.strip()]
    nb.check(
        ch == [int(q.group(1))] * 3
        and m.group(4) == q.group(3)
        and code.groups() == q.group(2, 4)
        and (m.group(1), m.group(2)) == ("4000", "1000"),  # MNIST-1D's whole split
        s,
        f"{m.group(0)}; {code.group(0)}",
        str(q.groups()),
    )


@claim()
def dense_becomes_stable(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"The dense CNN's test error barrier is ({F}) when its copies are spawned at step (\d+), "
        rf"above the\s+2% threshold, and ({F}) and ({F}) when they are spawned at steps (\d+) and "
        r"(\d+): it becomes stable\s+to SGD noise between steps (\d+) and (\d+) \(of (\d+)\)"
    )
    rows, summ = _instability(nb)
    by = {r["step"]: r for r in rows["dense"]}
    for g_b, g_k, above in ((1, 2, True), (3, 5, False), (4, 6, False)):
        r = by.get(int(q.group(g_k)))
        nb.check(r is not None, s, str(list(by)), f"a row at spawn step {q.group(g_k)}")
        nb.check(
            agrees(Num(q.group(g_b)), r["barrier"]) and (r["barrier"] >= 0.02) == above,
            s,
            r["line"],
            f"barrier {q.group(g_b)}, {'above' if above else 'below'} 0.02",
        )
    steps = sorted(by)
    k = summ["dense"]["stable_from"]
    nb.check(
        k is not None
        and k == int(q.group(8))
        and steps[steps.index(k) - 1] == int(q.group(7))
        and steps.index(k) > 0,
        s,
        summ["dense"]["line"],
        f"unstable at {q.group(7)}, stable from {q.group(8)}",
    )
    m = nb.printed(r"^MNIST-1D train .*; CNN channels .*, (\d+) steps$")
    nb.check(m.group(1) == q.group(9), s, m.group(0), f"{q.group(9)} steps")


@claim()
def ticket_matching_and_stable(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"The ticket \(sparsity ({F}), test accuracy ({F})\s+against the dense network's ({F}): "
        rf"matching\) is stable from step (\d+), with barriers of at most\s+({F})"
    )
    t = nb.printed(_TICKET)
    _, summ = _instability(nb)
    tk = summ["ticket"]
    nb.check(
        agrees(Num(q.group(1)), Num(t.group(2)))
        and agrees(Num(q.group(2)), Num(t.group(3)))
        and agrees(Num(q.group(3)), Num(t.group(4)))
        and Num(t.group(3)) >= Num(t.group(4)),  # matching: no worse than the dense network
        s,
        t.group(0),
        f"sparsity {q.group(1)}, accuracy {q.group(2)} >= dense {q.group(3)}",
    )
    first = min(r["step"] for r in _instability(nb)[0]["ticket"])
    nb.check(
        tk["stable_from"] == int(q.group(4)) == first
        and agrees(Num(q.group(5)), tk["largest"])
        and tk["largest"] < 0.02,
        s,
        tk["line"],
        f"stable from step {q.group(4)}, largest barrier {q.group(5)}",
    )


@claim()
def random_mask_stable_not_matching(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"The random mask of the same sparsity is stable too \(barriers of at most ({F})\) but "
        rf"its\s+copies reach only ({F}) to ({F}) test accuracy"
    )
    rows, summ = _instability(nb)
    rm, t = summ["random mask"], nb.printed(_TICKET)
    nb.check(
        agrees(Num(q.group(1)), rm["largest"])
        and rm["largest"] < 0.02
        and rm["stable_from"] == min(r["step"] for r in rows["random mask"]),
        s,
        rm["line"],
        f"stable from the first spawn step, largest barrier {q.group(1)}",
    )
    nb.check(
        agrees(Num(q.group(2)), rm["lo"]) and agrees(Num(q.group(3)), rm["hi"]),
        s,
        rm["line"],
        f"copies' accuracy {q.group(2)} to {q.group(3)}",
    )
    # "only the ticket is matching": the ticket's accuracy (the pruning run) at or above the
    # dense network's, every random-mask copy below it
    dense, tacc = Num(t.group(4)), Num(t.group(3))
    s2, _ = nb.sentence(r"of\s+the two sparse networks only the ticket is matching")
    nb.check(
        rm["hi"] < dense <= tacc,
        s2,
        f"{rm['line']}; {t.group(0)}",
        f"random mask below the dense {dense!r}, the ticket at or above it",
    )


# ------------------------------------------------------------------------------ class structure
@claim(quick=True)
def class_ranks(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"The class-mean part has rank (\d+) \(`C`\), (\d+) \(`C - 1`\) once centred by the "
        r"global mean, and the\s+cross-class part rank (\d+) \(`C\(C-1\)`\)"
    )
    m = nb.printed(
        r"^(\d+) examples, C = (\d+): class rank (\d+), centred (\d+), cross rank (\d+)$"
    )
    c = int(m.group(2))
    nb.check(
        c == C and (int(m.group(3)), int(m.group(4)), int(m.group(5))) == (c, c - 1, c * (c - 1)),
        s,
        m.group(0),
        f"ranks {C}, {C - 1}, {C * (C - 1)}",
    )
    nb.check(m.group(3, 4, 5) == q.groups(), s, m.group(0), str(q.groups()))
    if not quick:
        nb.check(int(m.group(1)) == 512, s, m.group(0), "512 examples")


def _cd(nb: NB) -> dict:
    m = nb.printed(
        rf"^bulk edge ({F}); top GGN eigenvalues \[([^\]]*)\]; outliers above the bulk edge (\d+)$"
    )
    return {
        "edge": Num(m.group(1)),
        "values": nums(m.group(2)),
        "outliers": int(m.group(3)),
        "line": m.group(0),
    }


@claim(quick=True)
def outliers_above_bulk_edge(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"Of the (\d+) top GGN eigenvalues, (\d+) lie\s+above the bulk edge ({F}) \(the "
        r"within-class part's top eigenvalue\), not (\d+)"
    )
    d = _cd(nb)
    above = sum(v > d["edge"] for v in d["values"])
    nb.check(above == d["outliers"], s, d["line"], f"{above} printed values above the edge")
    if not quick:
        nb.check(
            int(q.group(1)) == len(d["values"])
            and int(q.group(2)) == d["outliers"]
            and agrees(Num(q.group(3)), d["edge"])
            and int(q.group(4)) == C != d["outliers"],
            s,
            d["line"],
            f"{q.group(2)} of {q.group(1)} above {q.group(3)}, not {C}",
        )


@claim()
def attribution_shares(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"The top 10\s+eigenvectors are attributed ({F}) on average to the cross-class part and "
        rf"({F}) to the\s+within-class part; the class-mean part takes only ({F})"
    )
    got = {}
    for part in ("class", "cross", "within"):
        m = nb.printed(rf"^attribution {part}: top-10 mean ({F}), rest mean ({F})$")
        got[part] = (Num(m.group(1)), Num(m.group(2)))
    want = {"cross": q.group(1), "within": q.group(2), "class": q.group(3)}
    for part, v in want.items():
        nb.check(agrees(Num(v), got[part][0]), s, str(got[part]), f"{part} {v}")
    for i in (0, 1):  # the parts' quadratic forms over their sum: the shares add to one
        tot = sum(g[i] for g in got.values())
        nb.check(abs(tot - 1) <= sum(g[i].h for g in got.values()), s, str(got), "sum 1")


# ------------------------------------------------------------------------- the GGN-NTK bridge
_P = 64 * 16 + 16 + 16 * 10 + 10  # the 64-16-10 MLP's parameters


@claim(quick=True)
def gram_spectrum_matches_lanczos(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"The Gram route finds rank (\d+) and (\d+) zero eigenvalues, which add up to the (\d+) "
        r"parameters"
    )
    m = nb.printed(
        r"^GGN on (\d+) examples \(N C = (\d+)\): gram solver, rank (\d+), num_zero (\d+); "
        rf"top-5 gram \[([^\]]*)\], lanczos \[([^\]]*)\], largest relative difference ({F})$"
    )
    n, rank, zero = int(m.group(1)), int(m.group(3)), int(m.group(4))
    nb.check(rank + zero == _P, s, m.group(0), f"rank + num_zero = {_P}")
    s2, q2 = nb.sentence(r"the rank is at most `N \(C - 1\) = (\d+)`")
    nb.check(rank <= n * (C - 1), s2, m.group(0), f"rank <= {n * (C - 1)}")
    gram, lz, rel = nums(m.group(5)), nums(m.group(6)), Num(m.group(7))
    # Lanczos converges each pair to tol = 1e-6 relative to ||G||: 1e-4 relative is ample
    nb.check(
        rel < 1e-4 and all(abs(a - b) <= 1e-4 * abs(a) + a.h + b.h for a, b in zip(gram, lz)),
        s,
        m.group(0),
        "the top 5 agree to 1e-4 relative",
    )
    if not quick:
        nb.check(
            (rank, zero, _P) == tuple(int(v) for v in q.groups())
            and int(q2.group(1)) == n * (C - 1)
            and n == 50,
            s,
            m.group(0),
            str(q.groups()),
        )
        s3, q3 = nb.sentence(rf"Its top 5 agree with Lanczos to a relative ({F})")
        nb.check(agrees(Num(q3.group(1)), rel), s3, m.group(0), q3.group(1))


# ------------------------------------------------------------------------ spectra in training
_SP = re.compile(
    rf"^(no batch norm|batch norm, (?:batch|eval) statistics): bn_mode (\w+); steps \[([^\]]*)\]; "
    rf"top GGN eigenvalue ({F}) at step 0 -> ({F}); top/5th ({F}) -> ({F}); top NTK eigenvalue "
    rf"({F})$",
    re.M,
)


def _spectra(nb: NB) -> dict[str, dict]:
    rows = {
        m.group(1): {
            "mode": m.group(2),
            "first": Num(m.group(4)),
            "last": Num(m.group(5)),
            "ratio0": Num(m.group(6)),
            "ratio": Num(m.group(7)),
            "line": m.group(0),
        }
        for m in _SP.finditer(nb.out)
    }
    if not rows:
        raise LabelNotFound(f"{nb.name}: no spectra rows in the outputs")
    return rows


@claim(quick=True)
def spectra_bn_modes(nb: NB, quick: bool):
    s, _ = nb.sentence(r"in both batch and population \(eval\)\s+statistics")
    rows = _spectra(nb)
    want = {
        "no batch norm": "none",
        "batch norm, batch statistics": "batch",
        "batch norm, eval statistics": "eval",
    }
    if quick:
        want = {"no batch norm": "none"}
    nb.check(set(rows) == set(want), s, str(list(rows)), str(list(want)))
    for name, r in rows.items():
        nb.check(r["mode"] == want[name], s, r["line"], f"bn_mode {want[name]}")


@claim()
def spectra_through_training(nb: NB, quick: bool):
    rows = _spectra(nb)
    s, q = nb.sentence(
        rf"Without batch norm the top GGN eigenvalue grows from ({F}) to ({F}). With batch norm it "
        rf"grows\s+from ({F}) to ({F}) in batch statistics \(`bn_mode batch`\) and from ({F}) to "
        rf"({F}) in population\s+statistics \(`bn_mode eval`\)"
    )
    for name, i in (
        ("no batch norm", 1),
        ("batch norm, batch statistics", 3),
        ("batch norm, eval statistics", 5),
    ):
        r = rows[name]
        nb.check(
            agrees(Num(q.group(i)), r["first"])
            and agrees(Num(q.group(i + 1)), r["last"])
            and r["last"] > r["first"],
            s,
            r["line"],
            f"grows from {q.group(i)} to {q.group(i + 1)}",
        )
    s, q = nb.sentence(
        rf"The ratio of the top to the fifth eigenvalue ends at ({F}) and ({F}) with batch norm "
        rf"and ({F}) without"
    )
    got = [
        rows[n]["ratio"] for n in ("batch norm, batch statistics", "batch norm, eval statistics")
    ]
    got.append(rows["no batch norm"]["ratio"])
    nb.check(all(agrees(Num(v), g) for v, g in zip(q.groups(), got)), s, str(got), str(q.groups()))
    # "the top five stay close together": within a factor 2.5 at every printed point
    s, _ = nb.sentence(r"the top five stay close together")
    allr = [r[k] for r in rows.values() for k in ("ratio0", "ratio")]
    nb.check(all(v < 2.5 for v in allr), s, str(allr), "top / 5th < 2.5")


# ------------------------------------------------------------------------------------ the tests


# a mutation: (claim id, "out" | "md", what to change, how) as in tests/test_notebook_claims.py
MUTATIONS = [
    ("committed_in_full_mode", "out", r"^(full) mode \[", to("quick")),
    ("committed_in_full_mode", "out", r"^full run: (\d+) s$", to("700")),
    ("pruning_setup", "out", r"^hidden \(64,\), (\d+) steps", to("300")),
    ("pruning_setup", "md", "learning rate 0.05, 400", "learning rate 0.1, 400"),
    ("pruning_sparsity", "out", rf"^round 2: sparsity ({F})", to("0.3700")),
    ("pruning_sparsity", "md", "After 3 rounds 0.4880", "After 3 rounds 0.4800"),
    (
        "ticket_against_controls",
        "out",
        rf"^round 1: sparsity 0.2000: test accuracy ticket ({F})",
        to("0.9722"),
    ),
    ("ticket_against_controls", "md", "0.9722 (random mask)", "0.9750 (random mask)"),
    ("ticket_against_controls", "md", "a spread of 3 of", "a spread of 5 of"),
    ("ticket_against_controls", "out", rf"^round 3: .*reinit ({F})$", to("0.9806")),
    (
        "instability_summaries",
        "out",
        rf"^dense: largest barrier ({F})",
        to("0.0300"),
    ),
    ("instability_summaries", "out", r"^ticket: .*from spawn step (\d+)$", to("25")),
    (
        "instability_summaries",
        "md",
        "spawned at steps 0, 25 and 100",
        "spawned at steps 0, 50 and 100",
    ),
    ("ticket_sparsity", "out", rf"^ticket after 3 rounds of 50%: sparsity ({F})", to("0.8000")),
    (
        "ticket_sparsity",
        "md",
        "3 rounds of iterative magnitude",
        "4 rounds of iterative magnitude",
    ),
    ("instability_setup", "md", "0.05, no warm-up", "0.1, no warm-up"),
    ("instability_setup", "out", r"^MNIST-1D train .*; CNN channels .*, (\d+) steps$", to("2000")),
    ("dense_becomes_stable", "md", "barrier is 0.0505", "barrier is 0.0405"),
    (
        "dense_becomes_stable",
        "out",
        rf"^dense \(sparsity {F}\), spawn step 25: test error barrier ({F})",
        to("0.0300"),
    ),
    ("dense_becomes_stable", "md", "between steps 0 and 25", "between steps 25 and 100"),
    ("ticket_matching_and_stable", "out", rf"^ticket after .* test accuracy ({F})", to("0.9300")),
    ("ticket_matching_and_stable", "md", "at most 0.0025", "at most 0.0035"),
    ("random_mask_stable_not_matching", "md", "at most 0.0130", "at most 0.0230"),
    (
        "random_mask_stable_not_matching",
        "out",
        rf"^random mask: .*copies' test accuracy {F} to ({F})",
        to("0.9600"),
    ),
    ("class_ranks", "out", r"^512 examples, C = 10: class rank 10, centred (\d+)", to("10")),
    ("class_ranks", "md", "cross-class part rank 90", "cross-class part rank 80"),
    ("outliers_above_bulk_edge", "out", r"outliers above the bulk edge (\d+)$", to("9")),
    ("outliers_above_bulk_edge", "md", "the bulk edge 0.09539", "the bulk edge 0.09639"),
    ("attribution_shares", "out", rf"^attribution cross: top-10 mean ({F})", to("0.700")),
    ("attribution_shares", "md", "takes only 0.004", "takes only 0.040"),
    ("gram_spectrum_matches_lanczos", "out", r"gram solver, rank (\d+)", to("116")),
    ("gram_spectrum_matches_lanczos", "out", rf"largest relative difference ({F})$", to("3e-03")),
    ("gram_spectrum_matches_lanczos", "md", "to a relative 8.8e-07", "to a relative 1.8e-07"),
    ("spectra_bn_modes", "out", r"^batch norm, eval statistics: bn_mode (\w+)", to("batch")),
    ("spectra_through_training", "md", "from 0.8717 to 1.588", "from 0.8717 to 1.688"),
    ("spectra_through_training", "out", rf"^no batch norm: .*top/5th {F} -> ({F})", scale(1.5)),
    ("spectra_through_training", "md", "2.01 and 1.64", "2.01 and 1.74"),
]


def test_reworded_sentence_or_renamed_print_fails():
    fn, _ = CLAIMS["class_ranks"]
    with pytest.raises(LabelNotFound, match="markdown sentence"):
        fn(_mutated(NAME, "md", "The class-mean part has rank", "The class part has rank"), False)
    with pytest.raises(LabelNotFound, match="printed label"):
        fn(_mutated(NAME, "out", r"^512 examples, C = 10: (class rank)", to("rank")), False)


# the tests every claim-checked notebook runs (tests/_claim_suite.py), after the registry above
globals().update(SUITE.standard_tests(MUTATIONS))
