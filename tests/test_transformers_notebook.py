"""notebooks/transformers.ipynb: it runs top to bottom in quick mode, every figure renders, and
every claim its text makes agrees with the numbers it printed.

Built as ``tests/test_global_structure_notebook.py`` (the harness of ``tests/_claim_suite.py``):
the claims are read with the helpers of ``tests/test_notebook_claims.py`` (the markdown sentence
located by a regex, the printed numbers by their labels, quoted numbers equal to the printed
ones to the precision of both, :func:`agrees`); a reworded sentence or a renamed print raises
``LabelNotFound``. Each claim is a function ``claim(nb, quick)`` in ``CLAIMS``, marked with
whether it also holds at quick sizes: the committed (full-mode) notebook is checked against every
claim, the quick execution of the suite against those that hold at its sizes. ``MUTATIONS``
corrupts, for every claim, a printed number or the quoted text in a copy of the committed
notebook and checks that the claim then fails.
"""

from __future__ import annotations

import math
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
    exact,
    ls_slope_h,
    nums,
    scale,
    shift,
    to,
)

F = FLOAT
NAME = "transformers"
# per-head heat map and depth profile, sharpness with and without warm-up (both full mode only),
# the 2-D slice, the barrier profiles, the kernel convergence
FIGURES = {"full": 5, "quick": 3}

SUITE = ClaimSuite(NAME, FIGURES)
CLAIMS = SUITE.claims
claim = SUITE.claim


# --------------------------------------------------------------------------------------- setup
claim(quick=True)(committed_in_full_mode)


# --------------------------------------------------------------------------- 1. model, training
_MODEL = (
    r"^transformer: patch (\d+) -> (\d+) tokens of (\d+) pixels, width (\d+), depth (\d+), "
    r"heads (\d+) \(d_head (\d+)\), mlp_ratio (\d+): (\d+) parameters$"
)
_TRAIN = (
    rf"^seed 0: (\d+) Adam steps \(lr ({F}), batch (\d+)\): train loss ({F}), train accuracy "
    rf"({F}), test accuracy ({F})$"
)


def _param_count(width: int, depth: int, heads: int, mlp_ratio: int, tokens: int, patch_dim: int):
    """The parameters of make_model("transformer") with learned positions, biases, LayerNorm and
    mean pooling (the layout of landscape/_transformer.py's docstring), 10 outputs."""
    d, m = width, mlp_ratio * width
    embed = patch_dim * d + d + tokens * d
    attn = 4 * (d * d + d)  # query, key, value (d, heads, d_head) + (heads, d_head); out + (d,)
    block = 2 * (2 * d) + attn + (d * m + m) + (m * d + d)
    return embed + depth * block + 2 * d + d * 10 + 10


@claim(quick=True)
def model_setup(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"each 8x8 digit is cut into (\d+)x(\d+) patches, (\d+) tokens of (\d+) pixels, embedded "
        r"to width (\d+) with learned positions, then (\d+) pre-LayerNorm blocks with (\d+) heads "
        r"of width (\d+) and an MLP \(`mlp_ratio` (\d+)\).*readout: (\d+) parameters"
    )
    m = nb.printed(_MODEL)
    p, t, px, w, dep, h, dh, r, n = (int(v) for v in m.groups())
    # the printed sizes are consistent with each other and with the parameter layout
    nb.check(
        t == (8 // p) ** 2
        and px == p * p
        and dh * h == w
        and n == _param_count(w, dep, h, r, t, px),
        s,
        m.group(0),
        f"{(8 // p) ** 2} tokens, {p * p} pixels, d_head {w // h}, "
        f"{_param_count(w, dep, h, r, t, px)} parameters",
    )
    if not quick:
        quoted = tuple(int(v) for v in q.groups())
        want = (p, p, t, px, w, dep, h, dh, r, n)
        nb.check(quoted == want, s, m.group(0), str(quoted))


@claim()
def training(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"Adam \(learning rate ({F}), (\d+) steps of (\d+) examples\) from seed 0 reaches train "
        rf"loss ({F}) and test accuracy ({F})"
    )
    m = nb.printed(_TRAIN)
    nb.check(
        agrees(Num(q.group(1)), Num(m.group(2)))
        and q.group(2) == m.group(1)
        and q.group(3) == m.group(3)
        and agrees(Num(q.group(4)), Num(m.group(4)))
        and agrees(Num(q.group(5)), Num(m.group(6))),
        s,
        m.group(0),
        str(q.groups()),
    )


# ---------------------------------------------------------------------- 2. per-head spectra
def _heads(nb: NB) -> dict:
    w = nb.printed(
        rf"^Hessian on (\d+) training examples: whole network lambda_max ({F}); blocks \[([^\]]*)\]$"
    )
    rows = nb.printed_all(r"^block (\d+): qk \[([^\]]*)\], vo \[([^\]]*)\]$")
    return {
        "n": int(w.group(1)),
        "whole": Num(w.group(2)),
        "blocks": nums(w.group(3)),
        "qk": [nums(r.group(2)) for r in rows],
        "vo": [nums(r.group(3)) for r in rows],
        "line": w.group(0) + "; " + "; ".join(r.group(0) for r in rows),
    }


# the eigensolver's tolerance (1e-4 relative residual, loosened at most to ~5e-3 by float32
# rounding, as sharpness_callback reports): a sub-matrix's top eigenvalue may exceed the bound by
# that much without contradicting interlacing
_INTERLACE_RTOL = 5e-3


@claim()
def heads_interlace(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"Every head's Q/K and V/O top eigenvalue lies below its block's, and each block's below "
        r"the whole network's, as Cauchy interlacing requires of principal sub-matrices"
    )
    d = _heads(nb)

    def below(a: Num, b: Num) -> bool:
        return a <= b * (1 + _INTERLACE_RTOL) + a.h + b.h

    ok = all(below(b, d["whole"]) for b in d["blocks"])
    for i, blk in enumerate(d["blocks"]):
        ok &= all(below(v, blk) for v in d["qk"][i] + d["vo"][i])
    nb.check(ok, s, d["line"], "head <= block <= whole network")
    nb.check(d["n"] == 256, s, d["line"], "the Hessian on 256 training examples")


@claim()
def vo_above_qk(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"The V/O block's top eigenvalue exceeds the Q/K block's in all (\d+) heads"
    )
    d = _heads(nb)
    pairs = [(a, b) for qk, vo in zip(d["qk"], d["vo"]) for a, b in zip(qk, vo)]
    nb.check(
        len(pairs) == int(q.group(1)) and all(b > a + a.h + b.h for a, b in pairs),
        s,
        d["line"],
        f"vo > qk in all {q.group(1)} (block, head) pairs",
    )


@claim()
def depth_profile(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"Block 0's top eigenvalue ({F}) is ({F}) times block 1's ({F}), and the whole "
        rf"network's is ({F})"
    )
    d = _heads(nb)
    b0, b1 = d["blocks"]
    # the printed blocks are rounded to 5 decimals; the table prints 5 significant digits
    t0 = Num(nb.printed(rf"^\s+0\s+({F})\s+\d+$").group(1))
    t1 = Num(nb.printed(rf"^\s+1\s+({F})\s+\d+$").group(1))
    nb.check(
        agrees(Num(q.group(1)), t0)
        and agrees(Num(q.group(3)), t1)
        and agrees(t0, b0)
        and agrees(t1, b1)
        and agrees(Num(q.group(4)), d["whole"]),
        s,
        d["line"],
        f"blocks {q.group(1)}, {q.group(3)}; whole {q.group(4)}",
    )
    nb.check(agrees(Num(q.group(2)), exact(t0 / t1)), s, d["line"], f"ratio {t0 / t1:.3g}")
    s, q = nb.sentence(
        rf"the largest head block \(block (\d), head (\d), (V/O|Q/K): ({F})\) is (\d+)% of its "
        r"block's top eigenvalue"
    )
    cells = [
        (v, b, h, g)
        for b in range(len(d["blocks"]))
        for g, key in (("Q/K", "qk"), ("V/O", "vo"))
        for h, v in enumerate(d[key][b])
    ]
    v, b, h, g = max(cells, key=lambda c: c[0])
    top = Num(
        nb.printed(
            rf"^\s+{b}\s+{h}\s+{'vo' if g == 'V/O' else 'qk'}\s+({F})\s+{F}\s+{F}\s+\d+$"
        ).group(1)
    )
    nb.check(
        (int(q.group(1)), int(q.group(2)), q.group(3)) == (b, h, g)
        and agrees(Num(q.group(4)), top)
        and agrees(top, v),
        s,
        d["line"],
        f"block {b}, head {h}, {g}: {top}",
    )
    ratio = top / d["blocks"][b]
    nb.check(round(100 * ratio) == int(q.group(5)), s, d["line"], f"{100 * ratio:.1f}%")


# ---------------------------------------------------------------------------- 3. warm-up
_WARM = (
    rf"^warm-up +(\d+) steps: sharpness at step 0 ({F}), largest ({F}) at step (\d+) \(2/lr "
    rf"there ({F})\); loss at step 0 ({F}), largest ({F}) at step (\d+); final loss ({F}), "
    rf"final sharpness ({F})\n  loss falls for the first (\d+) steps; largest rebound at step "
    rf"(\d+): ({F}) after a running minimum of ({F}) \(({F}) times\)$"
)


def _warm(nb: NB) -> dict[int, dict]:
    rows = {}
    for m in nb.printed_all(_WARM):
        g = m.groups()
        rows[int(g[0])] = {
            "s0": Num(g[1]),
            "smax": Num(g[2]),
            "smax_step": int(g[3]),
            "thr": Num(g[4]),
            "l0": Num(g[5]),
            "lmax": Num(g[6]),
            "lmax_step": int(g[7]),
            "lfinal": Num(g[8]),
            "sfinal": Num(g[9]),
            "falls": int(g[10]),
            "reb_step": int(g[11]),
            "reb": Num(g[12]),
            "reb_min": Num(g[13]),
            "reb_x": Num(g[14]),
            "line": m.group(0),
        }
    if len(rows) != 2 or 0 not in rows:
        raise LabelNotFound(f"{nb.name}: want the runs without and with warm-up, got {list(rows)}")
    return rows


def _peak(nb: NB) -> float:
    return float(nb.in_code(rf"(?m)^PEAK = ({F})$").group(1))


@claim()
def warmup_unstable_rate(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"The initial sharpness ({F}) is ({F}) times the threshold `2/lr = ({F})` at the peak "
        r"rate"
    )
    rows = _warm(nb)
    peak = _peak(nb)
    r0 = rows[0]
    # both runs start from one initialisation: the same sharpness at step 0
    same = {rows[k]["s0"].s for k in rows}
    nb.check(len(same) == 1, s, str([r["line"] for r in rows.values()]), "one initial sharpness")
    nb.check(r0["s0"] > 2 / peak, s, r0["line"], f"above 2/lr = {2 / peak:g}")
    nb.check(
        agrees(Num(q.group(1)), r0["s0"])
        and agrees(Num(q.group(3)), exact(2 / peak))
        and agrees(Num(q.group(2)), exact(r0["s0"] * peak / 2)),
        s,
        r0["line"],
        f"{r0['s0']} = {r0['s0'] * peak / 2:.3g} x {2 / peak:g}",
    )


@claim()
def warmup_comparison(nb: NB, quick: bool):
    rows = _warm(nb)
    warm = max(rows)
    r0, rw = rows[0], rows[warm]
    s, q = nb.sentence(
        rf"Without warm-up the loss jumps from ({F}) to ({F}) at step (\d+), above its initial "
        rf"value, and the sharpness falls to ({F}) by the end"
    )
    nb.check(
        agrees(Num(q.group(1)), r0["l0"])
        and agrees(Num(q.group(2)), r0["lmax"])
        and int(q.group(3)) == r0["lmax_step"]
        and r0["lmax"] > r0["l0"]
        and agrees(Num(q.group(4)), r0["sfinal"])
        and r0["sfinal"] < r0["s0"],
        s,
        r0["line"],
        str(q.groups()),
    )
    s, q = nb.sentence(
        rf"With (\d+) steps of warm-up the loss falls for the first (\d+) steps, to ({F}), while\s+"
        r"the sharpness grows"
    )
    nb.check(
        int(q.group(1)) == warm
        and int(q.group(2)) == rw["falls"]
        and agrees(Num(q.group(3)), rw["reb_min"])
        and rw["falls"] > r0["falls"]
        and rw["smax"] > rw["s0"]
        and rw["smax_step"] > 0,
        s,
        f"{rw['line']}\n{r0['line']}",
        str(q.groups()),
    )
    s, q = nb.sentence(
        rf"at step (\d+) it jumps back to ({F}), ({F}) times that minimum, while the sharpness, "
        rf"({F}) at step (\d+), is far above `2/lr = ({F})` there"
    )
    nb.check(
        int(q.group(1)) == rw["reb_step"]
        and agrees(Num(q.group(2)), rw["reb"])
        and agrees(Num(q.group(3)), rw["reb_x"])
        and agrees(Num(q.group(4)), rw["smax"])
        and int(q.group(5)) == rw["smax_step"]
        and agrees(Num(q.group(6)), rw["thr"])
        and rw["smax"] > 2 * rw["thr"],
        s,
        rw["line"],
        str(q.groups()),
    )
    # "the catapult is delayed, not avoided": the warm-up run's largest rebound is later and
    # at least as large (relative to its running minimum) as the run without warm-up's
    s, _ = nb.sentence(r"Warm-up delays the catapult, it does not avoid it")
    nb.check(
        rw["reb_step"] > r0["reb_step"] and rw["reb_x"] >= r0["reb_x"],
        s,
        f"{r0['line']}\n{rw['line']}",
        "a later, larger rebound with warm-up",
    )
    s, q = nb.sentence(
        rf"it ends at a lower loss \(({F}) against ({F})\) and a lower sharpness \(({F}) against "
        rf"({F})\)"
    )
    nb.check(
        agrees(Num(q.group(1)), rw["lfinal"])
        and agrees(Num(q.group(2)), r0["lfinal"])
        and agrees(Num(q.group(3)), rw["sfinal"])
        and agrees(Num(q.group(4)), r0["sfinal"])
        and rw["lfinal"] < r0["lfinal"]
        and rw["sfinal"] < r0["sfinal"],
        s,
        f"{r0['line']}\n{rw['line']}",
        str(q.groups()),
    )


# ------------------------------------------------------------------------------- 4. slice
_SLICE = (
    rf"^(\d+)x(\d+) slice: centre train loss ({F}), lowest ({F}) at \(({F}), ({F})\); edge mean "
    rf"({F}), edge max ({F})$"
)


@claim(quick=True)
def slice_centre_lowest(nb: NB, quick: bool):
    s, q = nb.sentence(rf"the centre's train loss ({F}) is the lowest\s+of the (\d+) points")
    m = nb.printed(_SLICE)
    n = int(m.group(1))
    nb.check(
        float(m.group(5)) == 0 and float(m.group(6)) == 0 and Num(m.group(3)) <= Num(m.group(4)),
        s,
        m.group(0),
        "the lowest point at (0, 0)",
    )
    if not quick:
        nb.check(
            agrees(Num(q.group(1)), Num(m.group(3))) and int(q.group(2)) == n * n,
            s,
            m.group(0),
            str(q.groups()),
        )


@claim()
def slice_edge(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"along the edge of the slice, the train loss averages\s+({F}), above the `ln 10 = "
        rf"({F})` of a uniform guess"
    )
    m = nb.printed(_SLICE)
    nb.check(
        agrees(Num(q.group(1)), Num(m.group(7)))
        and agrees(Num(q.group(2)), exact(math.log(10)))
        and Num(m.group(7)) > math.log(10),
        s,
        m.group(0),
        f"edge mean {m.group(7)} > ln 10",
    )
    s, q = nb.sentence(
        rf"the test accuracy\s+falls from ({F}) at the centre to ({F}) \(right panel\), below "
        rf"chance \(({F})\)"
    )
    a = nb.printed(rf"^test accuracy: centre ({F}), lowest ({F})$")
    tr = nb.printed(_TRAIN)
    nb.check(
        agrees(Num(q.group(1)), Num(a.group(1)))
        and agrees(Num(a.group(1)), Num(tr.group(6)))  # the centre is the trained model
        and agrees(Num(q.group(2)), Num(a.group(2)))
        and float(q.group(3)) == 0.1
        and Num(a.group(2)) < 0.1,
        s,
        a.group(0),
        str(q.groups()),
    )


# ------------------------------------------------------------------------------ 5. alignment
_DIST = rf"^head_match (weights|products): (\S+): head-product distance ({F}) -> ({F})$"


def _dists(nb: NB):
    return [
        (m.group(1), m.group(2), Num(m.group(3)), Num(m.group(4)), m.group(0))
        for m in nb.printed_all(_DIST)
    ]


def _bars(nb: NB) -> dict:
    rows = nb.printed_all(
        rf"^linear path, (before|random \d+|weights|products): train loss barrier ({F}), train "
        rf"error barrier ({F})$"
    )
    return {m.group(1): (Num(m.group(2)), Num(m.group(3)), m.group(0)) for m in rows}


_KEYS = (
    r"^head_match (weights|products): objectives over (\d+) keys \[([^\]]*)\], kept key (\d+); "
    r"barriers per key (\[[^\]]*\]|-)$"
)


@claim(quick=True)
def aligned_same_function(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"Both alignments compute the same function as network B: the outputs differ by at "
        rf"most ({F})"
    )
    devs = nb.printed_all(
        rf"^head_match (weights|products): max \|f_B - f_B aligned\| on the test images ({F})$"
    )
    vals = [Num(m.group(2)) for m in devs]
    lines = "; ".join(m.group(0) for m in devs)
    # float32 rounding of a permuted sum: outputs of order 10 agree to ~1e-6 (1e-4 is ample)
    nb.check(len(vals) == 2 and max(vals) < 1e-4, s, lines, "both below 1e-4")
    if not quick:
        nb.check(agrees(Num(q.group(1)), max(vals, key=float)), s, lines, q.group(1))


@claim(quick=True)
def weight_matching_restarts(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf'with `head_match="weights"` two of the (\d+)\s+keys reach the objective ({F}) '
        rf"\(barrier ({F})\), one ({F}) \(barrier ({F})\)"
    )
    rows = {m.group(1): m for m in nb.printed_all(_KEYS)}
    bars = _bars(nb)
    for hm, m in rows.items():
        obj = nums(m.group(3))
        kept = int(m.group(4))
        # the kept alignment is the one of the largest objective, and its barrier is the one the
        # "linear path" line reports
        nb.check(
            len(obj) == int(m.group(2)) and obj[kept] == max(obj), s, m.group(0), "argmax kept"
        )
        if m.group(5) != "-":
            per = nums(m.group(5))
            nb.check(agrees(per[kept], bars[hm][0]), s, f"{m.group(0)}; {bars[hm][2]}", "kept")
    if quick:
        return
    m = rows["weights"]
    obj, per = nums(m.group(3)), nums(m.group(5))
    lo = [i for i, o in enumerate(obj) if agrees(o, Num(q.group(2)))]
    hi = [i for i, o in enumerate(obj) if agrees(o, Num(q.group(4)))]
    nb.check(
        int(q.group(1)) == len(obj) == 3
        and len(lo) == 2
        and len(hi) == 1
        and all(agrees(per[i], Num(q.group(3))) for i in lo)
        and agrees(per[hi[0]], Num(q.group(5))),
        s,
        m.group(0),
        str(q.groups()),
    )


@claim()
def alignment_barriers(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"the train loss barrier is ({F}) before\s+and ({F}) after weight matching \((\d+)% "
        rf"lower\), and ({F}) after product matching \(train error\s+barriers ({F}), ({F}) and "
        rf"({F})\)"
    )
    b = _bars(nb)
    lines = "; ".join(v[2] for v in b.values())
    nb.check(
        agrees(Num(q.group(1)), b["before"][0])
        and agrees(Num(q.group(2)), b["weights"][0])
        and agrees(Num(q.group(4)), b["products"][0])
        and agrees(Num(q.group(5)), b["before"][1])
        and agrees(Num(q.group(6)), b["weights"][1])
        and agrees(Num(q.group(7)), b["products"][1]),
        s,
        lines,
        str(q.groups()),
    )
    drop = 1 - b["weights"][0] / b["before"][0]
    nb.check(round(100 * drop) == int(q.group(3)), s, lines, f"{100 * drop:.1f}% lower")
    # "lowers the barrier little": below, by less than 10%
    s, _ = nb.sentence(r"With the largest\s+objective kept, alignment lowers the barrier little")
    nb.check(0 < drop < 0.1, s, lines, "0 < (before - weights) / before < 0.1")
    s, q = nb.sentence(
        rf"Two random permutations of B's units give ({F}) and\s+({F}): the unaligned pair is "
        r"already better than a random relabelling"
    )
    rnd = [b[k][0] for k in sorted(b) if k.startswith("random")]
    nb.check(
        len(rnd) == 2
        and all(agrees(Num(v), r) for v, r in zip(q.groups(), rnd))
        and b["before"][0] < min(rnd),
        s,
        lines,
        f"random {rnd} above {b['before'][0]}",
    )


@claim(quick=True)
def head_products_uncorrelated(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"before and after alignment they lie between ({F}) and ({F}), close to `sqrt\(2\) = "
        rf"({F})`"
    )
    d = _dists(nb)
    vals = [v for r in d for v in r[2:4]]
    lines = "; ".join(r[4] for r in d)
    # "close to sqrt 2": within 0.1 (independent heads of equal norm: exactly sqrt 2 in
    # expectation; the products' norms differ by seed)
    nb.check(
        all(abs(v - math.sqrt(2)) < 0.1 for v in vals),
        s,
        lines,
        "every distance within 0.1 of 1.414",
    )
    if not quick:
        nb.check(
            agrees(Num(q.group(1)), min(vals))
            and agrees(Num(q.group(2)), max(vals))
            and agrees(Num(q.group(3)), exact(math.sqrt(2))),
            s,
            lines,
            str(q.groups()),
        )
        s, q = nb.sentence(rf"alignment changes each distance\s+by at most ({F})")
        ch = max(abs(r[3] - r[2]) for r in d)
        nb.check(agrees(Num(q.group(1)), exact(ch)), s, lines, f"{ch:.4f}")
        groups = {r[1] for r in d}
        nb.check(len(groups) == 4 and len(d) == 8, s, lines, "4 per-head groups, 2 modes")


# ---------------------------------------------------------------------------------- 6. kernels
_CONV = (
    rf"^tied 1/d_k softmax attention, (\d+) heads: widths \[([^\]]*)\]: mean NTK distance "
    rf"\[([^\]]*)\] \+- \[([^\]]*)\]; slope ({F})$"
)


def _conv(nb: NB) -> dict[int, dict]:
    out = {}
    for m in nb.printed_all(_CONV):
        out[int(m.group(1))] = {
            "widths": [int(w) for w in re.findall(r"\d+", m.group(2))],
            "mean": nums(m.group(3)),
            "std": nums(m.group(4)),
            "slope": Num(m.group(5)),
            "line": m.group(0),
        }
    if set(out) != {1, 4}:
        raise LabelNotFound(f"{nb.name}: want the 1- and 4-head series, got {list(out)}")
    return out


@claim(quick=True)
def kernel_slopes(nb: NB, quick: bool):
    c = _conv(nb)
    for h, r in c.items():
        # the printed slope is the least-squares slope of the printed means (to their rounding)
        sl, dh = ls_slope_h(r["widths"], r["mean"])
        nb.check(
            abs(sl - r["slope"]) <= dh + r["slope"].h + 1e-9,
            f"{h} heads",
            r["line"],
            f"slope {sl:.4f}",
        )
    if quick:
        return
    s, q = nb.sentence(
        rf"With 1 head the mean relative distance of the empirical NTK to the analytic one falls "
        rf"from\s+({F}) at width (\d+) to ({F}) at width (\d+), a log-log slope of ({F}); with 4 "
        rf"heads from ({F}) to\s+({F}), slope ({F})"
    )
    r1, r4 = c[1], c[4]
    nb.check(
        agrees(Num(q.group(1)), r1["mean"][0])
        and int(q.group(2)) == r1["widths"][0]
        and agrees(Num(q.group(3)), r1["mean"][-1])
        and int(q.group(4)) == r1["widths"][-1]
        and agrees(Num(q.group(5)), r1["slope"])
        and agrees(Num(q.group(6)), r4["mean"][0])
        and agrees(Num(q.group(7)), r4["mean"][-1])
        and agrees(Num(q.group(8)), r4["slope"])
        and r4["widths"] == r1["widths"],
        s,
        f"{r1['line']}\n{r4['line']}",
        str(q.groups()),
    )
    s, _ = nb.sentence(r"Both are within 0\.1 of the -1/2 of `O\(1/sqrt\(width\)\)` fluctuations")
    nb.check(
        all(abs(r["slope"] + 0.5) < 0.1 for r in c.values()),
        s,
        f"{r1['line']}\n{r4['line']}",
        "|slope + 1/2| < 0.1",
    )


@claim()
def kernel_heads(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"at width (\d+)\s+the two distances, ({F}) and ({F}), differ by less than either one's "
        rf"spread over seeds \(({F})\s+and ({F})\)"
    )
    c = _conv(nb)
    r1, r4 = c[1], c[4]
    lines = f"{r1['line']}\n{r4['line']}"
    nb.check(
        int(q.group(1)) == r1["widths"][-1]
        and agrees(Num(q.group(2)), r1["mean"][-1])
        and agrees(Num(q.group(3)), r4["mean"][-1])
        and agrees(Num(q.group(4)), r1["std"][-1])
        and agrees(Num(q.group(5)), r4["std"][-1]),
        s,
        lines,
        str(q.groups()),
    )
    gap = abs(r1["mean"][-1] - r4["mean"][-1])
    nb.check(
        gap < min(r1["std"][-1], r4["std"][-1]), s, lines, f"|difference| {gap:.4f} < both spreads"
    )


# ------------------------------------------------------------------------------------ the tests


# a mutation: (claim id, "out" | "md", what to change, how) as in tests/test_notebook_claims.py
MUTATIONS = [
    ("committed_in_full_mode", "out", r"^(full) mode \[", to("quick")),
    ("committed_in_full_mode", "out", r"^full run: (\d+) s$", to("700")),
    ("model_setup", "out", r"mlp_ratio \d+: (\d+) parameters$", shift(10)),
    ("model_setup", "md", "heads of width 8", "heads of width 16"),
    ("training", "out", rf"^seed 0: .*test accuracy ({F})$", shift(0.01)),
    ("training", "md", "learning rate 0.003", "learning rate 0.001"),
    ("heads_interlace", "out", rf"^Hessian on \d+ .*lambda_max ({F});", scale(0.5)),
    ("vo_above_qk", "out", r"^block 1: qk \[([^\]]*)\]", scale(10, 0)),
    ("vo_above_qk", "md", "in all 8 heads", "in all 6 heads"),
    ("depth_profile", "md", "is 4.9 times block 1's", "is 4.2 times block 1's"),
    ("depth_profile", "md", "head 0, V/O", "head 1, V/O"),
    ("depth_profile", "md", "is 24% of its", "is 42% of its"),
    ("warmup_unstable_rate", "out", rf"^warm-up +0 steps: sharpness at step 0 ({F})", scale(0.1)),
    ("warmup_unstable_rate", "md", "is 7.8 times the threshold", "is 3.9 times the threshold"),
    ("warmup_comparison", "out", rf"^warm-up +0 steps: .*loss at step 0 {F}, largest ({F})", scale(0.5)),
    ("warmup_comparison", "md", "to 0.3280, while", "to 0.3380, while"),
    ("warmup_comparison", "md", "jumps back to 2.5465, 7.76 times", "jumps back to 2.5465, 7.66 times"),
    ("warmup_comparison", "out", r"^  loss falls for the first 15 steps; largest rebound at step (\d+)", to("2")),
    ("warmup_comparison", "out", rf"^warm-up +50 steps: .*final loss ({F})", scale(10)),
    ("slice_centre_lowest", "out", rf"slice: centre train loss ({F})", scale(3)),
    ("slice_edge", "out", rf"slice: .*edge mean ({F})", scale(0.3)),
    ("slice_edge", "out", rf"^test accuracy: centre {F}, lowest ({F})$", shift(0.1)),
    ("aligned_same_function", "out", rf"^head_match weights: max .*test images ({F})$", scale(1e3)),
    ("weight_matching_restarts", "out", r"^head_match weights: objectives over 3 keys \[[^\]]*\], kept key (\d+)", to("0")),
    ("weight_matching_restarts", "md", "one 310.46 (barrier 1.4889)", "one 310.46 (barrier 1.4989)"),
    ("alignment_barriers", "out", rf"^linear path, weights: train loss barrier ({F})", scale(0.5)),
    ("alignment_barriers", "out", rf"^linear path, random 1: train loss barrier ({F})", to("1.2000")),
    ("alignment_barriers", "md", "2.0145 after", "2.0245 after"),
    ("alignment_barriers", "md", "(3% lower)", "(5% lower)"),
    ("head_products_uncorrelated", "out", rf"^head_match weights: blocks/0/attn/query/kernel\[2\]: head-product distance ({F})", to("1.1000")),
    ("head_products_uncorrelated", "md", "by at most 0.0388", "by at most 0.0288"),
    ("kernel_slopes", "out", rf"^tied 1/d_k softmax attention, 1 heads: .*; slope ({F})$", shift(0.2)),
    ("kernel_slopes", "md", "slope -0.470", "slope -0.570"),
    ("kernel_heads", "out", r"^tied 1/d_k softmax attention, 4 heads: .*distance \[([^\]]*)\]", scale(1.5, 4)),
    ("kernel_heads", "md", "0.115 and 0.1124", "0.115 and 0.1224"),
]  # fmt: skip


def test_reworded_sentence_or_renamed_print_fails():
    fn, _ = CLAIMS["slice_centre_lowest"]
    with pytest.raises(LabelNotFound, match="markdown sentence"):
        fn(_mutated(NAME, "md", "is the lowest of the 441", "is the least of the 441"), False)
    with pytest.raises(LabelNotFound, match="printed label"):
        fn(_mutated(NAME, "out", r"^21x21 (slice): centre", to("plane")), False)


# the tests every claim-checked notebook runs (tests/_claim_suite.py), after the registry above
globals().update(SUITE.standard_tests(MUTATIONS))
