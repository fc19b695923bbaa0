"""notebooks/trainability.ipynb: it runs top to bottom in quick mode, every figure renders, and
every claim its text makes agrees with the numbers it printed.

The claims are read with the helpers of ``tests/test_notebook_claims.py`` (the markdown sentence
located by a regex, the printed numbers by their labels, quoted numbers equal to the printed ones
to the precision of both, :func:`agrees`); a reworded sentence or a renamed print raises
``LabelNotFound``. Each claim is a function ``claim(nb, quick)`` in ``CLAIMS``, marked with
whether it also holds at quick sizes: the committed (full-mode) notebook is checked against every
claim, the quick execution of the suite against those that hold at its sizes. ``MUTATIONS``
corrupts, for every claim, a printed number or the quoted text in a copy of the committed
notebook and checks that the claim then fails (a claim that cannot fail checks nothing).
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
    nums,
    scale,
    shift,
    to,
)

F = FLOAT
NAME = "trainability"
# phase diagram, depth sweep, batch-norm and skip sweeps (full mode only), Jacobian spectra,
# deep-network training curves and gradients (full mode only), monitor, learning-rate range (full
# mode only), sharpness (full mode only)
FIGURES = {"full": 8, "quick": 4}
LN10 = math.log(10)

SUITE = ClaimSuite(NAME, FIGURES)
CLAIMS = SUITE.claims
claim = SUITE.claim


def _sizes(nb: NB, pattern: str, quick: bool) -> tuple[str, ...]:
    """The quick or the full value(s) of ``NAME = (q...) if QUICK else (f...)`` in the code."""
    m = nb.in_code(pattern)
    g = m.groups()
    half = len(g) // 2
    return g[:half] if quick else g[half:]


# --------------------------------------------------------------------------------------- setup
claim(quick=True)(committed_in_full_mode)


# --------------------------------------------------------------------------------------- audit
_PLANTED = {"nan": [17, 404], "inf": [999], "outlier": [1200], "label_out_of_range": [77]}


@claim(quick=True)
def audit_clean_digits(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"On the clean digits it finds nothing that corrupts training, only constant"
    )
    m = nb.printed(r"^clean digits: data audit: (ok|\d+ problems?), (\d+) warnings? \(.*\): (.*)$")
    nb.check(m.group(1) == "ok", s, m.group(0), "ok (no problems)")
    found = re.findall(r"(?:train|test) x: (\d+) constant features of 64", m.group(3))
    nb.check(
        len(found) == int(m.group(2)) and all(int(k) > 0 for k in found),
        s,
        m.group(0),
        "every warning is about constant features",
    )
    s, q = nb.sentence(
        rf"extreme values \(robust z-scores: `\|x - median\| /\s+\(({F}) MAD\)` above (\d+)\)"
    )
    m = nb.printed(rf"^  \(extreme: \|robust z\| > ({F}), z = \(x - median\) / \(({F}) MAD\)")
    nb.check(
        float(m.group(1)) == float(q.group(2)) and m.group(2) == q.group(1),
        s,
        m.group(0),
        f"|z| > {q.group(2)} with the scale {q.group(1)} MAD",
    )


@claim(quick=True)
def audit_finds_the_planted_faults(nb: NB, quick: bool):
    s, _ = nb.sentence(r"the audit finds each one at the example where it\s+was planted")
    s5, q5 = nb.sentence(r"We plant (\w+) faults")
    for kind, idx in _PLANTED.items():
        m = nb.printed(rf"^{kind}: planted \[([^\]]*)\], found \[([^\]]*)\]: (equal|DIFFERENT)$")
        planted = [int(v) for v in re.findall(r"\d+", m.group(1))]
        found = [int(v) for v in re.findall(r"\d+", m.group(2))]
        nb.check(
            planted == idx and found == idx and m.group(3) == "equal", s, m.group(0), str(idx)
        )
    every = nb.printed(r"^every offending example: \[([^\]]*)\]$")
    got = [int(v) for v in re.findall(r"\d+", every.group(1))]
    want = sorted(i for v in _PLANTED.values() for i in v)
    nb.check(got == want, s, every.group(0), f"exactly {want} (nothing else)")
    words = {"four": 4, "five": 5, "six": 6}
    nb.check(
        len(got) == words.get(q5.group(1)), s5, every.group(0), f"{q5.group(1)} faulty examples"
    )
    head = nb.printed(r"^data audit: (\d+) problems, (\d+) warnings? \(data 1437 examples\)")
    nb.check(int(head.group(1)) == 4, s, head.group(0), "4 problems (NaN, Inf, extreme, label)")


# ---------------------------------------------------------------------------------- mean field
_MF = re.compile(
    rf"^MeanFieldResult\((\w+), sigma_w2=({F}), sigma_b2=({F}): (\w+), (\w+), "
    r"q_star=([^,]+), chi_1=([^,]+), xi_q=([^,]+), xi_c=([^,]+), c_star=([^)]+)\)$",
    re.M,
)


def _mf(nb: NB) -> dict[tuple[str, float, float], dict]:
    rows = {}
    for m in _MF.finditer(nb.out):
        rows[(m.group(1), float(m.group(2)), float(m.group(3)))] = {
            "status": m.group(4),
            "phase": m.group(5),
            "q_star": Num(m.group(6)) if m.group(6) != "nan" else math.nan,
            "chi_1": Num(m.group(7)),
            "xi_c": m.group(9),
            "line": m.group(0),
        }
    if not rows:
        raise LabelNotFound(f"{nb.name}: no MeanFieldResult lines in the outputs")
    return rows


@claim(quick=True)
def tanh_critical_point(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"tanh with `sigma_b2 = ({F})` is critical at `sigma_w2 = ({F})`, where `q\*` is "
        rf"({F}) and\s+`chi_1` is 1 to ({F}); at `sigma_w2 = ({F})` it is ordered and at "
        rf"({F}) chaotic"
    )
    mf = _mf(nb)
    sb2, sw2 = float(q.group(1)), float(q.group(2))
    crit = mf[("tanh", sw2, sb2)]
    nb.check(agrees(Num(q.group(3)), crit["q_star"]), s, crit["line"], f"q* {q.group(3)}")
    nb.check(
        abs(crit["chi_1"] - 1) <= float(q.group(4)),
        s,
        crit["line"],
        f"|chi_1 - 1| <= {q.group(4)}",
    )
    lo, hi = mf[("tanh", float(q.group(5)), sb2)], mf[("tanh", float(q.group(6)), sb2)]
    nb.check(lo["phase"] == "ordered" and lo["chi_1"] < 1, s, lo["line"], "ordered, chi_1 < 1")
    nb.check(hi["phase"] == "chaotic" and hi["chi_1"] > 1, s, hi["line"], "chaotic, chi_1 > 1")


@claim(quick=True)
def relu_only_a_critical_point(nb: NB, quick: bool):
    s, _ = nb.sentence(r"ReLU has no order-to-chaos line, only the critical point")
    mf = _mf(nb)
    relu = {k: v for k, v in mf.items() if k[0] == "relu"}
    nb.check(len(relu) == 3, s, str(list(relu)), "three ReLU cases")
    for (_, sw2, _), v in relu.items():  # chi_1 = sigma_w2 / 2 whatever q
        nb.check(agrees(v["chi_1"], Num(repr(sw2 / 2))), s, v["line"], f"chi_1 = {sw2 / 2}")
    s, _ = nb.sentence(r"LeCun's `sigma_w2 = 1` halves the squared gradient at every layer")
    v = relu[("relu", 1.0, 0.0)]
    nb.check(float(v["chi_1"]) == 0.5 and v["phase"] == "ordered", s, v["line"], "chi_1 = 0.5")
    v = relu[("relu", 2.0, 0.0)]
    nb.check(
        v["status"] == "every_q_fixed" and v["phase"] == "critical" and float(v["chi_1"]) == 1,
        s,
        v["line"],
        "every q fixed, critical, chi_1 = 1",
    )
    v = relu[("relu", 2.5, 0.0)]
    s, _ = nb.sentence(
        r"above 2 there is no finite fixed point and the signal grows without bound"
    )
    nb.check(v["status"] == "no_fixed_point", s, v["line"], "no_fixed_point")


@claim(quick=True)
def sigmoid_vanishing_gradient(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"`chi_1 <= sigma_w2 / 16`: at `sigma_w2 = 1` it\s+is ({F}), and the squared gradient "
        r"shrinks about (\d+)-fold per layer"
    )
    mf = _mf(nb)
    sig = {k: v for k, v in mf.items() if k[0] == "sigmoid"}
    for (_, sw2, _), v in sig.items():
        nb.check(v["chi_1"] <= sw2 / 16, s, v["line"], f"chi_1 <= {sw2} / 16")
    v = sig[("sigmoid", 1.0, 0.0)]
    nb.check(agrees(Num(q.group(1)), v["chi_1"]), s, v["line"], f"chi_1 {q.group(1)}")
    nb.check(round(1 / v["chi_1"]) == int(q.group(2)), s, v["line"], f"1/chi_1 about {q.group(2)}")
    s, q = nb.sentence(
        rf"Even `sigma_w2 = 16` stays ordered \(`chi_1` ({F})\).*pushing `q\*` \(({F})\)"
    )
    v = sig[("sigmoid", 16.0, 0.0)]
    nb.check(
        v["phase"] == "ordered"
        and agrees(Num(q.group(1)), v["chi_1"])
        and agrees(Num(q.group(2)), v["q_star"]),
        s,
        v["line"],
        f"ordered, chi_1 {q.group(1)}, q* {q.group(2)}",
    )


@claim(quick=True)
def phase_diagram_critical_line(nb: NB, quick: bool):
    s, _ = nb.sentence(r"the critical line found by root finding")
    m = nb.printed(
        r"^PhaseDiagramResult\(tanh, grid (\d+) x (\d+) \(sigma_b2 x sigma_w2\), critical line "
        r"at (\d+) of (\d+) sigma_b2 values\)$"
    )
    nb.check(
        m.group(3) == m.group(4) == m.group(1), s, m.group(0), "a critical point on every row"
    )


# ------------------------------------------------------------------ trained networks on the map
_RUN = re.compile(
    rf"^sigma_w2 ({F}) +sigma_b2 ({F}) +chi_1 ({F}) chi_1\^(\d+) ({F}) +xi_c ({F}) +final "
    rf"train loss by seed ((?:{F} ?)+) median ({F})$",
    re.M,
)


def _runs(nb: NB) -> list[dict]:
    rows = [
        {
            "sw2": float(m.group(1)),
            "sb2": float(m.group(2)),
            "chi": Num(m.group(3)),
            "depth": int(m.group(4)),
            "chiL": Num(m.group(5), sig=3),
            "xi_c": Num(m.group(6), sig=3),
            "losses": [Num(v) for v in m.group(7).split()],
            "loss": Num(m.group(8)),  # the median over the seeds
            "line": m.group(0),
        }
        for m in _RUN.finditer(nb.out)
    ]
    if not rows:
        raise LabelNotFound(f"{nb.name}: no trained-network rows in the outputs")
    return rows


@claim()  # quick mode skips it (the quick run's time)
def trained_networks_setup(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"deep tanh networks \((\d+) layers of width (\d+), the variances of the grid points "
        rf"below\)\s+trained with plain SGD \(learning rate ({F}), (\d+) steps of (\d+) examples\)"
    )
    depth, width, steps = _sizes(
        nb,
        r"DEPTH_PD, WIDTH_PD, STEPS_PD = \((\d+), (\d+), (\d+)\) if QUICK else "
        r"\((\d+), (\d+), (\d+)\)",
        quick,
    )
    code = nb.in_code(
        rf"optimizer=\"sgd\", learning_rate=({F}), num_steps=STEPS_PD,\s+batch_size=(\d+)"
    )
    if not quick:
        nb.check(
            (depth, width, steps) == q.group(1, 2, 4),
            s,
            f"DEPTH_PD, WIDTH_PD, STEPS_PD = {depth}, {width}, {steps}",
            str(q.groups()),
        )
    nb.check(code.group(1, 2) == q.group(3, 5), s, code.group(0), "the rate and batch size")
    rows = _runs(nb)
    sw2s = [
        float(v)
        for v in re.findall(
            F, _sizes(nb, r"SW2_RUNS = (\[.*?\]) if QUICK else (\[.*?\])", quick)[0]
        )
    ]
    sb2s = [
        float(v)
        for v in re.findall(
            F, _sizes(nb, r"SB2_RUNS = (\[.*?\]) if QUICK else (\[.*?\])", quick)[0]
        )
    ]
    nb.check(
        sorted((r["sb2"], r["sw2"]) for r in rows) == sorted((b, w) for b in sb2s for w in sw2s)
        and all(r["depth"] == int(depth) for r in rows),
        s,
        f"{len(rows)} rows",
        f"every (sigma_w2, sigma_b2) of {sw2s} x {sb2s}, depth {depth}",
    )
    seeds = _sizes(nb, r"SEEDS_PD = (\([\d, ]*\)) if QUICK else (\([\d, ]*\))", quick)[0]
    n_seeds = len(re.findall(r"\d+", seeds))
    if not quick:
        s2, _ = nb.sentence(r"three seeds each \(the\s+weights and the data order\)")
        nb.check(n_seeds == 3, s2, seeds, "three seeds")
    for r in rows:  # one loss per seed, the median of them printed
        med = sorted(r["losses"])[len(r["losses"]) // 2]
        nb.check(
            len(r["losses"]) == n_seeds and agrees(r["loss"], med), s, r["line"], "the median"
        )
    for r in rows:  # the printed chi_1^L is chi_1 to the depth (to the rounding of chi_1)
        lo = (r["chi"] - r["chi"].h) ** r["depth"]
        hi = (r["chi"] + r["chi"].h) ** r["depth"]
        nb.check(lo - r["chiL"].h <= r["chiL"] <= hi + r["chiL"].h, s, r["line"], "chi_1^L")


@claim()
def trainable_band_along_the_line(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"The (\w+) networks with `chi_1`\s+between ({F}) and ({F}) reach a median training loss "
        rf"of ({F}) or less; the (\w+) further from\s+the line on either side \(`chi_1` at most "
        rf"({F}) or at least ({F})\) stay at a median of ({F}) or\s+more, (\w+) of them within "
        rf"({F}) of `ln 10 = ({F})`"
    )
    words = {"eight": 8, "thirteen": 13, "seven": 7, "nine": 9, "twelve": 12, "fourteen": 14}
    rows = _runs(nb)
    band_lo, band_hi, loss_ok = Num(q.group(2)), Num(q.group(3)), Num(q.group(4))
    out_lo, out_hi, loss_bad = Num(q.group(6)), Num(q.group(7)), Num(q.group(8))
    inside = [r for r in rows if band_lo - band_lo.h <= r["chi"] <= band_hi + band_hi.h]
    outside = [r for r in rows if r not in inside]
    nb.check(
        len(inside) == words.get(q.group(1)) and len(outside) == words.get(q.group(5)),
        s,
        f"{len(inside)} inside, {len(outside)} outside",
        f"{q.group(1)} and {q.group(5)}",
    )
    nb.check(
        agrees(min(r["chi"] for r in inside), band_lo)
        and agrees(max(r["chi"] for r in inside), band_hi),
        s,
        str([r["chi"] for r in inside]),
        "the band's ends are its extreme networks",
    )
    nb.check(
        all(r["loss"] <= loss_ok + loss_ok.h for r in inside)
        and agrees(max(r["loss"] for r in inside), loss_ok),
        s,
        str([r["loss"] for r in inside]),
        f"every loss <= {loss_ok!r} (the largest)",
    )
    nb.check(
        all(r["chi"] <= out_lo + out_lo.h or r["chi"] >= out_hi - out_hi.h for r in outside)
        and agrees(max(r["chi"] for r in outside if r["chi"] < 1), out_lo)
        and agrees(min(r["chi"] for r in outside if r["chi"] > 1), out_hi),
        s,
        str([r["chi"] for r in outside]),
        f"chi_1 <= {out_lo!r} or >= {out_hi!r}",
    )
    nb.check(
        all(r["loss"] >= loss_bad - loss_bad.h for r in outside)
        and agrees(min(r["loss"] for r in outside), loss_bad),
        s,
        str([r["loss"] for r in outside]),
        f"every loss >= {loss_bad!r} (the smallest)",
    )
    near = [r for r in outside if abs(r["loss"] - LN10) < float(q.group(10))]
    nb.check(
        len(near) == words.get(q.group(9)) and agrees(Num(q.group(11)), Num(repr(LN10))),
        s,
        str([r["loss"] for r in outside]),
        f"{q.group(9)} within {q.group(10)} of ln 10",
    )
    # the gradient factor separates them
    s, q = nb.sentence(
        rf"between\s+({F}) and ({F}) for the networks that train, below ({F}) \(vanishing\) or "
        rf"above ({F}) \(exploding\) for\s+those that do not"
    )
    cl = [r["chiL"] for r in inside]
    nb.check(
        agrees(min(cl), Num(q.group(1))) and agrees(max(cl), Num(q.group(2))),
        s,
        str(cl),
        f"from {q.group(1)} to {q.group(2)}",
    )
    nb.check(
        all(r["chiL"] < float(q.group(3)) or r["chiL"] > float(q.group(4)) for r in outside),
        s,
        str([r["chiL"] for r in outside]),
        f"below {q.group(3)} or above {q.group(4)}",
    )


@claim()
def single_runs_scatter(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"the three seeds of the network at `sigma_w2 =\s+({F}), sigma_b2 = ({F})` end at ({F}), "
        rf"({F}) and ({F}), and one of the three at `sigma_w2 = ({F}), sigma_b2 =\s+({F})` fails "
        rf"\(({F})\) where the other two train"
    )
    rows = {(r["sw2"], r["sb2"]): r for r in _runs(nb)}
    a = rows[(float(q.group(1)), float(q.group(2)))]
    nb.check(
        all(agrees(x, Num(y)) for x, y in zip(a["losses"], q.group(3, 4, 5)))
        and max(a["losses"]) > 1 > a["loss"],
        s,
        a["line"],
        f"seeds {q.group(3, 4, 5)}, one above 1, the median below",
    )
    b = rows[(float(q.group(6)), float(q.group(7)))]
    fails = [x for x in b["losses"] if x > 1]
    nb.check(
        len(fails) == 1 and agrees(fails[0], Num(q.group(8))) and b["loss"] < 1,
        s,
        b["line"],
        f"one seed fails ({q.group(8)}), two train",
    )


@claim()
def depth_scale_sorts_but_not_by_its_bound(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"every network that trains has `xi_c` of ({F}) or\s+more, every one that fails ({F}) or "
        rf"less\), but not by the rough bound of about `(\d+) xi_c`\s+\(Schoenholz et al\. 2017\): "
        rf"the chaotic network at `sigma_w2 = ({F}), sigma_b2 = ({F})` has `6 xi_c`\s+= ({F}), more "
        rf"than its (\d+) layers, and still fails"
    )
    rows = _runs(nb)
    train = [r for r in rows if r["loss"] < 1]
    fail = [r for r in rows if r["loss"] >= 1]
    nb.check(
        agrees(min(r["xi_c"] for r in train), Num(q.group(1)))
        and agrees(max(r["xi_c"] for r in fail), Num(q.group(2)))
        and min(r["xi_c"] for r in train) > max(r["xi_c"] for r in fail),
        s,
        str([(r["sw2"], r["sb2"], r["xi_c"], r["loss"]) for r in rows]),
        "the depth scales of the trained medians above those of the failed",
    )
    k = int(q.group(3))
    bad = {(r["sw2"], r["sb2"]): r for r in rows}[(float(q.group(4)), float(q.group(5)))]
    nb.check(
        bad["chi"] > 1
        and bad["loss"] > 1
        and agrees(Num(q.group(6)), Num(repr(k * float(bad["xi_c"]))))
        and k * float(bad["xi_c"]) > int(q.group(7)) == bad["depth"],
        s,
        bad["line"],
        f"chaotic, fails, {k} xi_c = {q.group(6)} > depth {q.group(7)}",
    )
    s2, q2 = nb.sentence(rf"the size of\s+the gradients \(its `chi_1\^32` is ({F})\)")
    nb.check(agrees(bad["chiL"], Num(q2.group(1))), s2, bad["line"], f"chi_1^32 {q2.group(1)}")


# ---------------------------------------------------------------- the deep network, five ways
_VARIANTS = ("plain, LeCun", "plain, He", "batch norm", "skips", "batch norm + skips")


def _deep(nb: NB) -> dict[str, dict]:
    out = {}
    for name in _VARIANTS:
        m = nb.printed(
            rf"^{re.escape(name)}: +loss at step 0 ({F}); TrainResult\(steps=(\d+), "
            rf"train_loss=({F}), train_accuracy=({F}), test_loss=({F}), test_accuracy=({F}),"
        )
        out[name] = {
            "loss0": Num(m.group(1), sig=4),
            "steps": int(m.group(2)),
            "loss": Num(m.group(3)),
            "acc": Num(m.group(4)),
            "test_acc": Num(m.group(6)),
            "line": m.group(0),
        }
    return out


_GRAD = re.compile(
    rf"^ +first update: hidden-layer gradient norms from ({F}) to ({F}); layer 1 ({F}), layer "
    rf"(\d+) ({F}), ratio ({F})$",
    re.M,
)


def _grads(nb: NB) -> dict[str, dict]:
    found = list(_GRAD.finditer(nb.out))
    if len(found) != len(_VARIANTS):
        raise LabelNotFound(f"{nb.name}: {len(found)} first-update gradient lines, want 5")
    return {
        name: {
            "min": Num(m.group(1), sig=3),
            "max": Num(m.group(2), sig=3),
            "first": Num(m.group(3), sig=3),
            "depth": int(m.group(4)),
            "last": Num(m.group(5), sig=3),
            "ratio": Num(m.group(6), sig=3),
            "line": m.group(0),
        }
        for name, m in zip(_VARIANTS, found)
    }


@claim()
def deep_network_gradients(nb: NB, quick: bool):
    g = _grads(nb)
    s, q = nb.sentence(
        rf"from ({F}) to\s+({F}) at the first update, about `2\^-(\d+) = ({F})`: the forward "
        r"signal shrinks by `2\^-1/2` per\s+layer"
    )
    v = g["plain, LeCun"]
    nb.check(
        agrees(Num(q.group(1)), v["min"]) and agrees(Num(q.group(2)), v["max"]),
        s,
        v["line"],
        f"from {q.group(1)} to {q.group(2)}",
    )
    half = int(q.group(3))
    nb.check(
        half == v["depth"] // 2 and agrees(Num(q.group(4)), Num(repr(2.0**-half), sig=2)),
        s,
        v["line"],
        f"2^-{v['depth'] // 2}",
    )
    # "the same in every layer", "about 2^-20": every layer within a factor 2 of 2^-(L/2)
    nb.check(
        2.0**-half / 2 <= v["min"] and v["max"] <= 2 * 2.0**-half,
        s,
        v["line"],
        f"within a factor 2 of 2^-{half}",
    )
    s, q = nb.sentence(
        rf"it makes the gradients\s+explode going backwards, ({F}) at the first hidden layer "
        rf"against ({F}) at the last"
    )
    v = g["batch norm"]
    nb.check(
        agrees(Num(q.group(1)), v["first"]) and agrees(Num(q.group(2)), v["last"]),
        s,
        v["line"],
        str(q.groups()),
    )
    nb.check(
        v["ratio"] > 100 and v["max"] == v["first"], s, v["line"], "largest at layer 1, > 100x"
    )
    for r in g.values():  # the printed ratio is layer 1 / layer L
        nb.check(
            abs(r["ratio"] - r["first"] / r["last"])
            <= r["ratio"].h + (r["first"].h + r["first"] * r["last"].h / r["last"]) / r["last"],
            s,
            r["line"],
            "ratio = layer 1 / layer L",
        )


@claim()
def deep_network_setup(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"A (\d+)-layer ReLU network of width (\d+) .* trained\s+with Adam \(learning rate "
        rf"({F}), (\d+) steps of (\d+) examples\) in five variants"
    )
    depth, width, steps = nb.in_code(r"(?m)^DEPTH, WIDTH, STEPS = (\d+), (\d+), (\d+)$").groups()
    nb.check(
        (depth, width, steps) == q.group(1, 2, 4),
        s,
        f"{depth}, {width}, {steps}",
        str(q.groups()),
    )
    code = nb.in_code(
        rf"optimizer=\"adam\", learning_rate=({F}),\s+num_steps=STEPS, batch_size=(\d+)"
    )
    nb.check(code.group(1, 2) == q.group(3, 5), s, code.group(0), "the rate and batch size")
    d = _deep(nb)
    nb.check(all(v["steps"] == int(steps) for v in d.values()), s, str(d), f"{steps} steps each")
    m = nb.printed(rf"^ln 10 = ({F})$")
    nb.check(agrees(Num(m.group(1)), Num(repr(LN10))), s, m.group(0), "ln 10")


@claim()
def batch_norm_is_the_identity_at_step_0(nb: NB, quick: bool):
    s, _ = nb.sentence(r"so the batch-norm-and-skips network is\s+then the skips-only network")
    d = _deep(nb)
    a, b = d["batch norm + skips"]["loss0"], d["skips"]["loss0"]
    # batch norm in evaluation mode with running mean 0 and variance 1 divides by sqrt(1 + eps)
    # (eps = 1e-5) per layer: (1 + 1e-5)^(-depth / 2), 2e-4 relative at depth 40; 1% is ample
    nb.check(abs(a - b) <= 0.01 * abs(b) + a.h + b.h, s, f"{a!r} vs {b!r}", "equal within 1%")
    a, b = d["batch norm"]["loss0"], d["plain, LeCun"]["loss0"]
    nb.check(abs(a - b) <= 0.01 * abs(b) + a.h + b.h, s, f"{a!r} vs {b!r}", "equal within 1%")


@claim()
def deep_network_outcomes(nb: NB, quick: bool):
    d = _deep(nb)
    s, q = nb.sentence(
        rf"the plain network never leaves\s+`ln 10`: its final training loss is ({F}) and its "
        rf"test accuracy ({F}), chance"
    )
    v = d["plain, LeCun"]
    nb.check(
        agrees(Num(q.group(1)), v["loss"]) and agrees(Num(q.group(2)), v["test_acc"]),
        s,
        v["line"],
        str(q.groups()),
    )
    # "never leaves ln 10": within 1e-3 of it at the start and at the end; chance: 1/10 of the
    # 360 test images within two binomial standard deviations (0.032)
    nb.check(abs(v["loss"] - LN10) < 1e-3 and abs(v["loss0"] - LN10) < 1e-3, s, v["line"], "ln 10")
    nb.check(abs(v["test_acc"] - 0.1) < 0.032, s, v["line"], "chance accuracy")
    s, q = nb.sentence(rf"a factor\s+`2\^-40`, about ({F}), over the network")
    nb.check(agrees(Num(q.group(1)), Num(repr(2.0**-40), sig=1)), s, q.group(0), "2^-40")
    s, q = nb.sentence(rf"Batch norm\s+alone does not rescue it \(({F})\)")
    v = d["batch norm"]
    nb.check(agrees(Num(q.group(1)), v["loss"]) and v["loss"] > LN10 - 0.01, s, v["line"], "stuck")
    s, q = nb.sentence(rf"He's initialisation \(({F})\) and skips alone \(({F})\) train")
    he, sk = d["plain, He"], d["skips"]
    nb.check(
        agrees(Num(q.group(1)), he["loss"]) and agrees(Num(q.group(2)), sk["loss"]),
        s,
        f"{he['line']}; {sk['line']}",
        str(q.groups()),
    )
    nb.check(he["loss"] < 1 and sk["loss"] < 1, s, "", "below 1: they train")
    s, q = nb.sentence(
        rf"With batch norm and skips together the network trains to ({F}) \(training accuracy\s+"
        rf"({F}), test accuracy ({F})\)"
    )
    v = d["batch norm + skips"]
    nb.check(
        agrees(Num(q.group(1)), v["loss"])
        and agrees(Num(q.group(2)), v["acc"])
        and agrees(Num(q.group(3)), v["test_acc"]),
        s,
        v["line"],
        str(q.groups()),
    )
    nb.check(
        all(v["loss"] < 0.1 * o["loss"] for k, o in d.items() if k != "batch norm + skips"),
        s,
        str({k: o["loss"] for k, o in d.items()}),
        "ten times lower than every other variant",
    )
    s, q = nb.sentence(r"grown the signal to a loss of about (\d+)")
    v = d["skips"]
    nb.check(abs(v["loss0"] / float(q.group(1)) - 1) < 0.1, s, v["line"], f"about {q.group(1)}")


@claim(quick=True)
def train_refuses_the_corrupted_copy(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"`landscape\.train` checks its data too, and refuses the copy\s+\(the (\d+) NaN values: a "
        r"whole example of (\d+) pixels and one more, and the Inf\)"
    )
    m = nb.printed(
        r"^train refuses it: landscape\.train: data must be finite; found (\d+) NaN and (\d+) Inf "
        r"values at leaf 'x'\.$"
    )
    nan = nb.printed(r"^  error    x: NaN in 2 examples \((\d+) values\): examples 17, 404$")
    inf = nb.printed(r"^  error    x: Inf in 1 example \((\d+) values\): example 999$")
    nb.check(
        m.group(1) == nan.group(1) == q.group(1) and int(q.group(1)) == int(q.group(2)) + 1,
        s,
        f"{m.group(0)}; {nan.group(0)}",
        f"{q.group(1)} NaN values = {q.group(2)} + 1",
    )
    nb.check(m.group(2) == inf.group(1) == "1", s, f"{m.group(0)}; {inf.group(0)}", "one Inf")


# ------------------------------------------------------------------------------- the monitor
_DIV = (
    r"^diverged at step (\d+): report step (\d+), stage '(\w+)', layer (\S+), kind (\w+), "
    r"examples \[([^\]]*)\]; blank image in the failing batch: (True|False); last finite "
    r"parameters finite: (True|False)$"
)


@claim(quick=True)
def monitor_catches_the_nan_batch(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"names the step, says that\s+the batch held NaN at example (\d+) in the input the loss "
        r"computed from it"
    )
    blank = int(nb.in_code(r"BLANK = (\d+)").group(1))
    m = nb.printed(_DIV)
    nb.check(
        m.group(1) == m.group(2) and m.group(3) == "input" and m.group(4) == "None",
        s,
        m.group(0),
        "the same step; stage 'input' (a value computed from the batch alone), no layer",
    )
    nb.check(
        m.group(5) == "NaN" and m.group(6) == str(blank) == q.group(1) and m.group(7) == "True",
        s,
        m.group(0),
        f"NaN at example {blank}, in the failing batch",
    )
    s, _ = nb.sentence(r"keeps the last finite parameters and raises `TrainingDivergedError`")
    nb.check(m.group(8) == "True", s, m.group(0), "every leaf of the kept parameters finite")
    every = int(nb.in_code(r"training_monitor\(every=(\d+)\)").group(1))
    r = nb.printed(
        r"^MonitorResult\((\d+) records \(steps 1\.\.(\d+)\), .*; diverged: step (\d+): batch "
        r"held NaN at examples \[(\d+)\]"
    )
    step = int(m.group(1))
    n, last = int(r.group(1)), int(r.group(2))
    # records at updates 1, 1 + every, ... before the failing one
    nb.check(
        int(r.group(3)) == step
        and int(r.group(4)) == blank
        and last < step
        and n == (step - 2) // every + 1
        and last == 1 + (n - 1) * every,
        s,
        r.group(0),
        f"records every {every} steps up to the failing step {step}",
    )


@claim(quick=True)
def diagnose_step_finds_the_nan_in_the_batch(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"on the\s+first (\d+) examples of the corrupted copy of section 1 it finds the NaN in the "
        r"batch itself, at\s+example (\d+)"
    )
    m = nb.printed(
        r"^the step: batch held NaN at examples \[([^\]]*)\] \(field 'x'\); first non-finite value "
        r"\(NaN\) in the batch: batch\['x'\]\.$"
    )
    n = int(nb.in_code(r"batch = \{\"x\": x\[:(\d+)\], \"y\": y\[:(\d+)\]\}").group(1))
    # the corrupted copy's NaN examples below n (17 and 404 hold NaN: only 17 is in the first 64)
    nb.check(
        n == int(q.group(1)) and m.group(1) == q.group(2) == "17",
        s,
        m.group(0),
        f"example {q.group(2)} of the first {q.group(1)}",
    )


# ---------------------------------------------------------------------- the learning-rate range
_LRR = (
    rf"^learning-rate range \(sgd, (\d+) full-batch steps, (\d+) rates {F}\.\.{F}\): (\d+) "
    rf"diverged, largest not diverged ({F}), lowest loss at ({F}); initial-curvature limit "
    rf"({F}) \(2 / lambda_max\)$"
)
_LIMIT = rf"^  limit ({F}) = 2 / lambda_max, lambda_max = ({F}): the limit of the quadratic model"
_LR_ROW = re.compile(rf"^  lr ({F}) +loss after \d+ steps (\S+) *( diverged)?$", re.M)


def _lr_rows(nb: NB) -> list[tuple[Num, float, bool]]:
    rows = [
        (Num(m.group(1), sig=4), float(m.group(2)), bool(m.group(3)))
        for m in _LR_ROW.finditer(nb.out)
    ]
    if not rows:
        raise LabelNotFound(f"{nb.name}: no learning-rate rows")
    return rows


@claim()  # quick mode skips it (the quick run's time)
def limit_is_two_over_lambda_max(nb: NB, quick: bool):
    s, _ = nb.sentence(r"draws the stability limit of the initial curvature: `2 /\s+lambda_max`")
    m = nb.printed(_LIMIT)
    lim, lam = Num(m.group(1), sig=6), Num(m.group(2), sig=6)
    nb.check(
        abs(lim - 2 / lam) <= lim.h + 2 * lam.h / lam**2, s, m.group(0), "limit = 2 / lambda_max"
    )
    one = nb.printed(_LRR)
    nb.check(agrees(Num(one.group(6), sig=4), lim), s, one.group(0), "the same limit")
    rows = _lr_rows(nb)
    nb.check(int(one.group(2)) == len(rows), s, one.group(0), f"{len(rows)} rates")
    nb.check(
        int(one.group(3)) == sum(d for _, _, d in rows), s, one.group(0), "the diverged count"
    )


@claim()
def learning_rate_range_quoted(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"Here `lambda_max` is ({F}) at initialisation, so the limit is `2 / ({F}) = ({F})`\. "
        rf"No rate up to\s+({F}) \(({F}) times the limit\) diverged, the rates from ({F}) up did, "
        rf"and the lowest loss after (\d+)\s+steps, ({F}), is at ({F}), ({F}) times the limit"
    )
    m = nb.printed(_LIMIT)
    lim, lam = Num(m.group(1), sig=6), Num(m.group(2), sig=6)
    nb.check(
        agrees(Num(q.group(1)), lam)
        and agrees(Num(q.group(2)), lam)
        and agrees(Num(q.group(3)), lim),
        s,
        m.group(0),
        "lambda_max and the limit",
    )
    rows = _lr_rows(nb)
    ok = [lr for lr, _, d in rows if not d]
    bad = [lr for lr, _, d in rows if d]
    nb.check(
        agrees(Num(q.group(4)), max(ok))
        and min(bad) > max(ok)
        and agrees(Num(q.group(6)), min(bad)),
        s,
        str(rows),
        f"not diverged up to {q.group(4)}, diverged from {q.group(6)}",
    )
    nb.check(
        abs(max(ok) / lim - float(q.group(5))) <= 0.05 + max(ok).h / lim,
        s,
        str(max(ok)),
        f"{q.group(5)} x the limit",
    )
    one = nb.printed(_LRR)
    best = Num(one.group(5), sig=4)
    row = next(r for r in rows if agrees(r[0], best))
    nb.check(
        one.group(1) == q.group(7)
        and agrees(Num(q.group(9)), best)
        and agrees(Num(q.group(8)), Num(f"{row[1]:.6g}", sig=6)),
        s,
        one.group(0),
        f"best {q.group(9)} with loss {q.group(8)} after {q.group(7)} steps",
    )
    ratio = nb.printed(rf"^best rate / limit = ({F})$")
    nb.check(
        agrees(Num(q.group(10)), Num(ratio.group(1))) and float(ratio.group(1)) > 1,
        s,
        ratio.group(0),
        f"{q.group(10)} (above the limit)",
    )
    nb.check(
        abs(best / lim - float(ratio.group(1))) <= Num(ratio.group(1)).h + best.h / lim,
        s,
        ratio.group(0),
        "best / limit",
    )
    s, _ = nb.sentence(r"Over its first steps the loss at that rate\s+does not fall monotonically")
    m = nb.printed(rf"^lr ({F}): loss over the first 8 steps \[([^\]]*)\]$")
    v = nums(m.group(2))
    nb.check(
        agrees(Num(m.group(1), sig=4), best) and any(b > a for a, b in zip(v, v[1:])),
        s,
        m.group(0),
        "a rise somewhere in the first 8 steps",
    )
    s, q = nb.sentence(
        r"The network is the 64-(\d+)-(\d+)-10 ReLU MLP of `make_model` on all (\d+)"
    )
    hidden = nb.in_code(r"hidden=\(16,\) if QUICK else \((\d+), (\d+)\)")
    d = nb.printed(r"Dataset\(digits: train \((\d+), 64\)")
    nb.check(hidden.groups() == q.group(1, 2) and d.group(1) == q.group(3), s, hidden.group(0), "")


_SH = re.compile(
    rf"^lr ({F}) \(({F}) x the limit, 2/lr = ({F})\): sharpness ({F}) at step 0, largest ({F}) "
    rf"at step (\d+), ({F}) at step (\d+); first below 2/lr at step (\d+|None); final train "
    rf"loss ({F})$",
    re.M,
)


def _sharp(nb: NB) -> list[dict]:
    rows = [
        {
            "lr": Num(m.group(1), sig=4),
            "x": Num(m.group(2), sig=3),
            "two_over_lr": Num(m.group(3), sig=4),
            "s0": Num(m.group(4), sig=4),
            "smax": Num(m.group(5), sig=4),
            "smax_step": int(m.group(6)),
            "send": Num(m.group(7), sig=4),
            "below": None if m.group(9) == "None" else int(m.group(9)),
            "loss": Num(m.group(10), sig=4),
            "line": m.group(0),
        }
        for m in _SH.finditer(nb.out)
    ]
    if len(rows) != 2:
        raise LabelNotFound(f"{nb.name}: want two sharpness lines, found {len(rows)}")
    return rows


@claim()
def sharpness_runs_setup(nb: NB, quick: bool):
    s, _ = nb.sentence(r"at half the limit and at the best\s+rate")
    below, above = _sharp(nb)
    one = nb.printed(_LRR)
    lim, best = Num(one.group(6), sig=4), Num(one.group(5), sig=4)
    nb.check(
        abs(below["lr"] - 0.5 * lim) <= below["lr"].h + 0.5 * lim.h and agrees(above["lr"], best),
        s,
        f"{below['line']}; {above['line']}",
        "half the limit; the best rate",
    )
    for r in (below, above):
        nb.check(
            abs(r["two_over_lr"] - 2 / r["lr"])
            <= r["two_over_lr"].h + 2 * r["lr"].h / r["lr"] ** 2,
            s,
            r["line"],
            "2/lr",
        )
        m = nb.printed(_LIMIT)
        nb.check(agrees(r["s0"], Num(m.group(2), sig=6)), s, r["line"], "lambda_max at step 0")


@claim()
def progressive_sharpening_and_catapult(nb: NB, quick: bool):
    below, above = _sharp(nb)
    s, q = nb.sentence(
        rf"At half the limit the sharpness first rises, from ({F}) to ({F}) at step (\d+) "
        rf"\(progressive\s+sharpening\), then falls to ({F}) as the loss goes to zero .*it stays "
        rf"far below `2 / lr = ({F})`"
    )
    r = below
    nb.check(
        agrees(Num(q.group(1)), r["s0"])
        and agrees(Num(q.group(2)), r["smax"])
        and int(q.group(3)) == r["smax_step"]
        and agrees(Num(q.group(4)), r["send"])
        and agrees(Num(q.group(5)), r["two_over_lr"]),
        s,
        r["line"],
        str(q.groups()),
    )
    nb.check(
        r["s0"] < r["smax"] and r["send"] < r["smax"] and r["smax"] < 0.75 * r["two_over_lr"],
        s,
        r["line"],
        "rises, falls, stays below 3/4 of 2/lr",
    )
    s, q = nb.sentence(
        rf"At ({F}) it falls from ({F}) to below `2 / lr =\s+({F})` by step (\d+) and ends at ({F})"
    )
    r = above
    nb.check(
        agrees(Num(q.group(1), sig=3), r["lr"])
        and agrees(Num(q.group(2)), r["s0"])
        and agrees(Num(q.group(3)), r["two_over_lr"])
        and r["below"] == int(q.group(4))
        and agrees(Num(q.group(5)), r["send"]),
        s,
        r["line"],
        str(q.groups()),
    )
    nb.check(
        r["s0"] > r["two_over_lr"] and r["send"] < r["two_over_lr"] and r["smax"] == r["s0"],
        s,
        r["line"],
        "starts above 2/lr and falls below it",
    )
    s, _ = nb.sentence(r"to a lower loss than\s+any rate below the limit reached")
    lim = Num(nb.printed(_LIMIT).group(1), sig=6)
    rows = _lr_rows(nb)
    sub = [loss for lr, loss, _ in rows if lr < lim]
    nb.check(r["loss"] < min(sub), s, f"{r['line']}; below the limit: {sub}", "lower than all")


# ------------------------------------------------------------------------------ depth sweep
_SW = re.compile(
    r"^(relu|tanh|sigmoid|gelu)\s+(\w+)\s+q at the last hidden layer by depth \[([^\]]*)\]; "
    rf"depth (\d+): q from layer 2 to (\d+) x({F}) per layer; gradient norm layer 1 ({F}), "
    rf"layer (\d+) ({F}), layer (\d+) ({F}) \(x({F}) per layer back from (\d+) to (\d+)\)$",
    re.M,
)


def _sweep(nb: NB) -> dict[tuple[str, str], dict]:
    rows = {}
    for m in _SW.finditer(nb.out):
        rows[(m.group(1), m.group(2))] = {
            "last_q": nums(m.group(3)),
            "q_rate": Num(m.group(6)),
            "g1": Num(m.group(7)),
            "g_mid": Num(m.group(9)),
            "g_last": Num(m.group(11)),
            "g_rate": Num(m.group(12)),
            "line": m.group(0),
        }
    if not rows:
        raise LabelNotFound(f"{nb.name}: no depth-sweep rows in the outputs")
    return rows


_SW_INITS = ("zeros", "lecun_normal", "he_normal", "glorot_normal", "orthogonal")


@claim(quick=True)
def depth_sweep_setup(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"`depth_sweep` builds `make_model` MLPs of width (\d+) with ([\d, and]+) hidden layers"
    )
    h = nb.printed(
        r"^depth sweep: (\d) activations x (\d) initialisations x depths \(([^)]*)\), width "
        r"(\d+), (\d+) examples, (\d+) compiled programs, batch norm mode '(\w+)'$"
    )
    rows = _sweep(nb)
    acts = {"relu", "sigmoid"} if quick else {"relu", "tanh", "sigmoid", "gelu"}
    nb.check(
        {k for k in rows} == {(a, i) for a in acts for i in _SW_INITS} and h.group(7) == "none",
        s,
        h.group(0),
        f"every initialisation of {sorted(acts)}, no batch norm",
    )
    if not quick:
        depths = [int(v) for v in re.findall(r"\d+", q.group(2))]
        got = [int(v) for v in re.findall(r"\d+", h.group(3))]
        nb.check(
            h.group(4) == q.group(1) and got == depths and h.group(5) == "64",
            s,
            h.group(0),
            f"width {q.group(1)}, depths {depths}, 64 examples",
        )


@claim(quick=True)
def zero_init_is_all_zero(nb: NB, quick: bool):
    s, _ = nb.sentence(r"The zero initialisation gives 0 for every statistic at every depth")
    for (_, init), r in _sweep(nb).items():
        if init == "zeros":
            vals = [*r["last_q"], r["q_rate"], r["g1"], r["g_mid"], r["g_last"]]
            nb.check(all(v == 0 for v in vals), s, r["line"], "all 0")


@claim(quick=True)
def relu_he_keeps_q_lecun_halves_it(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"He's initialisation keeps `q` \(a factor ({F}) per layer\), while LeCun's halves it "
        rf"\(({F})\s+per layer, down to ({F}) at the last hidden layer"
    )
    rows = _sweep(nb)
    he, le = rows[("relu", "he_normal")], rows[("relu", "lecun_normal")]
    # width 256 (32 in quick mode), one draw: the per-layer factor within 10% of 1 and of 1/2
    nb.check(abs(he["q_rate"] - 1) <= 0.1, s, he["line"], "He: q kept (x1 +- 10%)")
    for init in ("lecun_normal", "glorot_normal", "orthogonal"):
        r = rows[("relu", init)]
        nb.check(abs(r["q_rate"] - 0.5) <= 0.06, s, r["line"], f"{init}: x0.5 +- 0.06")
    if not quick:
        nb.check(
            agrees(Num(q.group(1)), he["q_rate"])
            and agrees(Num(q.group(2)), le["q_rate"])
            and agrees(Num(q.group(3)), le["last_q"][-1]),
            s,
            he["line"] + " / " + le["line"],
            str(q.groups()),
        )
        s4, q4 = nb.sentence(
            rf"first layer, of variance 1/(\d+) against 1/(\d+), starts `q` ({F}) times\s+lower at "
            r"every depth"
        )
        gl = rows[("relu", "glorot_normal")]
        ratio = float(q4.group(2)) / float(q4.group(1))  # Glorot's 2/(64+256) over LeCun's 1/64
        nb.check(
            abs(Num(q4.group(3)) - ratio) <= Num(q4.group(3)).h  # 0.4 = 64 / 160 exactly
            and all(abs(a / b / ratio - 1) < 0.05 for a, b in zip(gl["last_q"], le["last_q"])),
            s4,
            gl["line"] + " / " + le["line"],
            f"Glorot's q {ratio:g} x LeCun's at every depth",
        )
        s2, q2 = nb.sentence(rf"the orthogonal one with\s+gain 1 halves `q` too \(({F})\)")
        o = rows[("relu", "orthogonal")]
        nb.check(agrees(Num(q2.group(1)), o["q_rate"]), s2, o["line"], q2.group(1))
        s3, q3 = nb.sentence(rf"Under LeCun the gradient norm shrinks by ({F}) per layer going")
        # sqrt(1/2) = 0.707: "about" within 3%
        nb.check(
            agrees(Num(q3.group(1)), le["g_rate"]) and abs(le["g_rate"] / 0.5**0.5 - 1) < 0.03,
            s3,
            le["line"],
            f"{q3.group(1)}, about sqrt(1/2)",
        )


@claim(quick=True)
def sigmoid_gradient_vanishes(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"Sigmoid: `q` stays put \(a factor ({F}) per layer; ({F}) at the last hidden layer of "
        rf"the 32-layer\s+LeCun network, near its mean-field `q\*` of ({F}) above\)"
    )
    rows = _sweep(nb)
    sig = {i: r for (a, i), r in rows.items() if a == "sigmoid" and i != "zeros"}
    for r in sig.values():
        nb.check(abs(r["q_rate"] - 1) <= 0.02, s, r["line"], "q kept to 2% per layer")
    s2, q2 = nb.sentence(
        rf"a factor ({F}) per layer under LeCun, about `sqrt\(chi_1\) = sqrt\(({F})\)`, and no "
        rf"better\s+than ({F}) under any initialisation"
    )
    worst = max(r["g_rate"] for r in sig.values())
    nb.check(
        worst <= float(q2.group(3)) + 0.0005,
        s2,
        str([r["g_rate"] for r in sig.values()]),
        f"every sigmoid init at most {q2.group(3)} per layer",
    )
    le = sig["lecun_normal"]
    # the mean-field factor sqrt(chi_1) = 0.236 for the gradient norm: within 5%
    nb.check(
        abs(le["g_rate"] / float(q2.group(2)) ** 0.5 - 1) < 0.05,
        s2,
        le["line"],
        f"about sqrt({q2.group(2)})",
    )
    if not quick:
        mf = _mf(nb)[("sigmoid", 1.0, 0.0)]
        nb.check(
            agrees(Num(q.group(1)), le["q_rate"])
            and agrees(Num(q.group(2)), le["last_q"][-1])
            and agrees(Num(q.group(3)), mf["q_star"])
            and abs(le["last_q"][-1] / mf["q_star"] - 1) < 0.1,
            s,
            le["line"] + " / " + mf["line"],
            str(q.groups()),
        )
        nb.check(
            agrees(Num(q2.group(1)), le["g_rate"]) and agrees(Num(q2.group(2)), mf["chi_1"]),
            s2,
            le["line"] + " / " + mf["line"],
            str(q2.groups()),
        )
        nb.check(agrees(Num(q2.group(3)), Num(str(worst))), s2, str(worst), q2.group(3))
        s3, q3 = nb.sentence(
            rf"At the first layer the LeCun network's gradient norm is\s+({F}), against ({F}) at "
            rf"layer (\d+)"
        )
        nb.check(
            agrees(le["g1"], Num(q3.group(1))) and agrees(le["g_last"], Num(q3.group(2))),
            s3,
            le["line"],
            f"layer 1 {q3.group(1)}, layer {q3.group(3)} {q3.group(2)}",
        )


_BN = re.compile(
    r"^(plain|batch norm|skips|batch norm \+ skips),\s+(\w+)\s+batch norm mode '(\w+)': q at the "
    rf"last hidden layer by depth \[([^\]]*)\]; depth (\d+): gradient norm layer 1 ({F}), layer "
    rf"(\d+) ({F}), ratio ({F})$",
    re.M,
)


def _bn(nb: NB) -> dict[tuple[str, str], dict]:
    rows = {}
    for m in _BN.finditer(nb.out):
        rows[(m.group(1), m.group(2))] = {
            "mode": m.group(3),
            "q": nums(m.group(4)),
            "ratio": Num(m.group(9)),
            "line": m.group(0),
        }
    if not rows:
        raise LabelNotFound(f"{nb.name}: no batch-norm sweep rows in the outputs")
    return rows


@claim()
def batch_norm_and_skips_sweep(nb: NB, quick: bool):
    s, _ = nb.sentence(r"the networks with batch norm run in batch\s+statistics mode")
    rows = _bn(nb)
    nb.check(len(rows) == 8, s, str(list(rows)), "4 variants x 2 initialisations")
    for (v, _), r in rows.items():
        want = "batch" if "batch norm" in v else "none"
        nb.check(r["mode"] == want, s, r["line"], f"mode {want}")
    s, q = nb.sentence(
        rf"Batch norm \(mode `batch`\) holds `q` of the dense layers' outputs at any depth \(LeCun "
        rf"({F}) at\s+depth 2, ({F}) at 40\) but the gradient explodes going back: ({F}) times"
    )
    bn = rows[("batch norm", "lecun_normal")]
    for i in ("lecun_normal", "he_normal"):
        r = rows[("batch norm", i)]
        nb.check(
            max(r["q"]) / min(r["q"]) < 1.5 and r["ratio"] > 1e3,
            s,
            r["line"],
            "q within a factor 1.5 at every depth, gradient ratio above 1e3",
        )
    nb.check(
        agrees(Num(q.group(1)), bn["q"][0])
        and agrees(Num(q.group(2)), bn["q"][-1])
        and agrees(Num(q.group(3)), bn["ratio"]),
        s,
        bn["line"],
        str(q.groups()),
    )
    s, q = nb.sentence(
        rf"Skips alone make `q` grow geometrically \(({F}) at depth 40 with LeCun, ({F}) with\s+He\); "
        rf"with batch norm and skips it grows only linearly \(from ({F}) at depth 2 to ({F}) at 40,\s+"
        rf"LeCun\), and the gradient ratio across the 40 layers is ({F})"
    )
    sk, skh = rows[("skips", "lecun_normal")], rows[("skips", "he_normal")]
    both = rows[("batch norm + skips", "lecun_normal")]
    nb.check(
        agrees(Num(q.group(1)), sk["q"][-1])
        and agrees(Num(q.group(2)), skh["q"][-1])
        and agrees(Num(q.group(3)), both["q"][0])
        and agrees(Num(q.group(4)), both["q"][-1])
        and agrees(Num(q.group(5)), both["ratio"]),
        s,
        sk["line"] + " / " + both["line"],
        str(q.groups()),
    )
    # geometric: each doubling of depth multiplies q by more than the one before (depths 2..40);
    # linear: q / depth within a factor 2 over depths 4..40 (depths 2, 4, 8, 16, 32, 40)
    depths = [2, 4, 8, 16, 32, 40]
    g = sk["q"]
    nb.check(
        all(b / a > 1.5 for a, b in zip(g[1:-1], g[2:-1])), s, sk["line"], "growing ever faster"
    )
    per = [v / d for v, d in zip(both["q"][1:], depths[1:])]
    nb.check(max(per) / min(per) < 2, s, both["line"], "q / depth within a factor 2")


# -------------------------------------------------------------------------- dynamical isometry
_JAC = re.compile(
    rf"^(tanh critical, small q\*, Gaussian|tanh critical, small q\*, orthogonal|tanh critical, "
    rf"q\* 0\.57, orthogonal|tanh chaotic, orthogonal|ReLU He, Gaussian|ReLU He, orthogonal): "
    rf"inputs x({F}) \(q\* ({F}|nan)\); mean squared singular value ({F}), spread \(variance of s\^2\) ({F}), largest ({F}) "
    rf"\((\w+), layer (\d+) -> (\d+), (\d+) x (\d+), (\d+) inputs\)$",
    re.M,
)


def _jac(nb: NB) -> dict[str, dict]:
    rows = {}
    for m in _JAC.finditer(nb.out):
        rows[m.group(1)] = {
            "scale": Num(m.group(2)),
            "q_star": float(m.group(3)),
            "mean_sq": Num(m.group(4)),
            "spread": Num(m.group(5)),
            "largest": Num(m.group(6)),
            "method": m.group(7),
            "layers": (int(m.group(8)), int(m.group(9))),
            "dims": (int(m.group(10)), int(m.group(11))),
            "n": int(m.group(12)),
            "line": m.group(0),
        }
    if len(rows) != 6:
        raise LabelNotFound(f"{nb.name}: {len(rows)} Jacobian rows in the outputs, expected 6")
    return rows


@claim(quick=True)
def isometry_setup(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"`jacobian_spectrum` forms the Jacobian from the first hidden layer's output to the last's "
        r"for (\d+)\s+training images \(exact SVD; (\d+) layers of width (\d+)"
    )
    depth, width, n_in = _sizes(
        nb,
        r"D_ISO, W_ISO, N_ISO = \((\d+), (\d+), (\d+)\) if QUICK else \((\d+), (\d+), (\d+)\)",
        quick,
    )
    for r in _jac(nb).values():
        nb.check(
            r["method"] == "exact"
            and r["layers"] == (0, int(depth) - 1)
            and r["dims"] == (int(width), int(width))
            and r["n"] == int(n_in),
            s,
            r["line"],
            f"exact, layer 0 -> {int(depth) - 1}, {width} x {width}, {n_in} inputs",
        )
    if not quick:
        nb.check(
            (n_in, depth, width) == q.groups(), s, f"{n_in}, {depth}, {width}", str(q.groups())
        )
    s2, _ = nb.sentence(r"the images scaled so that the first hidden layer starts at `q\*`")
    for name, r in _jac(nb).items():
        relu = name.startswith("ReLU")  # every q is fixed at (2, 0): nothing to scale
        nb.check(
            (r["scale"] == 1.0 and math.isnan(r["q_star"]))
            if relu
            else (0 < r["scale"] < 1.5 and r["q_star"] > 0),
            s2,
            r["line"],
            "ReLU unscaled, tanh scaled to its q*",
        )
    s3, _ = nb.sentence(r"with Gaussian weights the digits would enter at `q` of\s+about 1")
    g = _jac(nb)["tanh critical, small q*, Gaussian"]  # its q^1 = q* / scale^2 unscaled
    q1 = g["q_star"] / float(g["scale"]) ** 2
    nb.check(0.7 < q1 < 1.3, s3, g["line"], f"q^1 = q* / scale^2 = {q1:.3g}, about 1")
    s, q = nb.sentence(
        rf"For tanh at criticality with `sigma_b2 = 1e-3` \(`sigma_w2 = ({F})`, `q\* = ({F})`\)"
    )
    m = nb.printed(
        rf"^MeanFieldResult\(tanh, sigma_w2=({F}), sigma_b2=0\.001: ok, critical, q_star=({F}), chi_1=1,"
    )
    nb.check(
        agrees(Num(q.group(1)), Num(m.group(1))) and agrees(Num(q.group(2)), Num(m.group(2))),
        s,
        m.group(0),
        str(q.groups()),
    )
    s, _ = nb.sentence(r"critical point of `sigma_b2 = 0.05` \(`q\* = 0.57`\)")
    m = nb.printed(
        rf"^MeanFieldResult\(tanh, sigma_w2=({F}), sigma_b2=0\.05: ok, critical, q_star=({F}), chi_1=1,"
    )
    nb.check(agrees(Num("0.57"), Num(m.group(2))), s, m.group(0), "q* 0.57")


@claim(quick=True)
def orthogonal_tanh_is_isometric(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"the squared\s+singular values of the Gaussian network spread with variance ({F}) and "
        rf"reach ({F}), against ({F})\s+and ({F}) for the orthogonal one"
    )
    j = _jac(nb)
    g, o = j["tanh critical, small q*, Gaussian"], j["tanh critical, small q*, orthogonal"]
    # the orthogonal spread at least 5 times smaller, its largest singular value below the
    # Gaussian one's (9x and 15x, quick and full)
    nb.check(
        g["spread"] > 5 * o["spread"] and g["largest"] > o["largest"],
        s,
        g["line"] + " / " + o["line"],
        "orthogonal spread 5x smaller",
    )
    if not quick:
        got = (g["spread"], g["largest"], o["spread"], o["largest"])
        nb.check(
            all(agrees(Num(a), b) for a, b in zip(q.groups(), got)), s, str(got), str(q.groups())
        )
    s, q = nb.sentence(
        rf"the orthogonal network at the\s+critical point of `sigma_b2 = 0.05` \(`q\* = 0.57`\) "
        rf"spreads with variance ({F}) \(largest ({F})\)"
    )
    big = j["tanh critical, q* 0.57, orthogonal"]
    nb.check(big["spread"] > 5 * o["spread"], s, big["line"], "5x the small-q* spread")
    if not quick:
        nb.check(
            agrees(Num(q.group(1)), big["spread"]) and agrees(Num(q.group(2)), big["largest"]),
            s,
            big["line"],
            str(q.groups()),
        )
    s, q = nb.sentence(
        rf"The mean squared singular values are ({F}) \(Gaussian\) and ({F}) \(orthogonal\) for "
        rf"tanh, ({F}) and\s+({F}) for ReLU"
    )
    got = (
        g["mean_sq"],
        o["mean_sq"],
        j["ReLU He, Gaussian"]["mean_sq"],
        j["ReLU He, orthogonal"]["mean_sq"],
    )
    if not quick:
        nb.check(
            all(agrees(Num(a), b) for a, b in zip(q.groups(), got)), s, str(got), str(q.groups())
        )
        nb.check(
            min(got, key=lambda v: abs(v - 1)) is got[1],
            s,
            str(got),
            "the orthogonal tanh network's mean closest to 1",
        )


@claim(quick=True)
def relu_cannot_be_isometric(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"ReLU at He's scale is far from isometry with either weights: a spread of ({F}) "
        rf"\(largest ({F})\)\s+Gaussian, ({F}) \(largest ({F})\) orthogonal"
    )
    j = _jac(nb)
    o = j["tanh critical, small q*, orthogonal"]
    rg, ro = j["ReLU He, Gaussian"], j["ReLU He, orthogonal"]
    # both ReLU spreads 10x the isometric tanh's (100x quick, 300x full)
    nb.check(
        min(rg["spread"], ro["spread"]) > 10 * o["spread"],
        s,
        rg["line"] + " / " + ro["line"],
        "10x the orthogonal tanh spread",
    )
    if not quick:
        got = (rg["spread"], rg["largest"], ro["spread"], ro["largest"])
        nb.check(
            all(agrees(Num(a), b) for a, b in zip(q.groups(), got)), s, str(got), str(q.groups())
        )


# ------------------------------------------------------------------------------------ the tests


# a mutation: (claim id, "out" | "md", what to change, how) as in tests/test_notebook_claims.py
MUTATIONS = [
    ("committed_in_full_mode", "out", r"^(full) mode \[", to("quick")),
    ("committed_in_full_mode", "out", r"^full run: (\d+) s$", to("700")),
    ("audit_clean_digits", "out", r"^clean digits: data audit: (ok)", to("1 problem")),
    ("audit_clean_digits", "md", "(1.4826 MAD)` above 20)", "(1.4826 MAD)` above 10)"),
    (
        "audit_finds_the_planted_faults",
        "out",
        r"^nan: planted \[17, 404\], found \[([^\]]*)\]",
        to("17"),
    ),
    (
        "audit_finds_the_planted_faults",
        "out",
        r"^every offending example: \[([^\]]*)\]",
        to("17, 77, 404, 999, 1200, 1201"),
    ),
    ("audit_finds_the_planted_faults", "md", "We plant five faults", "We plant four faults"),
    (
        "tanh_critical_point",
        "out",
        r"sigma_w2=1\.761, sigma_b2=0\.05: ok, chaotic, q_star=0.570076, chi_1=(1\.00001)",
        to("1.002"),
    ),
    ("tanh_critical_point", "md", "`q*` is 0.570", "`q*` is 0.580"),
    ("tanh_critical_point", "out", r"sigma_w2=4, sigma_b2=0\.05: ok, (chaotic)", to("ordered")),
    (
        "relu_only_a_critical_point",
        "out",
        r"relu, sigma_w2=2\.5, sigma_b2=0: no_fixed_point, undefined, q_star=nan, chi_1=(1\.25)",
        to("1.4"),
    ),
    (
        "relu_only_a_critical_point",
        "out",
        r"relu, sigma_w2=2, sigma_b2=0: (every_q_fixed)",
        to("ok"),
    ),
    ("sigmoid_vanishing_gradient", "md", "it is 0.056", "it is 0.066"),
    (
        "sigmoid_vanishing_gradient",
        "out",
        r"sigmoid, sigma_w2=16, sigma_b2=0: ok, ordered, q_star=5.8554, chi_1=(0\.398879)",
        to("1.1"),
    ),
    ("phase_diagram_critical_line", "out", r"critical line at (\d+) of \d+ sigma_b2", shift(-1)),
    (
        "trained_networks_setup",
        "md",
        "learning rate 0.05, 300 steps",
        "learning rate 0.1, 300 steps",
    ),
    (
        "trained_networks_setup",
        "out",
        r"^sigma_w2 2\.0  sigma_b2 0\.1  chi_1 1\.003 chi_1\^32 ([\d.e+-]+)",
        scale(3),
    ),
    (
        "trainable_band_along_the_line",
        "out",
        rf"^sigma_w2 3\.0  sigma_b2 0\.01 .* median ({F})$",
        to("1.5000"),
    ),
    (
        "trainable_band_along_the_line",
        "out",
        rf"^sigma_w2 4\.5  sigma_b2 0\.3 .* median ({F})$",
        to("0.5000"),
    ),
    (
        "trainable_band_along_the_line",
        "md",
        "reach a median training loss of 0.652",
        "reach a median training loss of 0.50",
    ),
    ("trainable_band_along_the_line", "md", "below 1e-4 (vanishing)", "below 1e-5 (vanishing)"),
    ("trainable_band_along_the_line", "md", "seven of them within 0.3", "six of them within 0.3"),
    (
        "trained_networks_setup",
        "out",
        rf"^sigma_w2 1\.0  sigma_b2 0\.3 .* median ({F})$",
        to("2.3133"),
    ),
    ("single_runs_scatter", "md", "end at 1.46, 0.56 and 0.65", "end at 1.46, 0.66 and 0.65"),
    (
        "single_runs_scatter",
        "out",
        rf"^sigma_w2 2\.0  sigma_b2 0\.3 .* by seed {F} ({F}) ",
        to("0.9514"),
    ),
    ("depth_scale_sorts_but_not_by_its_bound", "md", "`xi_c` of 7.57 or", "`xi_c` of 7.65 or"),
    ("depth_scale_sorts_but_not_by_its_bound", "md", "= 41.9, more", "= 31.9, more"),
    (
        "depth_scale_sorts_but_not_by_its_bound",
        "out",
        rf"^sigma_w2 4\.5  sigma_b2 0\.01 .* median ({F})$",
        to("0.9000"),
    ),
    ("deep_network_setup", "md", "Adam (learning rate 1e-3,", "Adam (learning rate 3e-3,"),
    (
        "deep_network_setup",
        "out",
        r"^skips: +loss at step 0 \S+ TrainResult\(steps=(\d+)",
        shift(-1),
    ),
    (
        "batch_norm_is_the_identity_at_step_0",
        "out",
        rf"^batch norm \+ skips: +loss at step 0 ({F});",
        scale(1.1),
    ),
    (
        "deep_network_outcomes",
        "out",
        rf"^plain, LeCun: +loss at step 0 \S+ TrainResult\(steps=\d+, train_loss=({F})",
        to("2.2000"),
    ),
    ("deep_network_outcomes", "md", "trains to 0.0061", "trains to 0.0071"),
    ("deep_network_outcomes", "md", "He's initialisation (0.503)", "He's initialisation (0.603)"),
    (
        "deep_network_outcomes",
        "out",
        rf"^batch norm: +loss at step 0 \S+ TrainResult\(steps=\d+, train_loss=({F})",
        to("1.2000"),
    ),
    ("train_refuses_the_corrupted_copy", "out", r"data must be finite; found (\d+) NaN", shift(1)),
    ("train_refuses_the_corrupted_copy", "md", "the 65 NaN values", "the 64 NaN values"),
    (
        "monitor_catches_the_nan_batch",
        "out",
        r"^diverged at step \d+: report step \d+, stage '(\w+)'",
        to("forward"),
    ),
    (
        "monitor_catches_the_nan_batch",
        "out",
        r"last finite parameters finite: (True)$",
        to("False"),
    ),
    ("monitor_catches_the_nan_batch", "out", r"^MonitorResult\((\d+) records", shift(1)),
    ("diagnose_step_finds_the_nan_in_the_batch", "md", "at example 17.", "at example 404."),
    (
        "deep_network_gradients",
        "md",
        "explode going backwards, 1.35e3",
        "explode going backwards, 1.55e3",
    ),
    (
        "deep_network_gradients",
        "out",
        r"^plain, LeCun: .*\n +first update: hidden-layer gradient norms from ([\d.e+-]+) to",
        scale(0.3),
    ),
    ("limit_is_two_over_lambda_max", "out", rf"^  limit ({F}) = 2 / lambda_max", scale(1.01)),
    (
        "limit_is_two_over_lambda_max",
        "out",
        r"\(sgd, \d+ full-batch steps, \d+ rates \S+\): (\d+) diverged",
        shift(1),
    ),
    ("learning_rate_range_quoted", "md", "is at 1.78, 2.86 times", "is at 1.00, 2.86 times"),
    (
        "learning_rate_range_quoted",
        "md",
        "the rates from 5.62 up did",
        "the rates from 3.16 up did",
    ),
    (
        "learning_rate_range_quoted",
        "out",
        r"^lr \S+: loss over the first 8 steps \[([^\]]*)\]$",
        to("2.34 1.25 1.2 1.1 1.0 0.87 0.54 0.47"),
    ),
    ("sharpness_runs_setup", "out", rf"^lr \S+ \(0\.5 x the limit, 2/lr = ({F})\)", scale(1.1)),
    (
        "progressive_sharpening_and_catapult",
        "md",
        "from 3.22 to 4.15 at step 10",
        "from 3.22 to 4.15 at step 20",
    ),
    (
        "progressive_sharpening_and_catapult",
        "out",
        rf"x the limit, 2/lr = 1\.125\): sharpness \S+ at step 0, largest \S+ at step \d+, ({F}) at step",
        to("1.2"),
    ),
    # depth sweep, batch norm and skips, dynamical isometry
    ("depth_sweep_setup", "md", "MLPs of width 256 with", "MLPs of width 128 with"),
    (
        "depth_sweep_setup",
        "out",
        r"^depth sweep: \d activations x \d initialisations x depths \(([^)]*)\)",
        to("2, 4, 8, 16"),
    ),
    (
        "zero_init_is_all_zero",
        "out",
        rf"^sigmoid zeros .* gradient norm layer 1 ({F})",
        to("1e-30"),
    ),
    (
        "relu_he_keeps_q_lecun_halves_it",
        "out",
        rf"^relu    he_normal .* x({F}) per layer;",
        to("1.2"),
    ),
    (
        "relu_he_keeps_q_lecun_halves_it",
        "out",
        rf"^relu    orthogonal .* x({F}) per layer;",
        to("0.6"),
    ),
    ("relu_he_keeps_q_lecun_halves_it", "md", "halves `q` too (0.483)", "halves `q` too (0.493)"),
    (
        "relu_he_keeps_q_lecun_halves_it",
        "md",
        "shrinks by 0.709 per layer",
        "shrinks by 0.719 per layer",
    ),
    (
        "sigmoid_gradient_vanishes",
        "out",
        rf"^sigmoid he_normal .* \(x({F}) per layer back",
        to("0.5"),
    ),
    ("sigmoid_gradient_vanishes", "out", rf"^sigmoid orthogonal .* x({F}) per layer;", to("1.05")),
    (
        "sigmoid_gradient_vanishes",
        "md",
        "near its mean-field `q*` of 0.265",
        "near its mean-field `q*` of 0.285",
    ),
    (
        "batch_norm_and_skips_sweep",
        "out",
        r"^batch norm,\s+he_normal\s+batch norm mode '(\w+)'",
        to("eval"),
    ),
    (
        "batch_norm_and_skips_sweep",
        "out",
        rf"^batch norm,\s+lecun_normal .* ratio ({F})$",
        to("500"),
    ),
    ("batch_norm_and_skips_sweep", "md", "to 25 at 40", "to 35 at 40"),
    ("batch_norm_and_skips_sweep", "md", "5.85e11 with", "5.85e10 with"),
    ("isometry_setup", "out", r"^tanh chaotic, orthogonal: .* \((\w+), layer", to("lanczos")),
    ("isometry_setup", "md", "`q* = 0.107`", "`q* = 0.117`"),
    (
        "orthogonal_tanh_is_isometric",
        "out",
        rf"^tanh critical, small q\*, orthogonal: .* spread \(variance of s\^2\) ({F})",
        to("20"),
    ),
    (
        "orthogonal_tanh_is_isometric",
        "md",
        "spreads with variance 19.9",
        "spreads with variance 16.4",
    ),
    ("orthogonal_tanh_is_isometric", "md", "1.27 and 1.63 for ReLU", "1.27 and 1.53 for ReLU"),
    (
        "relu_cannot_be_isometric",
        "out",
        rf"^ReLU He, orthogonal: .* spread \(variance of s\^2\) ({F})",
        to("1"),
    ),
    ("relu_cannot_be_isometric", "md", "a spread of 141", "a spread of 151"),
    ("relu_he_keeps_q_lecun_halves_it", "md", "starts `q` 0.4 times", "starts `q` 0.5 times"),
    (
        "orthogonal_tanh_is_isometric",
        "out",
        rf"^tanh critical, small q\*, Gaussian: .* mean squared singular value ({F})",
        to("1.05"),
    ),
    ("isometry_setup", "out", r"^ReLU He, Gaussian: inputs x(\S+) ", to("0.5")),
]


def test_reworded_sentence_or_renamed_print_fails():
    fn, _ = CLAIMS["deep_network_outcomes"]
    with pytest.raises(LabelNotFound, match="markdown sentence"):
        fn(_mutated(NAME, "md", "never leaves", "does not leave"), False)
    with pytest.raises(LabelNotFound, match="printed label"):
        fn(_mutated(NAME, "out", r"^(batch norm): +loss at step 0", to("BN")), False)


# the tests every claim-checked notebook runs (tests/_claim_suite.py), after the registry above
globals().update(SUITE.standard_tests(MUTATIONS))
