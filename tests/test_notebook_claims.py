"""The notebooks' text against the numbers they print.

The committed notebooks (executed in full mode, ``LANDSCAPE_QUICK=0``) are read as results, so
every checkable claim their markdown makes is asserted here against their printed outputs (the
stdout streams and the ``text/plain`` of ``execute_result`` outputs, read with nbformat: no
execution, no JAX). Each claim is one parametrised test case:

* the markdown sentence is located by a regex (the numbers it quotes are read from the text
  itself), and the printed numbers by regexes keyed on the printed labels; a sentence or label
  that is not found raises :class:`LabelNotFound` (a reworded sentence or a renamed print fails
  the test, it never skips a claim);
* a number quoted in the text must equal the printed one to the precision of both (the
  difference is at most half a unit in the last digit of each, :func:`agrees`); qualitative
  claims ("falls", "below", "within its standard error", "about -1/2") are inequalities, each
  tolerance stated where it is used;
* every assertion message names the notebook, the markdown sentence and the printed values.

A claim the committed numbers contradict is marked ``xfail(strict=True, raises=AssertionError)``
with the sentence and the number in the reason (the notebook's text is to be fixed). A missing
sentence raises ``LabelNotFound``, not ``AssertionError``, so once the text is reworded such a
test fails loudly instead of going on xfailing.

``check_quick_claims(nb)`` runs the claims that also hold at quick sizes on a notebook executed
in quick mode (``tests._util.run_notebook``); the ``quick=True`` claims below are those.

``test_claim_can_fail`` corrupts, for every claim, the relevant printed number (or quoted
number) in an in-memory copy of the committed notebook and checks that the claim then fails;
``test_xfail_claim_can_pass`` repairs the contradicting number of each xfailed claim and checks
that the claim then passes (the xfail comes from the number, not from a broken check). A printed
number to corrupt is located by its label regex and perturbed from its current value (see
``MUTATIONS``), so re-executing a notebook does not invalidate the mutations; only quoted markdown
text is written out.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"

FLOAT = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"

# the digits split (scikit-learn's 1797 images, 80/20): printed by loss_surfaces.ipynb's Dataset
# repr and asserted there (claim whole_data_set)
DIGITS_TRAIN, DIGITS_TEST = 1437, 360


class LabelNotFound(LookupError):
    """A markdown sentence or a printed label that a claim needs is missing."""


# ---------------------------------------------------------------------------------------------
# numbers with their printed precision


class Num(float):
    """A printed (or quoted) number; ``h`` is half a unit in its last printed digit."""

    h: float
    s: str

    def __new__(
        cls, s: str, decimals: int | None = None, percent: bool = False, sig: int | None = None
    ):
        s = s.strip()
        v = float(s)
        mant, _, exp = s.lower().partition("e")
        d = len(mant.split(".")[1]) if "." in mant else 0
        if decimals is not None:
            d = decimals
        h = 0.5 * 10.0 ** (-d) * 10.0 ** (int(exp) if exp else 0)
        if (
            sig is not None
        ):  # printed with f"{v:.{sig}g}": sig significant digits, "0" is exactly 0
            h = 0.0 if v == 0 else 0.5 * 10.0 ** (math.floor(math.log10(abs(v))) - sig + 1)
        if percent:
            v, h = v / 100, h / 100
        self = super().__new__(cls, v)
        self.h, self.s = h, s + ("%" if percent else "")
        return self

    def __repr__(self):
        return self.s


def exact(v: float) -> Num:
    """A value computed here (no printed rounding)."""
    n = Num(repr(float(v)))
    n.h = 0.0
    return n


def nums(s: str, decimals: int | None = None) -> list[Num]:
    """The numbers of a printed NumPy array (``[0.393 0.234 0.07 ]`` or ``[1, 2]``).

    NumPy prints every element with the same number of decimals and pads stripped trailing
    zeros with spaces, so each element gets the finest precision among them (``0.07`` above is
    ``0.070``), unless ``decimals`` gives it (``np.round(x, 4)`` of exact zeros prints ``0.``).
    """
    parts = re.findall(FLOAT, s)
    if not parts:
        raise LabelNotFound(f"no numbers in {s!r}")
    if decimals is None:
        decimals = max(
            len(p.lower().split("e")[0].split(".")[1]) if "." in p else 0 for p in parts
        )
        if any("e" in p.lower() for p in parts):
            decimals = None
    return [Num(p, decimals) for p in parts]


def agrees(a: Num, b: Num) -> bool:
    """Equal to the precision of both: |a - b| <= h_a + h_b (plus float rounding)."""
    return abs(a - b) <= a.h + b.h + 1e-12 * max(abs(a), abs(b))


def ls_slope(x, y) -> float:
    """Least-squares slope of log y against log x (as ntk.convergence/kernel_drift compute it)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def ls_slope_h(x, y: list[Num]) -> tuple[float, float]:
    """:func:`ls_slope` and its uncertainty from the printed rounding of ``y``: the slope is
    sum_i c_i log y_i with c_i = (log x_i - mean) / S_xx, so it moves by at most
    sum_i |c_i| h_i / y_i (to first order) within the printed precision."""
    lx = np.log(np.asarray(x, float))
    c = (lx - lx.mean()) / ((lx - lx.mean()) ** 2).sum()
    return ls_slope(x, y), float(sum(abs(ci) * v.h / abs(v) for ci, v in zip(c, y)))


# ---------------------------------------------------------------------------------------------
# a notebook's text


_SENTENCE_END = re.compile(r"(?<!\bal)(?<!e\.g)(?<!i\.e)(?<!\bFig)[.:;](?= [A-Z(`*$])")


def _md_units(src: str) -> list[str]:
    """A markdown cell's paragraphs, headings and list items, each on one line."""
    units, cur = [], []
    for line in src.splitlines():
        st = line.strip()
        new = not st or re.match(r"(#+ |\* |- |\d+\. )", st)
        if new and cur:
            units.append(" ".join(cur))
            cur = []
        if st.startswith("#"):
            units.append(st)
        elif st:
            cur.append(st)
    if cur:
        units.append(" ".join(cur))
    return [re.sub(r"\s+", " ", u) for u in units]


class NB:
    """The markdown (whitespace collapsed), the code and the printed outputs of a notebook."""

    def __init__(self, nb, name: str):
        self.name = f"notebooks/{name}.ipynb"
        md, code, out = [], [], []
        # where each output's text lies in self.out: (start, end, cell index, output index, key)
        self.segments: list[tuple[int, int, int, int, str]] = []
        pos = 0
        for ci, c in enumerate(nb.cells):
            if c.cell_type == "markdown":
                md.append(c.source)
            elif c.cell_type == "code":
                code.append(c.source)
                texts = []
                for oi, o in enumerate(c.get("outputs", [])):
                    if o.get("output_type") == "stream" and o.get("name") == "stdout":
                        t, key = o.get("text", ""), "text"
                    elif o.get("output_type") == "execute_result":
                        t, key = o.get("data", {}).get("text/plain", ""), "text/plain"
                    else:
                        continue
                    self.segments.append((pos, pos + len(t), ci, oi, key))
                    t += "\n" if key == "text/plain" else ""
                    texts.append(t)
                    pos += len(t)
                out.append("".join(texts))
                pos += 1  # the "\n" between cells
        # one line per paragraph, heading or list item (whitespace collapsed): a sentence regex
        # matches inside one of them
        self.md = "\n".join(u for src in md for u in _md_units(src))
        self.code = "\n".join(code)
        self.cells_out = out
        self.out = "\n".join(out)
        self.errors = [
            o.get("ename", "?")
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
            if o.get("output_type") == "error"
        ]

    def sentence(self, pattern: str) -> tuple[str, re.Match]:
        """The markdown sentence matching ``pattern`` (regex on whitespace-collapsed text)."""
        m = re.search(pattern, self.md)
        if not m:
            raise LabelNotFound(
                f"{self.name}: markdown sentence /{pattern}/ not found (reworded? update the claim)"
            )
        line_start = self.md.rfind("\n", 0, m.start()) + 1
        line_end = self.md.find("\n", m.end())
        line_end = len(self.md) if line_end < 0 else line_end
        ends = [b.end() for b in _SENTENCE_END.finditer(self.md, line_start, line_end)]
        start = max([e for e in ends if e <= m.start()], default=line_start)
        end = min([e for e in ends if e > m.end()], default=line_end)
        return self.md[start:end].strip(), m

    def printed(self, pattern: str, flags=re.M) -> re.Match:
        m = re.search(pattern, self.out, flags)
        if not m:
            raise LabelNotFound(
                f"{self.name}: printed label /{pattern}/ not found in the outputs (renamed print?)"
            )
        return m

    def printed_all(self, pattern: str, flags=re.M) -> list[re.Match]:
        ms = list(re.finditer(pattern, self.out, flags))
        if not ms:
            raise LabelNotFound(
                f"{self.name}: printed label /{pattern}/ not found in the outputs (renamed print?)"
            )
        return ms

    def in_code(self, pattern: str) -> re.Match:
        m = re.search(pattern, self.code)
        if not m:
            raise LabelNotFound(f"{self.name}: code /{pattern}/ not found in the code cells")
        return m

    def check(self, ok, sentence: str, printed: str, expected: str):
        assert ok, (
            f"{self.name}: the text says {sentence!r}; printed: {printed}; expected: {expected}"
        )


@functools.cache
def committed_raw(name: str):
    import nbformat

    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@functools.cache
def committed(name: str) -> NB:
    return NB(committed_raw(name), name)


# ---------------------------------------------------------------------------------------------
# the claims: CLAIMS[notebook][claim id] = (function(nb, quick), holds at quick sizes)

CLAIMS: dict[str, dict[str, tuple[Callable[[NB, bool], None], bool]]] = {}


def claim(notebook: str, quick: bool = False, name: str | None = None):
    def deco(f):
        CLAIMS.setdefault(notebook, {})[name or f.__name__] = (f, quick)
        return f

    return deco


def _mode_marker(
    nb: NB, quick: bool, sentence_re: str, marker_re: str, want: Callable[[re.Match], bool]
):
    s, _ = nb.sentence(sentence_re)
    m = nb.printed(marker_re)
    mode = "quick" if quick else "full"
    nb.check(
        want(m) if not quick else not want(m),
        s,
        m.group(0),
        f"the first cell's marker of {mode} mode",
    )
    nb.check(not nb.errors, s, f"error outputs {nb.errors}", "no error outputs")
    skipped = re.findall(r".*skipped in quick mode.*", nb.out)
    if not quick:
        nb.check(not skipped, s, repr(skipped), "no section skipped (full mode runs them all)")


# ---------------------------------------------------------------- hessian_spectrum.ipynb
H = "hessian_spectrum"


@claim(H, quick=True)
def committed_in_full_mode(nb: NB, quick: bool):
    # "full mode [devices] Hessian on N examples" / "quick mode ..."; full mode: all 1437
    # training examples ("all training data in full mode"), quick mode: 256
    _mode_marker(
        nb,
        quick,
        r"the committed outputs come from the full run",
        r"^(full|quick) mode \[.*?\] Hessian on (\d+) examples",
        lambda m: m.group(1) == "full",
    )
    m = nb.printed(r"^(full|quick) mode \[.*?\] Hessian on (\d+) examples")
    want = 256 if quick else DIGITS_TRAIN
    nb.check(
        int(m.group(2)) == want,
        "Hessian on the whole training set (full mode)",
        m.group(0),
        f"{want} examples",
    )


@claim(H, quick=True)
def density_trace_agrees_with_hutchinson(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"The checks compare the SLQ trace with the same probes' Hutchinson estimate"
    )
    slq, hut, se = (
        Num(nb.printed(rf"'{k}': ({FLOAT})").group(1))
        for k in ("slq_trace", "hutchinson_trace", "trace_std_error")
    )
    # agrees within its standard error (same probes: in exact arithmetic they are equal)
    nb.check(
        abs(slq - hut) <= se + slq.h + hut.h,
        s,
        f"slq_trace {slq!r}, hutchinson_trace {hut!r}, trace_std_error {se!r}",
        "|slq - hutchinson| <= standard error",
    )


@claim(H)
def density_top_node_agrees_with_eigensolver(nb: NB, quick: bool):
    s, _ = nb.sentence(r"the largest node with an independent top-eigenvalue solve")
    node, lam = (
        Num(nb.printed(rf"'{k}': ({FLOAT})").group(1)) for k in ("top_node", "top_eigenvalue")
    )
    top = nums(nb.printed(r"EigenResult\(largest, values=\[([^\]]*)\]").group(1))[0]
    # agree to 1e-3 relative (the eigensolver's residual tolerance is ~1e-4 x ||A||; printed:
    # 1.3e-5 relative)
    for other, label in ((lam, "top_eigenvalue"), (top, "EigenResult values[0]")):
        nb.check(
            abs(node - other) <= 1e-3 * abs(other) + node.h + other.h,
            s,
            f"top_node {node!r}, {label} {other!r}",
            "equal to 1e-3 relative",
        )


@claim(H)
def bulk_near_zero(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"the few outliers \(about one per class\) stand out from the bulk near zero"
    )
    m = nb.printed(rf"mass below the floor ({FLOAT}): ({FLOAT})")
    floor, mass = Num(m.group(1)), Num(m.group(2))
    top = nums(nb.printed(r"EigenResult\(largest, values=\[([^\]]*)\]").group(1))
    # "the bulk near zero": most of the spectral mass (> 1/2) lies at or below the log floor;
    # "outliers stand out": every computed top eigenvalue is > 1e3 x the floor
    nb.check(mass > 0.5, s, m.group(0), "mass below the floor > 0.5")
    nb.check(min(top) > 1e3 * floor, s, f"top eigenvalues {top}, floor {floor!r}", "> 1e3 x floor")


@claim(H)
def gradient_overlap_quoted(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"At the end of this run \(train loss ({FLOAT}), gradient norm ({FLOAT})\) only "
        rf"({FLOAT})% of its squared norm lies in the top (\d+) eigenvectors"
    )
    q_loss, q_grad, q_frac, q_k = (
        Num(q.group(1)),
        Num(q.group(2)),
        Num(q.group(3), percent=True),
        int(q.group(4)),
    )
    tr = nb.printed(
        rf"TrainResult\(steps=(\d+), train_loss=({FLOAT}), train_accuracy=({FLOAT}), test_loss="
    )
    ov = nb.printed(rf"OverlapResult\(k=(\d+), fraction=({FLOAT}), grad_norm=({FLOAT})\)")
    eig = nb.printed(r"EigenResult\(largest, [^)]*?converged=(\d+)/(\d+)")
    loss, k, frac, grad = Num(tr.group(2)), int(ov.group(1)), Num(ov.group(2)), Num(ov.group(3))
    nb.check(agrees(q_loss, loss), s, tr.group(0), f"train loss {q_loss!r}")
    nb.check(agrees(q_grad, grad), s, ov.group(0), f"gradient norm {q_grad!r}")
    nb.check(agrees(q_frac, frac), s, ov.group(0), f"fraction {q_frac!r}")
    nb.check(
        q_k == k == int(eig.group(1)) == int(eig.group(2)),
        s,
        f"{ov.group(0)}; {eig.group(0)[-20:]}",
        f"k = {q_k}, all converged",
    )
    # "no longer aligned with the outliers": less than half of the squared norm in the top-k
    nb.check(frac < 0.5, s, ov.group(0), "fraction < 0.5")


@claim(H, quick=True)
def gradient_overlap_is_sum_of_cos2(nb: NB, quick: bool):
    s, _ = nb.sentence(r"(\d+)% of its squared norm lies in the top (\d+) eigenvectors")
    ov = nb.printed(
        rf"OverlapResult\(k=(\d+), fraction=({FLOAT}), grad_norm=({FLOAT})\) per eigenvector: \[([^\]]*)\]"
    )
    k, frac, cos2 = int(ov.group(1)), Num(ov.group(2)), nums(ov.group(4))
    # the fraction in the top-k eigenspace is the sum of the per-eigenvector cos^2 (orthonormal
    # eigenvectors), to the rounding of the k printed terms
    nb.check(
        len(cos2) == k
        and abs(sum(cos2) - frac) <= sum(c.h for c in cos2) + frac.h
        and 0 <= frac <= 1,
        s,
        ov.group(0),
        "fraction = sum of cos2, in [0, 1]",
    )


@claim(H, quick=True)
def ggn_split_traces(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"The Hessian splits into the positive semi-definite Gauss-Newton part and a residual"
    )
    m = nb.printed(
        rf"DecompositionResult\(traces: hessian=({FLOAT}), ggn=({FLOAT}), residual=({FLOAT}); num_hvps=(\d+)\)"
    )
    h, g, r = (Num(m.group(i)) for i in (1, 2, 3))
    # H = GGN + residual (same probes: linear), to the printed digits; the GGN is PSD: trace >= 0
    nb.check(abs(h - (g + r)) <= h.h + g.h + r.h, s, m.group(0), "hessian = ggn + residual")
    nb.check(g >= 0, s, m.group(0), "ggn trace >= 0")


@claim(H)
def ggn_residual_small_outliers_in_ggn(nb: NB, quick: bool):
    s, _ = nb.sentence(r"after training the residual is small and the outliers belong to the GGN")
    m = nb.printed(
        rf"DecompositionResult\(traces: hessian=({FLOAT}), ggn=({FLOAT}), residual=({FLOAT});"
    )
    h, r = Num(m.group(1)), Num(m.group(3))
    rows = {
        x.group(1): (nums(x.group(2), 4), nums(x.group(3), 4))  # printed with np.round(., 4)
        for x in nb.printed_all(
            r"^(hessian|ggn|residual)\s+top \[([^\]]*)\]\s+bottom \[([^\]]*)\]"
        )
    }
    for part in ("hessian", "ggn", "residual"):
        if part not in rows:
            raise LabelNotFound(
                f"{nb.name}: printed line '{part} top [...] bottom [...]' not found"
            )
    top = nums(nb.printed(r"EigenResult\(largest, values=\[([^\]]*)\]").group(1))
    txt = "; ".join(f"{p} top {rows[p][0]} bottom {rows[p][1]}" for p in rows) + f"; {m.group(0)}"
    # "the residual is small": its trace and its extreme eigenvalues are < 1% of the Hessian's
    # (printed: 0.17% and <= 0.3%)
    nb.check(abs(r) < 0.01 * h, s, txt, "|residual trace| < 1% of the Hessian trace")
    nb.check(
        max(abs(v) + v.h for v in rows["residual"][0] + rows["residual"][1])
        < 0.01 * rows["hessian"][0][0],
        s,
        txt,
        "residual eigenvalues < 1% of the top Hessian eigenvalue",
    )
    # "the outliers belong to the GGN": the GGN's top eigenvalues equal the Hessian's (and the
    # top-k solve's) to the printed 4 decimals; the GGN is PSD (bottom >= 0 to the rounding)
    for a, b, t in zip(rows["ggn"][0], rows["hessian"][0], top):
        nb.check(
            agrees(a, b) and agrees(a, t), s, txt + f"; EigenResult {top}", "ggn top = hessian top"
        )
    nb.check(all(v >= -v.h for v in rows["ggn"][1]), s, txt, "ggn bottom eigenvalues >= 0")


_RESNETS = ("skip + BN", "no skip + BN", "skip, no BN", "no skip, no BN")


def _re_resnet(variant: str | None = None) -> str:
    """A printed ResNet line (all four variants, or one): variant, steps, top eigenvalue, trace."""
    v = re.escape(variant) if variant else "|".join(map(re.escape, _RESNETS))
    return rf"^({v})\s+steps=(\d+),.*?top eigenvalue ({FLOAT})\s+trace ({FLOAT}) \+- ({FLOAT})\s*$"


def _resnets(nb: NB):
    rows = {}
    for x in nb.printed_all(_re_resnet()):
        rows[x.group(1)] = (int(x.group(2)), Num(x.group(3)), x.group(0))
    for v in _RESNETS:
        if v not in rows:
            raise LabelNotFound(f"{nb.name}: printed ResNet line {v!r} not found")
    return rows


@claim(H)
def resnet_bn_no_skip_effect(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"the two shallow nets have about the same top eigenvalue: ({FLOAT}) with skips, ({FLOAT}) without"
    )
    rows = _resnets(nb)
    a, b = rows["skip + BN"][1], rows["no skip + BN"][1]
    txt = f"{rows['skip + BN'][2]} / {rows['no skip + BN'][2]}"
    nb.check(
        agrees(Num(q.group(1)), a) and agrees(Num(q.group(2)), b),
        s,
        txt,
        f"{q.group(1)} and {q.group(2)}",
    )
    # "about the same" ("no skip effect at this depth"): within 25% of each other (printed ratio
    # 1.09; removing the skips without batch norm: 2.29)
    nb.check(max(a, b) / min(a, b) <= 1.25, s, txt, "ratio <= 1.25")
    steps = re.search(r"one block per stage, (\d+) Adam steps", nb.md)
    nb.check(
        steps and all(r[0] == int(steps.group(1)) for r in rows.values()),
        s,
        str([r[0] for r in rows.values()]),
        f"every variant trained {steps and steps.group(1)} steps",
    )


@claim(H)
def resnet_no_bn_skip_more_than_doubles(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"Without batch norm, removing the skips more than doubles it \(({FLOAT}) to ({FLOAT})\), "
        r"and batch norm lowers it in both cases"
    )
    rows = _resnets(nb)
    a, b = rows["skip, no BN"][1], rows["no skip, no BN"][1]
    txt = "; ".join(r[2] for r in rows.values())
    nb.check(
        agrees(Num(q.group(1)), a) and agrees(Num(q.group(2)), b),
        s,
        txt,
        f"{q.group(1)} to {q.group(2)}",
    )
    # "more than doubles": ratio > 2 (printed 146.7 / 63.92 = 2.29)
    nb.check(b / a > 2.0, s, txt, f"ratio {b / a:.3f} > 2")
    # "batch norm lowers it in both cases"
    nb.check(
        rows["skip + BN"][1] < a and rows["no skip + BN"][1] < b,
        s,
        txt,
        "BN top eigenvalue lower, with and without skips",
    )


@claim(H, quick=True)
def eos_threshold(nb: NB, quick: bool):
    s, q = (
        nb.sentence(rf"overshooting 2/lr = ({FLOAT})")
        if not quick
        else nb.sentence(r"until it reaches `2/lr`")
    )
    m = nb.printed(
        rf"TrainResult\(steps=(\d+), [^\n]*?\) threshold 2/lr = ({FLOAT}) products per measurement: \[([^\]]*)\]"
    )
    lr = float(nb.in_code(rf"\blr = ({FLOAT})").group(1))
    every = int(nb.in_code(r"sharpness_callback\(every=(\d+)").group(1))
    thr, steps, hvps = Num(m.group(2)), int(m.group(1)), nums(m.group(3))
    nb.check(agrees(thr, exact(2 / lr)), s, m.group(0)[:80], f"2/lr = {2 / lr}")
    if not quick:
        nb.check(
            agrees(Num(q.group(1)), exact(2 / lr)),
            s,
            f"threshold 2/lr = {thr!r}",
            f"{q.group(1)} = 2/lr",
        )
    # "measures the top eigenvalue every few steps": one measurement every `every` steps, step 0 included
    nb.check(
        len(hvps) == steps // every + 1,
        s,
        f"{len(hvps)} measurements over {steps} steps",
        f"{steps // every + 1} (every {every} steps)",
    )


@claim(H, quick=True)
def adam_threshold(nb: NB, quick: bool):
    s, q = (
        nb.sentence(rf"stays below 38/lr = ({FLOAT})")
        if not quick
        else nb.sentence(r"= 38/lr` \(Cohen et al\. 2022\)")
    )
    m = nb.printed(rf"threshold 38/lr = ({FLOAT})")
    alr = float(nb.in_code(rf"\balr = ({FLOAT})").group(1))
    b1 = 0.9  # optax.adam's default beta1 (the notebook uses optax.adam(alr))
    nb.check(
        abs((2 + 2 * b1) / (1 - b1) - 38) < 1e-9,
        s,
        "(2 + 2 beta1) / (1 - beta1)",
        "38 for beta1 = 0.9",
    )
    nb.check(agrees(Num(m.group(1)), exact(38 / alr)), s, m.group(0), f"38/lr = {38 / alr}")
    if not quick:
        nb.check(agrees(Num(q.group(1)), exact(38 / alr)), s, m.group(0), f"{q.group(1)} = 38/lr")


@claim(H)
def large_batch_sharper(nb: NB, quick: bool):
    # implied: the section reproduces Keskar et al.'s finding with its two MLPs
    s, _ = nb.sentence(r"large-batch training ends in sharper minima")
    rows = {
        int(x.group(1)): (Num(x.group(2)), Num(x.group(3)), x.group(0))
        for x in nb.printed_all(
            rf"^batch\s+(\d+): SharpnessResult\(max_eigenvalue=({FLOAT}), trace=({FLOAT}) \+- ({FLOAT}),"
        )
    }
    if 16 not in rows or DIGITS_TRAIN not in rows:
        raise LabelNotFound(
            f"{nb.name}: printed lines 'batch 16' and 'batch {DIGITS_TRAIN}' not found"
        )
    small, full = rows[16], rows[DIGITS_TRAIN]
    nb.check(
        full[0] > small[0] and full[1] > small[1],
        s,
        f"{small[2]} / {full[2]}",
        "full batch: larger top eigenvalue and trace than batch 16",
    )


@claim(H, quick=True)
def product_counts(nb: NB, quick: bool):
    s, _ = nb.sentence(r"the results carry their product counts")
    m = nb.printed(r"top-k: (\d+) products; density: (\d+) ; trace: (\d+) ; decomposition: (\d+)")
    each = [
        int(nb.printed(p).group(1))
        for p in (
            r"EigenResult\(largest, [^)]*?num_hvps=(\d+)\)",
            r"DensityResult\(.*?num_hvps=(\d+)\)",
            r"TraceResult\(.*?num_hvps=(\d+)",
            r"DecompositionResult\(.*?num_hvps=(\d+)\)",
        )
    ]
    nb.check([int(g) for g in m.groups()] == each, s, m.group(0), f"the results' num_hvps {each}")


# ---------------------------------------------------------------- loss_surfaces.ipynb
S = "loss_surfaces"


@claim(S, quick=True)
def committed_in_full_mode_surface(nb: NB, quick: bool):
    _mode_marker(
        nb,
        quick,
        r"`LANDSCAPE_QUICK=0` gives the full-size figures",
        r"\| QUICK = (True|False)$",
        lambda m: m.group(1) == "False",
    )
    if not quick:  # section 6 ran: no "not available" message
        s, _ = nb.sentence(r"Hessian eigenvector directions \(full mode\)")
        nb.check(
            "landscape.hessian not available" not in nb.out,
            s,
            "'landscape.hessian not available'",
            "section 6 ran",
        )


@claim(S, quick=True)
def whole_data_set(nb: NB, quick: bool):
    s, _ = nb.sentence(r"computed \*\*exactly over the whole data set\*\*")
    m = nb.printed(r"Dataset\(digits: train \((\d+), 64\), test \((\d+), 64\)")
    nb.check(
        (int(m.group(1)), int(m.group(2))) == (DIGITS_TRAIN, DIGITS_TEST),
        s,
        m.group(0),
        f"train {DIGITS_TRAIN}, test {DIGITS_TEST}",
    )


# the printed evaluation of the trained MLP: train accuracy, error, loss, test accuracy, error, loss
_RE_EVALUATE = (
    r"^\{'accuracy': Array\(([^,]*), dtype=float32\), 'error': Array\(([^,]*), dtype=float32\), "
    r"'loss': Array\(([^,]*), dtype=float32\)\} \{'accuracy': Array\(([^,]*), dtype=float32\), "
    r"'error': Array\(([^,]*), dtype=float32\), 'loss': Array\(([^,]*), dtype=float32\)\}"
)


def _evaluate(nb: NB):
    m = nb.printed(_RE_EVALUATE)
    keys = ("train_acc", "train_err", "train_loss", "test_acc", "test_err", "test_loss")
    return {k: Num(m.group(i + 1)) for i, k in enumerate(keys)}, m.group(0)


@claim(S, quick=True)
def interpolation_grid(nb: NB, quick: bool):
    s, q = nb.sentence(r"\((\d+) points as in Li et al\.; fewer in quick mode\)")
    m = nb.printed(r"SliceResult\(interpolate, grid (\d+), .*?non-finite=(\d+)\)")
    n = int(m.group(1))
    nb.check(
        n < int(q.group(1)) if quick else n == int(q.group(1)),
        s,
        m.group(0),
        f"grid {'<' if quick else '='} {q.group(1)}",
    )
    nb.check(int(m.group(2)) == 0, s, m.group(0), "every point finite")


@claim(S)
def interpolation_keeps_falling(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"the training loss falls monotonically from the initial to the final weights and keeps falling beyond \$t = 1\$"
    )
    m = nb.printed(rf"SliceResult\(interpolate, grid \d+, train loss min ({FLOAT})")
    ev, txt = _evaluate(nb)
    # the line's minimum over t in [-0.5, 1.5] is below L(t = 1) (the final weights' train loss):
    # with the fall monotone up to t = 1, the lower values lie beyond it
    nb.check(
        Num(m.group(1)) < ev["train_loss"],
        s,
        f"{m.group(0)}; final train loss {ev['train_loss']!r}",
        "line minimum < loss at t = 1",
    )


@claim(S)
def quoted_test_accuracy(nb: NB, quick: bool):
    s, q = nb.sentence(rf"the final weights overfit a little \(test accuracy ({FLOAT})%\)")
    ev, txt = _evaluate(nb)
    nb.check(
        agrees(Num(q.group(1), percent=True), ev["test_acc"]),
        s,
        txt,
        f"test accuracy {q.group(1)}%",
    )
    # "overfit a little": test worse than train, in loss and in accuracy
    nb.check(
        ev["test_loss"] > ev["train_loss"] and ev["test_acc"] < ev["train_acc"],
        s,
        txt,
        "test loss > train loss, test accuracy < train accuracy",
    )


@claim(S, quick=True)
def slice_2d_grid(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"(\d+) x (\d+) points on \$\[-1, 1\]\^2\$ by default \(Li et al\.'s grid; (\d+) x (\d+) in quick mode\)"
    )
    a, b = (int(q.group(3)), int(q.group(4))) if quick else (int(q.group(1)), int(q.group(2)))
    m = nb.printed(
        r"^(\d+) points x 2 splits in .*?SliceResult\(slice_2d, grid (\d+)x(\d+), .*?non-finite=(\d+)\)"
    )
    nb.check(
        (int(m.group(2)), int(m.group(3))) == (a, b) and int(m.group(1)) == a * b,
        s,
        m.group(0),
        f"{a} x {b} points",
    )
    nb.check(int(m.group(4)) == 0, s, m.group(0), "every point finite")


@claim(S, quick=True)
def slice_centre_is_trained_model(nb: NB, quick: bool):
    # the first-layer trick gives "same values" (code comment) and the slice passes through the
    # trained weights: the 1-D slice's centre loss is the model's train loss. Tolerance: printed
    # precision or 1e-4 relative (float32 sums in another order), whichever is larger
    nb.sentence(r"A filter-normalised random direction")
    s = (
        "first-layer trick: "
        + nb.in_code(r"first-layer trick: (same values)[^\n]*").group(1)
        + " (code comment)"
    )
    c = Num(nb.printed(rf"^loss at the centre: ({FLOAT})").group(1))
    ev, txt = _evaluate(nb)
    t = ev["train_loss"]
    nb.check(
        abs(c - t) <= max(c.h + t.h, 1e-4 * abs(t)),
        s,
        f"loss at the centre {c!r}; train loss {t!r}",
        "equal",
    )


@claim(S)
def slice_2d_basin_at_centre(nb: NB, quick: bool):
    s, _ = nb.sentence(r"Random filter-normalised slices\*\*: a convex-looking basin")
    m = nb.printed(rf"SliceResult\(slice_2d, grid \d+x\d+, train loss min ({FLOAT})")
    c = Num(nb.printed(rf"^loss at the centre: ({FLOAT})").group(1))
    # a basin around the trained weights: the grid's minimum is its centre, to the printed digits
    nb.check(
        agrees(Num(m.group(1)), c),
        s,
        f"{m.group(0)}; loss at the centre {c!r}",
        "grid minimum = centre loss",
    )


@claim(S)
def pca_two_components(nb: NB, quick: bool):
    s, _ = nb.sentence(r"two components carry almost all of the path's variance")
    m = nb.printed(r"^explained variance ratio: \[([^\]]*)\]")
    r = nums(m.group(1))
    # "almost all": at least 95% (printed 98.0%)
    nb.check(len(r) == 2 and sum(r) >= 0.95, s, m.group(0), "sum >= 0.95")


# ---------------------------------------------------------------- mode_connectivity.ipynb
C = "mode_connectivity"

_TABLE_COLS = ("max_minus_mean", "t_max", "max_excess", "t_max_excess", "start", "end", "max")
_TABLE_PATHS = ("linear", "bezier", "aligned")
_TABLE_HEADER = r"^\s+max_minus_mean\s+t_max\s+max_excess\s+t_max_excess\s+start\s+end\s+max\n"
_TABLE_ROW = r"(?:train|test)/(?:loss|error)(?:\s+" + FLOAT + r"){7}\n"


def _re_table_cell(path: str, row: str, col: str) -> str:
    """One value of one barrier table (group 1): the table is the n-th printed one, as in
    :func:`_tables` (anchored at the start of the outputs, so it matches once)."""
    k, ci = _TABLE_PATHS.index(path) + 1, _TABLE_COLS.index(col)
    return (
        rf"\A(?:[\s\S]*?{_TABLE_HEADER}){{{k}}}(?:{_TABLE_ROW})*?"
        rf"^{re.escape(row)}(?:[ \t]+{FLOAT}){{{ci}}}[ \t]+({FLOAT})"
    )


def _tables(nb: NB):
    """The three barrier tables (linear, Bezier, aligned) in printed order: {row: {col: Num}}."""
    out = []
    for t in nb.printed_all(_TABLE_HEADER + r"((?:" + _TABLE_ROW + r")+)"):
        rows = {}
        for line in t.group(1).strip().splitlines():
            name, *vals = line.split()
            rows[name] = dict(zip(_TABLE_COLS, (Num(v, sig=5) for v in vals)))  # f"{v:>16.5g}"
        out.append(rows)
    if len(out) != 3:
        raise LabelNotFound(
            f"{nb.name}: expected 3 barrier tables (linear, Bezier, aligned), found {len(out)}"
        )
    return dict(zip(_TABLE_PATHS, out))


@claim(C, quick=True)
def committed_in_full_mode_connect(nb: NB, quick: bool):
    _mode_marker(
        nb,
        quick,
        r"set it to `0` for the width sweep and the batch-norm section",
        r"^(full|quick) mode \[",
        lambda m: m.group(1) == "full",
    )


@claim(C, quick=True)
def linear_barrier_clear(nb: NB, quick: bool):
    s, _ = nb.sentence(r"The straight line between the two solutions has a clear loss barrier")
    lin = _tables(nb)["linear"]["train/loss"]
    # "clear": the barrier is > 10x the larger endpoint loss (printed: ~2000x)
    nb.check(
        lin["max_minus_mean"] > 10 * max(lin["start"], lin["end"]),
        s,
        f"train/loss barrier {lin['max_minus_mean']!r}, ends {lin['start']!r}/{lin['end']!r}",
        "> 10x the ends",
    )


@claim(C, quick=True)
def bezier_almost_none(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"A trained quadratic Bezier curve between the same endpoints has almost none"
    )
    t = _tables(nb)
    bz, lin = (
        t["bezier"]["train/loss"]["max_minus_mean"],
        t["linear"]["train/loss"]["max_minus_mean"],
    )
    # "almost none": < 5% of the straight line's (printed 0.09%)
    nb.check(
        bz < 0.05 * lin,
        s,
        f"Bezier barrier {bz!r}, straight line {lin!r}",
        "< 5% of the straight line's",
    )
    if not quick:  # the printed percentage is that of the table's values, to its 2 decimals
        m = nb.printed(rf"\(barrier ({FLOAT}), ({FLOAT})% of the straight line's\)")
        lo, hi = (bz - bz.h) / (lin + lin.h), (bz + bz.h) / (lin - lin.h)
        p = Num(m.group(2), percent=True)
        nb.check(lo - p.h <= p <= hi + p.h, s, m.group(0), f"{100 * bz / lin:.3f}% from the table")


@claim(C, quick=True)
def weight_matching_lowers_barrier(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"After weight matching \(permutation groups derived by tracing the model\), the straight line's barrier drops"
    )
    t = _tables(nb)
    split = "train" if quick else "test"
    m = nb.printed(
        rf"linear barrier \(train loss\) ({FLOAT}) -> ({FLOAT}) after weight matching \((\d+)% lower\); "
        rf"{split} error barrier ({FLOAT}) -> ({FLOAT})"
    )
    before, after = (
        t["linear"]["train/loss"]["max_minus_mean"],
        t["aligned"]["train/loss"]["max_minus_mean"],
    )
    nb.check(after < before, s, m.group(0), "train loss barrier lower after matching")
    nb.check(
        Num(m.group(5)) < Num(m.group(4)),
        s,
        m.group(0),
        f"{split} error barrier lower after matching",
    )
    nb.check(
        agrees(Num(m.group(1)), before) and agrees(Num(m.group(2)), after),
        s,
        m.group(0),
        "the tables' barriers",
    )
    pct = Num(m.group(3))
    nb.check(
        abs(100 * (1 - after / before) - pct) <= pct.h + 0.01,
        s,
        m.group(0),
        f"{100 * (1 - after / before):.2f}% lower",
    )


@claim(C, quick=True)
def aligned_same_function(nb: NB, quick: bool):
    s, _ = nb.sentence(r"The permuted B computes exactly the same function")
    m = nb.printed(rf"^max \|f_B - f_B aligned\| = ({FLOAT})")
    t = _tables(nb)
    # exactly the same function up to float32 rounding of sums in another order: < 1e-4 on logits
    # of order 10 (printed 5.7e-6); so the aligned path ends at B's loss
    nb.check(Num(m.group(1)) < 1e-4, s, m.group(0), "< 1e-4")
    for row in t["linear"]:
        e1, e2 = t["linear"][row]["end"], t["aligned"][row]["end"]
        nb.check(
            abs(e1 - e2) <= e1.h + e2.h + 1e-4 * abs(e1),
            s,
            f"{row} end {e1!r} (linear) vs {e2!r} (aligned)",
            "equal",
        )


@claim(C, quick=True)
def bezier_endpoints_fixed(nb: NB, quick: bool):
    s, _ = nb.sentence(r"with the endpoints fixed")
    t = _tables(nb)
    for row, v in t["linear"].items():
        for col in ("start", "end"):
            nb.check(
                agrees(v[col], t["bezier"][row][col]),
                s,
                f"{row} {col}: linear {v[col]!r}, Bezier {t['bezier'][row][col]!r}",
                "equal",
            )


@claim(C, quick=True)
def barrier_conventions(nb: NB, quick: bool):
    s, _ = nb.sentence(r"`max_minus_mean` is \$\\max_t v\(t\) - \(v\(0\) \+ v\(1\)\)/2\$")
    for path, rows in _tables(nb).items():
        for row, v in rows.items():
            mmm = v["max"] - (v["start"] + v["end"]) / 2
            tol = v["max_minus_mean"].h + v["max"].h + (v["start"].h + v["end"].h) / 2
            nb.check(
                abs(v["max_minus_mean"] - mmm) <= tol,
                s,
                f"{path} {row}: {v}",
                f"max_minus_mean = {mmm:.6g}",
            )
            # max_excess >= v(t_max) - ... >= max_minus_mean - |v(1) - v(0)| / 2, and both t in [0, 1]
            nb.check(
                0 <= v["t_max"] <= 1 and 0 <= v["t_max_excess"] <= 1,
                s,
                f"{path} {row}: {v}",
                "t in [0, 1]",
            )


@claim(C, quick=True)
def whole_data_set_connect(nb: NB, quick: bool):
    s, q = nb.sentence(
        r"Every value is exact over the whole training \((\d+) examples\) or test \((\d+)\) set"
    )
    n = {"train": int(q.group(1)), "test": int(q.group(2))}
    nb.check(n == {"train": DIGITS_TRAIN, "test": DIGITS_TEST}, s, str(n), "the digits split")
    for path, rows in _tables(nb).items():
        if quick:
            nb.check(
                not [r for r in rows if r.startswith("test")],
                s,
                str(list(rows)),
                "train rows only (quick)",
            )
        elif "test/error" not in rows:
            raise LabelNotFound(f"{nb.name}: {path} table has no test/error row (full mode)")
        for row in [r for r in rows if r.endswith("/error")]:
            for col in ("start", "end", "max"):
                v = rows[row][col]
                k = v * n[row.split("/")[0]]
                # an error over the whole set is a multiple of 1/N (to the printed digits)
                nb.check(
                    abs(k - round(k)) <= v.h * n[row.split("/")[0]] + 1e-6,
                    s,
                    f"{path} {row} {col} {v!r}",
                    f"a multiple of 1/{n[row.split('/')[0]]}",
                )


def _re_sweep(width: int | None = None) -> str:
    """A printed line of the width sweep (every width, or one): width, train loss barrier before,
    after, % lower, test error barrier before, after."""
    w = str(width) if width else r"\d+"
    return (
        rf"^width\s+({w}): train loss barrier ({FLOAT}) -> ({FLOAT}) \((\d+)% lower\); "
        rf"test error barrier ({FLOAT}) -> ({FLOAT})"
    )


def _sweep(nb: NB):
    rows = {}
    for x in nb.printed_all(_re_sweep()):
        rows[int(x.group(1))] = (Num(x.group(2)), Num(x.group(3)), x.group(0))
    return rows


@claim(C)
def width_sweep_quoted(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"In this run the barrier left after matching shrinks from ({FLOAT}) \(width (\d+)\) to ({FLOAT}) "
        rf"\(width (\d+)\), with the unaligned barrier falling from ({FLOAT}) to ({FLOAT})\. "
        rf"At width (\d+) both stop falling \(({FLOAT}) after matching, ({FLOAT}) before\)"
    )
    rows = _sweep(nb)
    w0, w1, w2 = int(q.group(2)), int(q.group(4)), int(q.group(7))
    for w in (w0, w1, w2):
        if w not in rows:
            raise LabelNotFound(f"{nb.name}: printed line 'width {w}: ...' not found")
    txt = "; ".join(rows[w][2] for w in sorted(rows))
    checks = [
        (q.group(1), rows[w0][1]),
        (q.group(3), rows[w1][1]),
        (q.group(5), rows[w0][0]),
        (q.group(6), rows[w1][0]),
        (q.group(8), rows[w2][1]),
        (q.group(9), rows[w2][0]),
    ]
    for quoted, printed in checks:
        nb.check(agrees(Num(quoted), printed), s, txt, f"{quoted} (printed {printed!r})")
    # "shrinks"/"falling" from w0 to w1 (every width in between), "both stop falling" at w2
    ws = [w for w in sorted(rows) if w0 <= w <= w1]
    for i in (0, 1):
        vals = [rows[w][i] for w in ws]
        nb.check(
            all(b < a for a, b in zip(vals, vals[1:])),
            s,
            txt,
            f"{'unaligned' if i == 0 else 'matched'} barrier falls over {ws}",
        )
        nb.check(rows[w2][i] > rows[w1][i], s, txt, f"width {w2} above width {w1}")


@claim(C)
def width_sweep_drops_more(nb: NB, quick: bool):
    s, q = nb.sentence(r"it drops more for wider networks, up to width (\d+) in this run")
    rows = _sweep(nb)
    top = int(q.group(1))
    ws = [w for w in sorted(rows) if w <= top]
    nb.check(len(ws) >= 3 and top in rows, s, str(sorted(rows)), f"widths up to {top}")
    # "drops more": the relative drop 1 - after/before grows with width up to `top` (from the
    # 4-decimal barriers; the printed rounded percentages 82, 91, 95, 95, 96 tie at 64/128)
    drop = [1 - rows[w][1] / rows[w][0] for w in ws]
    txt = "; ".join(rows[w][2] for w in ws)
    nb.check(
        all(b > a for a, b in zip(drop, drop[1:])),
        s,
        txt,
        f"relative drop increasing: {np.round(drop, 4)}",
    )
    summary = {
        int(x.group(1)): (Num(x.group(2)), Num(x.group(3)))
        for x in nb.printed_all(rf"^width\s+(\d+): ({FLOAT}) -> ({FLOAT}) \(\d+% lower\)$")
    }
    nb.check(
        {w: v for w, v in summary.items()} == {w: rows[w][:2] for w in rows},
        s,
        str(summary),
        "summary = sweep",
    )


@claim(C)
def batch_norm_reestimate(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"even the endpoint B .*? looks terrible; re-estimating the statistics from training batches at each \$t\$ .*? gives the right values"
    )
    rows = {
        x.group(1): (Num(x.group(2)), Num(x.group(3)), x.group(0))
        for x in nb.printed_all(
            rf"^(fixed|interpolate|reestimate)\s+loss at t=0 ({FLOAT}), t=1 ({FLOAT}), max ({FLOAT})$"
        )
    }
    for p in ("fixed", "reestimate"):
        if p not in rows:
            raise LabelNotFound(f"{nb.name}: printed line '{p} loss at t=0 ...' not found")
    f, r = rows["fixed"], rows["reestimate"]
    # B is A's function: with A's statistics it looks terrible (> 5x A's loss; printed 9.2x), with
    # re-estimated statistics it has A's loss (to the printed 4 decimals)
    nb.check(f[1] > 5 * f[0], s, f[2], "fixed: loss at B > 5x loss at A")
    nb.check(agrees(r[0], r[1]), s, r[2], "reestimate: loss at B = loss at A")


# ---------------------------------------------------------------- ntk.ipynb
N = "ntk"


def _re_mlp_conv(param: str) -> str:
    """The printed convergence line of an MLP: mean distance, seed-averaged, slope."""
    return rf"^{param} mean distance \[([^\]]*)\] seed-averaged \[([^\]]*)\] slope ({FLOAT})$"


_RE_CNN_CONV = rf"^CNN mean distance \[([^\]]*)\] \+- \[([^\]]*)\] seed-averaged \[([^\]]*)\] slope ({FLOAT})$"


def _mlp_conv(nb: NB, param: str):
    m = nb.printed(_re_mlp_conv(param))
    return nums(m.group(1), 4), nums(m.group(2), 4), Num(m.group(3)), m.group(0)


def _cnn_conv(nb: NB):
    m = nb.printed(_RE_CNN_CONV)
    return nums(m.group(1), 4), nums(m.group(3), 4), Num(m.group(4)), m.group(0)


def _widths(nb: NB, var: str, quick: bool) -> list[int]:
    m = nb.in_code(rf"{var}(\[[\d, ]+\]) if QUICK else (\[[\d, ]+\])")
    return [int(v) for v in re.findall(r"\d+", m.group(1 if quick else 2))]


def _series(nb: NB, which: str, quick: bool):
    if which == "CNN":
        return (*_cnn_conv(nb), _widths(nb, r"\bcwidths = ", quick))
    return (*_mlp_conv(nb, which), _widths(nb, r"\bwidths = ", quick))


@claim(N, quick=True)
def committed_in_full_mode_ntk(nb: NB, quick: bool):
    _mode_marker(
        nb,
        quick,
        r"set it to `0` for the width sweeps",
        r"^(full|quick) mode \[",
        lambda m: m.group(1) == "full",
    )


def _seed_averaged_sentence(nb: NB):
    return nb.sentence(
        r"and the distance of the seed-averaged kernel: lower at every width \(the seeds' "
        rf"fluctuations partly average out, here by a factor of about ({FLOAT}) for the MLPs' 4 seeds "
        rf"and ({FLOAT}) to ({FLOAT}) for the CNN's 8\) but falling at "
        r"about the same rate"
    )


def _conv_claims(which: str, quick_ok: bool):
    @claim(N, quick=quick_ok, name=f"approaches_analytic[{which}]")
    def approaches(nb: NB, quick: bool):
        s, _ = nb.sentence(
            r"how the empirical NTK at initialisation approaches the analytic one as width grows "
            r"\(MLP and CNN, NTK and standard parameterisation\)"
        )
        mean, avg, slope, txt, widths = _series(nb, which, quick)
        nb.check(
            len(mean) == len(widths) and all(b < a for a, b in zip(mean, mean[1:])),
            s,
            txt,
            f"mean distance falls with width over {widths}",
        )

    @claim(N, quick=which != "standard", name=f"seed_averaged_lower[{which}]")
    def lower(nb: NB, quick: bool):
        s, _ = _seed_averaged_sentence(nb)
        mean, avg, slope, txt, widths = _series(nb, which, quick)
        # "lower at every width": below the mean distance in the printed values (full mode). At
        # quick sizes (2 seeds) only the triangle inequality ||mean_i K_i - K|| <=
        # mean_i ||K_i - K|| is asserted, to the printed 4 decimals
        if quick:
            ok = all(a <= m + a.h + m.h for a, m in zip(avg, mean))
        else:
            ok = all(a < m for a, m in zip(avg, mean))
        nb.check(
            len(avg) == len(mean) == len(widths) and ok,
            s,
            txt,
            f"seed-averaged {'<=' if quick else '<'} mean distance at every width {widths}",
        )

    @claim(N, name=f"seed_averaged_factor_quoted[{which}]")
    def factor(nb: NB, quick: bool):
        s, q = _seed_averaged_sentence(nb)
        mean, avg, slope, txt, widths = _series(nb, which, quick)
        if which == "CNN":
            # "3 to 4.5 for the CNN's 8": every ratio in the quoted range, to half a unit of each
            # bound's last digit, i.e. [2.5, 4.55] (printed 3.0, 4.4, 3.0)
            lo, hi = Num(q.group(2)), Num(q.group(3))
            lo_b, hi_b = float(lo) - lo.h, float(hi) + hi.h
        else:
            # "by a factor of about 2 for the MLPs' 4 seeds": mean distance / seed-averaged
            # distance within 25% of the quoted factor, i.e. in [1.5, 2.5], at every width
            # (printed MLPs: 1.60 to 2.25)
            f = float(q.group(1))
            lo_b, hi_b = 0.75 * f, 1.25 * f
        ratios = [m / a for m, a in zip(mean, avg)]
        nb.check(
            len(ratios) == len(widths) and all(lo_b <= r <= hi_b for r in ratios),
            s,
            txt,
            f"mean / seed-averaged {np.round(ratios, 2)} in [{lo_b:g}, {hi_b:g}]",
        )

    @claim(N, name=f"seed_averaged_same_rate[{which}]")
    def same_rate(nb: NB, quick: bool):
        s, _ = _seed_averaged_sentence(nb)
        mean, avg, slope, txt, widths = _series(nb, which, quick)
        # "falling at about the same rate": the notebook's own measure of how fast a distance
        # falls, the least-squares log-log slope over the widths (it prints that of the mean),
        # is negative for the seed-averaged distance and within 0.1 of the mean's (printed:
        # differences 0.007, 0.010, 0.001)
        sm, sa = ls_slope(widths, mean), ls_slope(widths, avg)
        nb.check(
            abs(sm - slope) <= slope.h + 0.005,
            s,
            txt,
            f"printed slope = LS slope of the means {sm:.3f}",
        )
        nb.check(
            sa < 0 and abs(sa - sm) <= 0.1,
            s,
            txt,
            f"LS slope of the seed-averaged distance {sa:.3f} < 0 and within 0.1 of the mean's "
            f"{sm:.3f}",
        )

    @claim(N, name=f"slope_about_half[{which}]")
    def half(nb: NB, quick: bool):
        s, _ = nb.sentence(r"slope about -1/2 in log-log")
        mean, avg, slope, txt, widths = _series(nb, which, quick)
        # "about -1/2": within 20% of the exponent, i.e. in [-0.6, -0.4] (printed -0.48/-0.46/-0.45)
        nb.check(abs(slope / -0.5 - 1) <= 0.2, s, txt, "slope in [-0.6, -0.4]")
        nb.check(
            abs(ls_slope(widths, mean) - slope) <= slope.h + 0.005,
            s,
            txt,
            "printed slope = LS slope of the means",
        )


_conv_claims(
    "ntk", quick_ok=True
)  # the suite's quick test already asserts it (tests/ntk/test_notebook.py)
_conv_claims("standard", quick_ok=False)  # quick mode runs one parameterisation
_conv_claims("CNN", quick_ok=False)


@claim(N)
def cnn_seed_averaged_flat(nb: NB, quick: bool):
    s, q = nb.sentence(
        rf"The CNN's seed-averaged distance does not fall from width (\d+) to (\d+) \(({FLOAT}) at "
        r"both\): three widths and a few seeds are too few"
    )
    mean, avg, slope, txt, widths = _series(nb, "CNN", quick)
    w1, w2, v = int(q.group(1)), int(q.group(2)), Num(q.group(3))
    nb.check(
        len(widths) == 3 and w1 in widths and w2 in widths and len(avg) == 3,
        s,
        f"widths {widths}; {txt}",
        f"three widths, {w1} and {w2} among them",
    )
    a1, a2 = avg[widths.index(w1)], avg[widths.index(w2)]
    nb.check(agrees(v, a1) and agrees(v, a2), s, txt, f"{v!r} at widths {w1} and {w2}")
    # "does not fall": not lower at the wider width (printed values)
    nb.check(a2 >= a1, s, txt, f"seed-averaged at width {w2} >= at width {w1}")


_FVI_TASKS = ("digits", "mnist1d", "teacher")


def _re_fvi(task: str | None = None) -> str:
    """A printed finite-versus-infinite line (every task, or one): task, finite acc, linearised,
    infinite (same t), NTK regression, NNGP regression, RMSE finite-infinite, finite-linearised."""
    t = task or "|".join(_FVI_TASKS)
    return (
        rf"^({t})\s+finite acc \[([^\]]*)\] linearised \[([^\]]*)\] "
        rf"infinite \(same t\) ({FLOAT}) NTK regression ({FLOAT}) NNGP regression ({FLOAT}); "
        rf"RMSE finite-infinite \[([^\]]*)\] finite-linearised \[([^\]]*)\]$"
    )


def _fvi(nb: NB):
    rows = {}
    for x in nb.printed_all(_re_fvi()):
        rows[x.group(1)] = dict(
            acc=nums(x.group(2), 3), inf=Num(x.group(4)), rmse=nums(x.group(7), 3), txt=x.group(0)
        )
    return rows


# the group of _fvi_sentence holding each task's quoted RMSE exponent
_EXPONENT_GROUP = {"digits": 3, "mnist1d": 4, "teacher": 5}


def _fvi_sentence(nb: NB):
    return nb.sentence(
        r"Reading the numbers \(widths ([\d, ]+)\): each network's test outputs approach its own "
        r"infinite-width prediction, with the RMSE falling on every task \(digits ([\d., ]+), "
        rf"about like width\^({FLOAT}); MNIST-1D and the teacher a little more slowly, about "
        rf"width\^({FLOAT}) and width\^({FLOAT})\)"
    )


def _fvi_widths(q: re.Match) -> list[int]:
    return [int(w) for w in re.findall(r"\d+", q.group(1))]


def _task(nb: NB, task: str):
    rows = _fvi(nb)
    if task not in rows:
        raise LabelNotFound(f"{nb.name}: printed line '{task} finite acc ...' not found")
    return rows[task]


def _rmse_claims(task: str):
    @claim(N, name=f"rmse_approaches_infinite[{task}]")
    def approach(nb: NB, quick: bool):
        s, q = _fvi_sentence(nb)
        r = _task(nb, task)
        widths = _fvi_widths(q)
        nb.check(
            len(r["rmse"]) == len(widths) and all(b < a for a, b in zip(r["rmse"], r["rmse"][1:])),
            s,
            r["txt"],
            f"RMSE finite-infinite falls over widths {widths}",
        )
        if task == "digits":
            quoted = [Num(v) for v in re.findall(FLOAT, q.group(2))]
            nb.check(
                len(quoted) == len(r["rmse"])
                and all(agrees(a, b) for a, b in zip(quoted, r["rmse"])),
                s,
                r["txt"],
                f"digits RMSE {quoted}",
            )

    @claim(N, name=f"rmse_exponent_quoted[{task}]")
    def exponent(nb: NB, quick: bool):
        s, q = _fvi_sentence(nb)
        r = _task(nb, task)
        widths = _fvi_widths(q)
        e = Num(q.group(_EXPONENT_GROUP[task]))
        sl, sl_h = ls_slope_h(widths, r["rmse"])
        # "about like width^e": the LS log-log slope of the RMSE over the widths equals the quoted
        # exponent to its quoted precision (half a unit in its last digit: -0.4 means
        # [-0.45, -0.35], -0.37 means [-0.375, -0.365]), widened by the slope's uncertainty from
        # the printed RMSE's rounding (sl_h, about 0.003)
        nb.check(
            len(r["rmse"]) == len(widths) and abs(sl - e) <= e.h + sl_h,
            s,
            r["txt"],
            f"LS slope of the RMSE {sl:.4f} +- {sl_h:.4f} = {e!r} to +-{e.h:g}",
        )


for _t in _FVI_TASKS:
    _rmse_claims(_t)


@claim(N)
def rmse_others_a_little_slower(nb: NB, quick: bool):
    s, q = _fvi_sentence(nb)
    widths = _fvi_widths(q)
    rows = {t: _task(nb, t) for t in _FVI_TASKS}
    sl = {t: ls_slope(widths, r["rmse"]) for t, r in rows.items()}
    txt = "; ".join(r["txt"] for r in rows.values())
    # "MNIST-1D and the teacher a little more slowly": each one's LS log-log slope is shallower
    # than digits' by less than 0.15 (printed: by 0.10 and 0.04, against digits' -0.41)
    for t in ("mnist1d", "teacher"):
        nb.check(
            sl["digits"] < sl[t] < sl["digits"] + 0.15,
            s,
            txt,
            f"{t} LS slope {sl[t]:.3f} above digits' {sl['digits']:.3f} by less than 0.15",
        )


def _digits_accuracy(nb: NB):
    """The digits accuracy sentence, the widths it quotes as indices into the printed widths, and
    the digits row."""
    s, q = nb.sentence(
        rf"on digits it falls from ({FLOAT}) at width (\d+) to ({FLOAT}) at width (\d+) and stays "
        rf"there \(({FLOAT}) at (\d+)\)"
    )
    _, fq = _fvi_sentence(nb)
    widths = _fvi_widths(fq)
    r = _task(nb, "digits")
    quoted = [(Num(q.group(i)), int(q.group(i + 1))) for i in (1, 3, 5)]
    nb.check(
        all(w in widths for _, w in quoted) and len(r["acc"]) == len(widths),
        s,
        f"widths {widths}; {r['txt']}",
        f"widths {[w for _, w in quoted]} among the printed widths",
    )
    return s, [(v, widths.index(w)) for v, w in quoted], r


@claim(N)
def digits_accuracy_quoted(nb: NB, quick: bool):
    s, quoted, r = _digits_accuracy(nb)
    for v, i in quoted:
        nb.check(agrees(v, r["acc"][i]), s, r["txt"], f"{v!r} at width index {i}")


@claim(N)
def digits_accuracy_falls_then_stays(nb: NB, quick: bool):
    s, quoted, r = _digits_accuracy(nb)
    (_, i0), (_, i1), (_, i2) = quoted
    acc = r["acc"]
    # "falls from width 64 to width 1024": lower at every printed width in between
    seg = acc[i0 : i1 + 1]
    nb.check(
        i0 < i1 < i2 and all(b < a for a, b in zip(seg, seg[1:])),
        s,
        r["txt"],
        "finite accuracy falls at every width from the first quoted width to the second",
    )
    # "and stays there": at the third width within 0.02 of its value at the second (printed: 0.010)
    nb.check(
        abs(acc[i2] - acc[i1]) <= 0.02,
        s,
        r["txt"],
        f"|{acc[i2]!r} - {acc[i1]!r}| <= 0.02",
    )


@claim(N)
def finite_below_infinite(nb: NB, quick: bool):
    s, _ = nb.sentence(r"stays below the \"infinite \(same t\)\" column on every task")
    rows = _fvi(nb)
    nb.check(
        set(rows) == {"digits", "mnist1d", "teacher"},
        s,
        str(sorted(rows)),
        "three tasks (full mode)",
    )
    for r in rows.values():
        nb.check(
            max(r["acc"]) < r["inf"], s, r["txt"], "every finite accuracy < infinite (same t)"
        )


@claim(N, quick=True)
def drift_falls_with_width(nb: NB, quick: bool):
    s, _ = nb.sentence(r"the wider the network, the less its tangent kernel moves")
    m = nb.printed(rf"^final drift \[([^\]]*)\] slope ({FLOAT})$")
    d = nums(m.group(1), 4)
    nb.check(
        len(d) >= 2 and all(b < a for a, b in zip(d, d[1:])),
        s,
        m.group(0),
        "final drift falls with width",
    )


@claim(N)
def drift_like_inverse_width(nb: NB, quick: bool):
    s, _ = nb.sentence(
        r"the change falls about like 1/width .*? faster than the O\(1/sqrt\(width\)\) bound"
    )
    m = nb.printed(rf"^final drift \[([^\]]*)\] slope ({FLOAT})$")
    d, slope = nums(m.group(1), 4), Num(m.group(2))
    widths = [
        int(v)
        for v in re.findall(
            r"\d+",
            nb.in_code(r"kernel_drift\(make, (\[[\d, ]+\]) if QUICK else (\[[\d, ]+\])").group(2),
        )
    ]
    # "about like 1/width": within 20% of -1 (printed -0.89); "faster than 1/sqrt": < -1/2
    nb.check(
        abs(slope / -1 - 1) <= 0.2 and slope < -0.5,
        s,
        m.group(0),
        "slope in [-1.2, -0.8] and < -0.5",
    )
    nb.check(
        abs(ls_slope(widths, d) - slope) <= slope.h + 0.005,
        s,
        m.group(0),
        "printed slope = LS slope of the drifts",
    )


# ---------------------------------------------------------------------------------------------
# contradicted claims (the notebook's text is to be fixed)

XFAIL: dict = {}


def _cases():
    for notebook, claims in CLAIMS.items():
        for cid in claims:
            marks = []
            if (notebook, cid) in XFAIL:
                marks = [
                    pytest.mark.xfail(
                        strict=True, raises=AssertionError, reason=XFAIL[(notebook, cid)]
                    )
                ]
            yield pytest.param(notebook, cid, id=f"{notebook}:{cid}", marks=marks)


@pytest.mark.parametrize("notebook, claim_id", list(_cases()))
def test_claim(notebook, claim_id):
    fn, _ = CLAIMS[notebook][claim_id]
    fn(committed(notebook), False)


# ---------------------------------------------------------------------------------------------
# the quick-mode run

_TITLES = {
    "# Hessian spectra": H,
    "# Loss surfaces": S,
    "# Mode connectivity": C,
    "# Neural tangent kernels": N,
}


def check_quick_claims(nb, name: str | None = None) -> list[str]:
    """Assert the claims that hold at quick sizes on ``nb``, a notebook executed in quick mode
    (``tests._util.run_notebook(path)``). ``name``: the notebook's stem, found from its title
    when omitted. Raises one AssertionError listing every failed claim; returns the claim ids
    checked."""
    if name is None:
        title = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
        name = next((v for k, v in _TITLES.items() if title.startswith(k)), None)
        assert name, f"unknown notebook (title {title[:60]!r}); pass name="
    wrapped = NB(nb, name)
    failures, checked = [], []
    for cid, (fn, quick_ok) in CLAIMS[name].items():
        if not quick_ok:
            continue
        checked.append(cid)
        try:
            fn(wrapped, True)
        except (AssertionError, LabelNotFound) as e:
            failures.append(f"[{cid}] {e}")
    assert not failures, "quick-mode claims failed:\n" + "\n".join(failures)
    return checked


# ---------------------------------------------------------------------------------------------
# the checks can fail: corrupt one number (or the text) in a copy of the committed notebook
#
# A mutation is (notebook, claim id, "out" | "md", what to change, how):
#
# * "out": a printed number, located by a regex over the outputs (the printed label the claim
#   reads, often the claim's own regex): ``pattern`` (group 1 is changed) or ``(pattern, group)``
#   (a group number or name). The regex must match exactly once. ``how`` computes the new text
#   from the located one and the match: scale(f) / shift(d) (the number, or the i-th number of a
#   printed array, times f / plus d), put(fn) (set to fn(the array's values, the match): e.g. one
#   value above the previous one, or relative to another printed number of the same match),
#   drop(i), to(text). The new number is printed like the old one (same decimals or exponent form,
#   finer where needed to differ), so the corruption follows the notebook when it is re-executed:
#   nothing here quotes a printed value.
# * "md": the exact markdown text (whitespace may wrap anywhere) and its replacement; it must occur
#   exactly once. Markdown changes only when someone edits it, so these are written out.

Change = Callable[[str, re.Match], str]


def _fmt_like(old: str, v: float) -> str:
    """``v`` printed like the number ``old`` (its decimals, or its mantissa's in e-notation),
    with more decimals where needed to differ from it."""
    mant, e, _ = old.lower().partition("e")
    d = len(mant.split(".")[1]) if "." in mant else 0
    for dd in range(d, d + 12):
        new = f"{v:.{dd}e}" if e else f"{v:.{dd}f}"
        if float(new) != float(old):
            return new
    raise ValueError(f"cannot print {v!r} differently from {old!r}")


def _edit(i: int | None, op: Callable[[float, list[float], re.Match], float]) -> Change:
    """Replace the i-th number of the located text (``i=None``: the text is one number) by
    ``op(its value, all the text's values, the match)``."""

    def change(t: str, m: re.Match) -> str:
        found = list(re.finditer(FLOAT, t))
        if i is None:
            assert len(found) == 1 and found[0].group() == t.strip(), f"not one number: {t!r}"
        x = found[0 if i is None else i]
        vals = [float(y.group()) for y in found]
        new = _fmt_like(x.group(), op(float(x.group()), vals, m))
        return t[: x.start()] + new + t[x.end() :]

    return change


def scale(f: float, i: int | None = None) -> Change:
    return _edit(i, lambda v, vals, m: v * f)


def shift(d: float, i: int | None = None) -> Change:
    return _edit(i, lambda v, vals, m: v + d)


def put(fn: Callable[[list[float], re.Match], float], i: int | None = None) -> Change:
    return _edit(i, lambda v, vals, m: fn(vals, m))


def rise(i: int) -> Change:
    """The i-th value of a printed array set to 1.2 x the one before it (no longer falling)."""
    return put(lambda vals, m: 1.2 * vals[i - 1], i)


def drop(i: int) -> Change:
    def change(t: str, m: re.Match) -> str:
        x = list(re.finditer(FLOAT + r"\s*", t))[i]
        return t[: x.start()] + t[x.end() :]

    return change


def to(text: str) -> Change:
    return lambda t, m: text


def _first(g: int | str) -> Callable[[list[float], re.Match], float]:
    """The first number of group ``g`` of the match."""
    return lambda vals, m: float(re.search(FLOAT, m.group(g)).group())


def _cell(path: str, row: str, col: str) -> str:
    return _re_table_cell(path, row, col)


F = FLOAT
_MLP_OR_CNN = {
    "ntk": _re_mlp_conv("ntk"),
    "standard": _re_mlp_conv("standard"),
    "CNN": _RE_CNN_CONV,
}
_MEAN, _AVG, _SLOPE = 1, {"ntk": 2, "standard": 2, "CNN": 3}, {"ntk": 3, "standard": 3, "CNN": 4}
# groups of _re_fvi: 2 finite acc, 4 infinite (same t), 7 RMSE finite-infinite
_ACC, _INF, _RMSE = 2, 4, 7

MUTATIONS = [
    # ---- hessian_spectrum
    (H, "committed_in_full_mode", "out", r"^(full) mode \[.*?\] Hessian on", to("quick")),
    (
        H,
        "committed_in_full_mode",
        "out",
        r"^(?:full|quick) mode \[.*?\] Hessian on (\d+) ",
        shift(-1),
    ),
    (
        H,
        "density_trace_agrees_with_hutchinson",
        "out",
        (
            rf"'slq_trace': (?P<slq>{F}), 'hutchinson_trace': ({F}), 'trace_std_error': (?P<se>{F})",
            2,
        ),
        put(lambda v, m: float(m["slq"]) + 2 * float(m["se"])),  # two standard errors away
    ),
    (
        H,
        "density_top_node_agrees_with_eigensolver",
        "out",
        rf"'top_eigenvalue': ({F})",
        scale(1.01),
    ),
    (
        H,
        "density_top_node_agrees_with_eigensolver",
        "out",
        rf"EigenResult\(largest, values=\[({F})",
        scale(1.01),
    ),
    (H, "bulk_near_zero", "out", rf"mass below the floor {F}: ({F})", scale(0.5)),
    (H, "gradient_overlap_quoted", "out", rf"OverlapResult\(k=\d+, fraction=({F})", scale(1.5)),
    (
        H,
        "gradient_overlap_quoted",
        "out",
        rf"OverlapResult\(k=\d+, fraction={F}, grad_norm=({F})\)",
        scale(1.5),
    ),
    (
        H,
        "gradient_overlap_quoted",
        "out",
        rf"TrainResult\(steps=\d+, train_loss=({F}), train_accuracy={F}, test_loss=",
        scale(3),
    ),
    (
        H,
        "gradient_overlap_quoted",
        "out",
        r"EigenResult\(largest, [^)]*?converged=(\d+)/",
        shift(-1),
    ),
    (H, "gradient_overlap_quoted", "md", "only 4% of its", "only 14% of its"),
    (H, "gradient_overlap_quoted", "md", "train loss 2e-4", "train loss 5e-4"),
    (
        H,
        "gradient_overlap_quoted",
        "md",
        "in the top 10 eigenvectors",
        "in the top 5 eigenvectors",
    ),
    (
        H,
        "gradient_overlap_is_sum_of_cos2",
        "out",
        r"OverlapResult\(.*?\) per eigenvector: \[([^\]]*)\]",
        shift(0.02, 0),
    ),
    (
        H,
        "ggn_split_traces",
        "out",
        rf"DecompositionResult\(traces: hessian={F}, ggn=({F})",
        scale(1.1),
    ),
    (
        H,
        "ggn_residual_small_outliers_in_ggn",
        "out",
        (rf"DecompositionResult\(traces: hessian=(?P<h>{F}), ggn={F}, residual=(?P<r>{F});", "r"),
        put(lambda v, m: -0.02 * float(m["h"])),  # 2% of the Hessian trace
    ),
    (H, "ggn_residual_small_outliers_in_ggn", "out", r"^ggn\s+top \[([^\]]*)\]", shift(-0.001, 0)),
    (
        H,
        "ggn_residual_small_outliers_in_ggn",
        "out",
        r"^ggn\s+top \[[^\]]*\]\s+bottom \[([^\]]*)\]",
        shift(-0.0002, 0),
    ),
    (
        H,
        "ggn_residual_small_outliers_in_ggn",
        "out",
        (rf"^hessian\s+top \[(?P<top>{F})(?:.*\n)*?^residual\s+top \[([^\]]*)\]", 2),
        put(lambda v, m: 0.02 * float(m["top"]), 0),  # 2% of the top Hessian eigenvalue
    ),
    (H, "resnet_bn_no_skip_effect", "out", (_re_resnet("no skip + BN"), 3), scale(0.7)),
    (H, "resnet_bn_no_skip_effect", "out", (_re_resnet("skip + BN"), 2), shift(100)),
    (H, "resnet_bn_no_skip_effect", "md", "47.6 with skips", "57.6 with skips"),
    (H, "resnet_bn_no_skip_effect", "md", "43.5 without", "33.5 without"),
    (
        H,
        "resnet_bn_no_skip_effect",
        "md",
        "one block per stage, 400 Adam steps",
        "one block per stage, 500 Adam steps",
    ),
    (
        H,
        "resnet_no_bn_skip_more_than_doubles",
        "out",
        (_re_resnet("no skip, no BN"), 3),
        scale(0.8),
    ),
    (H, "resnet_no_bn_skip_more_than_doubles", "out", (_re_resnet("skip, no BN"), 3), scale(1.5)),
    (
        H,
        "resnet_no_bn_skip_more_than_doubles",
        "out",
        (_re_resnet("skip + BN") + r"\n(?:.*\n)*?" + _re_resnet("skip, no BN"), 3),
        put(lambda v, m: 1.1 * float(m.group(8))),  # batch norm raises it (with skips)
    ),
    (H, "resnet_no_bn_skip_more_than_doubles", "md", "(64 to 147)", "(64 to 247)"),
    (H, "eos_threshold", "md", "overshooting 2/lr = 0.8", "overshooting 2/lr = 0.9"),
    (H, "eos_threshold", "out", rf"threshold 2/lr = ({F})", scale(1.25)),
    (
        H,
        "eos_threshold",
        "out",
        r"threshold 2/lr = .*? products per measurement: \[([^\]]*)\]",
        drop(0),
    ),
    (H, "adam_threshold", "out", rf"threshold 38/lr = ({F})", scale(0.9)),
    (H, "adam_threshold", "md", "38/lr = 19000", "38/lr = 17000"),
    *[
        (
            H,
            "large_batch_sharper",
            "out",
            (
                rf"^batch\s+16: SharpnessResult\(max_eigenvalue=(?P<e>{F}), trace=(?P<t>{F}).*\n"
                rf"^batch\s+{DIGITS_TRAIN}: SharpnessResult\(max_eigenvalue=({F}), trace=({F})",
                g,
            ),
            put(lambda v, m, ref=ref: 0.9 * float(m[ref])),  # full batch below batch 16
        )
        for g, ref in ((3, "e"), (4, "t"))
    ],
    (
        H,
        "product_counts",
        "out",
        r"top-k: \d+ products; density: \d+ ; trace: \d+ ; decomposition: (\d+)",
        shift(-1),
    ),
    # ---- loss_surfaces
    (S, "committed_in_full_mode_surface", "out", r"\| QUICK = (False)$", to("True")),
    (S, "whole_data_set", "out", r"Dataset\(digits: train \((\d+), 64\)", shift(-1)),
    (S, "interpolation_grid", "out", r"SliceResult\(interpolate, grid (\d+),", shift(-1)),
    (
        S,
        "interpolation_grid",
        "out",
        r"SliceResult\(interpolate, grid \d+, .*?non-finite=(\d+)\)",
        shift(3),
    ),
    (
        S,
        "interpolation_keeps_falling",
        "out",
        (_RE_EVALUATE + rf"[\s\S]*?SliceResult\(interpolate, grid \d+, train loss min ({F})", 7),
        put(lambda v, m: 2 * float(m.group(3))),  # line minimum above the final train loss
    ),
    (S, "quoted_test_accuracy", "md", "test accuracy 96.7%", "test accuracy 97.7%"),
    (S, "quoted_test_accuracy", "out", (_RE_EVALUATE, 4), scale(0.95)),
    (
        S,
        "quoted_test_accuracy",
        "out",
        (_RE_EVALUATE, 6),
        put(lambda v, m: 0.5 * float(m.group(3))),  # test loss below the train loss
    ),
    (S, "slice_2d_grid", "out", r"^(\d+) points x 2 splits in", shift(-1)),
    (
        S,
        "slice_2d_grid",
        "out",
        r"SliceResult\(slice_2d, grid \d+x\d+, .*?non-finite=(\d+)\)",
        shift(1),
    ),
    (S, "slice_centre_is_trained_model", "out", rf"^loss at the centre: ({F})", scale(1.01)),
    (
        S,
        "slice_2d_basin_at_centre",
        "out",
        rf"SliceResult\(slice_2d, grid \d+x\d+, train loss min ({F})",
        scale(0.9),
    ),
    (S, "pca_two_components", "out", r"^explained variance ratio: \[([^\]]*)\]", scale(0.8, 0)),
    # ---- mode_connectivity
    (C, "committed_in_full_mode_connect", "out", r"^(full) mode \[", to("quick")),
    (
        C,
        "linear_barrier_clear",
        "out",
        _cell("linear", "train/loss", "max_minus_mean"),
        scale(1e-4),
    ),
    (C, "bezier_almost_none", "out", _cell("bezier", "train/loss", "max_minus_mean"), scale(1e3)),
    (
        C,
        "bezier_almost_none",
        "out",
        rf"\(barrier {F}, ({F})% of the straight line's\)",
        shift(0.1),
    ),
    (
        C,
        "weight_matching_lowers_barrier",
        "out",
        r"after weight matching \((\d+)% lower\); ",
        shift(-6),
    ),
    (
        C,
        "weight_matching_lowers_barrier",
        "out",
        (rf"after weight matching \(\d+% lower\); test error barrier (?P<b>{F}) -> ({F})", 2),
        put(lambda v, m: 1.5 * float(m["b"])),  # the error barrier rises after matching
    ),
    (
        C,
        "weight_matching_lowers_barrier",
        "out",
        rf"linear barrier \(train loss\) ({F}) -> ",
        scale(1.1),
    ),
    (
        C,
        "aligned_same_function",
        "out",
        rf"^max \|f_B - f_B aligned\| = ({F})",
        put(lambda v, m: 1e-3),
    ),
    (C, "aligned_same_function", "out", _cell("aligned", "train/loss", "end"), scale(1.5)),
    (C, "bezier_endpoints_fixed", "out", _cell("bezier", "test/loss", "start"), scale(1.01)),
    (
        C,
        "barrier_conventions",
        "out",
        _cell("linear", "train/error", "max_minus_mean"),
        shift(0.01),
    ),
    (C, "barrier_conventions", "out", _cell("bezier", "train/loss", "t_max"), shift(1.5)),
    (C, "whole_data_set_connect", "md", "or test (360) set", "or test (300) set"),
    (C, "whole_data_set_connect", "out", _cell("linear", "test/error", "max"), shift(0.001)),
    (C, "width_sweep_quoted", "out", (_re_sweep(512), 3), scale(0.5)),
    (C, "width_sweep_quoted", "out", (_re_sweep(256), 3), scale(1.2)),
    (C, "width_sweep_quoted", "md", "0.26 before", "0.29 before"),
    *[
        (
            C,
            "width_sweep_quoted",
            "out",
            (_re_sweep(32) + r"\n" + _re_sweep(64), g + 6),
            put(lambda v, m, g=g: 1.2 * float(m.group(g))),  # width 64 above width 32
        )
        for g in (2, 3)  # before, after matching
    ],
    (
        C,
        "width_sweep_drops_more",
        "out",
        (_re_sweep(64) + r"\n" + _re_sweep(128), 9),
        # width 128's relative drop below width 64's: after = before x 1.2 x (after/before at 64)
        put(lambda v, m: float(m.group(8)) * 1.2 * float(m.group(3)) / float(m.group(2))),
    ),
    (
        C,
        "width_sweep_drops_more",
        "out",
        rf"^width\s+128: {F} -> ({F}) \(\d+% lower\)$",
        shift(1e-4),
    ),
    (C, "batch_norm_reestimate", "out", rf"^reestimate\s+loss at t=0 {F}, t=1 ({F})", scale(1.5)),
    (
        C,
        "batch_norm_reestimate",
        "out",
        (rf"^fixed\s+loss at t=0 (?P<a>{F}), t=1 ({F})", 2),
        put(lambda v, m: 2 * float(m["a"])),  # B only 2x A's loss with A's statistics
    ),
    # ---- ntk
    (N, "committed_in_full_mode_ntk", "out", r"^(full) mode \[", to("quick")),
    *[
        m
        for w, pat in _MLP_OR_CNN.items()
        for m in (
            (N, f"approaches_analytic[{w}]", "out", (pat, _MEAN), rise(-1)),
            (
                N,
                f"seed_averaged_lower[{w}]",
                "out",
                (pat, _AVG[w]),
                put(lambda v, m: 1.2 * _first(_MEAN)(v, m), 0),  # above the mean distance
            ),
            (N, f"seed_averaged_same_rate[{w}]", "out", (pat, _AVG[w]), scale(0.3, -1)),
            (N, f"slope_about_half[{w}]", "out", (pat, _SLOPE[w]), shift(-0.2)),
            (N, f"slope_about_half[{w}]", "out", (pat, _MEAN), scale(0.5, -1)),
        )
    ],
    *[
        (
            N,
            f"seed_averaged_factor_quoted[{w}]",
            "out",
            (_MLP_OR_CNN[w], _AVG[w]),
            put(lambda v, m: _first(_MEAN)(v, m) / 3, 0),  # a factor of 3
        )
        for w in ("ntk", "standard")
    ],
    (
        N,
        "seed_averaged_factor_quoted[ntk]",
        "md",
        "here by a\nfactor of about 2 for the MLPs'",
        "here by a\nfactor of about 4 for the MLPs'",
    ),
    (
        N,
        "seed_averaged_factor_quoted[CNN]",
        "out",
        (_RE_CNN_CONV, _AVG["CNN"]),
        put(lambda v, m: _first(_MEAN)(v, m) / 6, 0),  # a factor of 6
    ),
    (N, "seed_averaged_factor_quoted[CNN]", "md", "3 to 4.5 for the CNN's", "3 to 3.5 for the CNN's"),
    (N, "cnn_seed_averaged_flat", "out", (_RE_CNN_CONV, _AVG["CNN"]), scale(0.5, -1)),
    (N, "cnn_seed_averaged_flat", "md", "(0.0164 at both)", "(0.0184 at both)"),
    *[
        m
        for t in _FVI_TASKS
        for m in (
            (N, f"rmse_approaches_infinite[{t}]", "out", (_re_fvi(t), _RMSE), rise(2)),
            (N, f"rmse_exponent_quoted[{t}]", "out", (_re_fvi(t), _RMSE), scale(0.5, -1)),
        )
    ],
    (N, "rmse_approaches_infinite[digits]", "md", "digits 0.39, 0.23", "digits 0.39, 0.25"),
    (N, "rmse_exponent_quoted[digits]", "md", "about like width^-0.4;", "about like width^-0.5;"),
    (N, "rmse_exponent_quoted[mnist1d]", "md", "about width^-0.3 and", "about width^-0.2 and"),
    (N, "rmse_exponent_quoted[teacher]", "md", "and width^-0.37)", "and width^-0.33)"),
    (N, "rmse_others_a_little_slower", "out", (_re_fvi("digits"), _RMSE), scale(2, -1)),
    (N, "rmse_others_a_little_slower", "out", (_re_fvi("teacher"), _RMSE), scale(0.5, -1)),
    (N, "digits_accuracy_quoted", "out", (_re_fvi("digits"), _ACC), scale(1.05, 0)),
    (N, "digits_accuracy_quoted", "md", "0.75 at width 1024", "0.70 at width 1024"),
    (N, "digits_accuracy_quoted", "md", "(0.76 at 4096)", "(0.79 at 4096)"),
    (N, "digits_accuracy_falls_then_stays", "out", (_re_fvi("digits"), _ACC), rise(1)),
    (N, "digits_accuracy_falls_then_stays", "out", (_re_fvi("digits"), _ACC), shift(-0.05, -1)),
    (
        N,
        "finite_below_infinite",
        "out",
        (_re_fvi("teacher"), _ACC),
        put(lambda v, m: float(m.group(_INF)) + 0.01, 0),  # above the infinite-width accuracy
    ),
    (N, "drift_falls_with_width", "out", r"^final drift \[([^\]]*)\]", rise(1)),
    (N, "drift_like_inverse_width", "out", rf"^final drift \[[^\]]*\] slope ({F})$", shift(0.3)),
    (N, "drift_like_inverse_width", "out", r"^final drift \[([^\]]*)\]", scale(0.5, -1)),
]

# the xfailed claims pass once the contradicting numbers are repaired
REPAIRS: list = []


def _mutated(notebook: str, where: str, find, change) -> NB:
    base = committed(notebook)
    nb = copy.deepcopy(committed_raw(notebook))
    if where == "md":
        pat = r"\s+".join(map(re.escape, find.split(" ")))  # the text may wrap anywhere
        hits = 0
        for c in nb.cells:
            if c.cell_type == "markdown":
                c.source, n = re.subn(pat, change.replace("\\", r"\\"), c.source)
                hits += n
        assert hits == 1, (
            f"{notebook}: {find!r} occurs {hits} times in the markdown (want exactly 1)"
        )
        return NB(nb, notebook)
    assert where == "out", where
    pattern, g = find if isinstance(find, tuple) else (find, 1)
    found = list(re.finditer(pattern, base.out, re.M))
    assert len(found) == 1, (
        f"{notebook}: /{pattern}/ matches {len(found)} times in the outputs (want exactly 1)"
    )
    m = found[0]
    a, b = m.span(g)
    old = m.group(g)
    new = change(old, m)
    assert new != old, f"{notebook}: the mutation leaves {old!r} unchanged"
    seg = [x for x in base.segments if x[0] <= a and b <= x[1]]
    assert len(seg) == 1, f"{notebook}: {old!r} is not inside one output"
    start, _, ci, oi, key = seg[0]
    o = nb.cells[ci].outputs[oi]
    holder = o if key == "text" else o["data"]
    holder[key] = holder[key][: a - start] + new + holder[key][b - start :]
    bad = NB(nb, notebook)
    assert bad.out == base.out[:a] + new + base.out[b:]
    return bad


def _mutation_id(m) -> str:
    return f"{m[0]}:{m[1]}"


def test_every_claim_has_a_mutation():
    covered = {(m[0], m[1]) for m in MUTATIONS}
    missing = [
        (n, c)
        for n, cs in CLAIMS.items()
        for c in cs
        if (n, c) not in covered and (n, c) not in XFAIL
    ]
    assert not missing, f"claims without a self-check mutation: {missing}"
    unknown = [(m[0], m[1]) for m in MUTATIONS + REPAIRS if m[1] not in CLAIMS[m[0]]]
    assert not unknown, f"mutations of unknown claims: {unknown}"
    assert set(XFAIL) == {(r[0], r[1]) for r in REPAIRS}


@pytest.mark.parametrize(
    "notebook, claim_id, where, find, change",
    MUTATIONS,
    ids=[f"{_mutation_id(m)}:{i}" for i, m in enumerate(MUTATIONS)],
)
def test_claim_can_fail(notebook, claim_id, where, find, change):
    fn, _ = CLAIMS[notebook][claim_id]
    fn(committed(notebook), False)  # passes on the committed notebook ...
    bad = _mutated(notebook, where, find, change)
    with pytest.raises(AssertionError, match=re.escape(f"notebooks/{notebook}.ipynb")):
        fn(bad, False)  # ... and fails on the corrupted copy


@pytest.mark.parametrize(
    "notebook, claim_id, where, find, change", REPAIRS, ids=[_mutation_id(r) for r in REPAIRS]
)
def test_xfail_claim_can_pass(notebook, claim_id, where, find, change):
    fn, _ = CLAIMS[notebook][claim_id]
    with pytest.raises(AssertionError):
        fn(committed(notebook), False)  # contradicted by the committed numbers ...
    fixed = _mutated(notebook, where, find, change)
    fn(fixed, False)  # ... and holds with the repaired numbers


def test_renamed_label_or_reworded_sentence_fails():
    # a renamed print or a reworded sentence raises LabelNotFound (never a silent skip)
    fn, _ = CLAIMS[H]["gradient_overlap_quoted"]
    with pytest.raises(LabelNotFound, match="printed label"):
        fn(_mutated(H, "out", r"^(OverlapResult)\(k=", to("Overlap")), False)
    with pytest.raises(LabelNotFound, match="markdown sentence"):
        fn(_mutated(H, "md", "only 4% of its squared norm", "about 4% of its squared norm"), False)


def test_quick_helper_rejects_the_full_mode_notebooks():
    # the helper checks the quick-mode marker: on the committed (full-mode) notebooks it fails
    for name in CLAIMS:
        with pytest.raises(AssertionError, match="quick-mode claims failed"):
            check_quick_claims(committed_raw(name))
