"""The training monitor: gradient health during :func:`landscape.train`, and what went wrong
when the loss or gradient stops being finite.

:func:`training_monitor` is a :func:`landscape.train` callback. ``train`` runs its steps in
compiled blocks and calls callbacks on the host between blocks, every ``every`` steps (the
block length divides every callback period); the monitor follows that machinery. At each call,
after ``s`` updates, it evaluates in one small compiled program (compiled once per run) the
next update exactly as ``train`` will take it: the training-mode loss of step ``s + 1``'s
mini-batch at the current parameters, its gradient, and the optimiser's update from the current
optimiser state. It records, per parameter leaf (in forward order: the order in which the
program first uses the leaves), the gradient norm ``||g||``, the update norm ``||dw||`` and the
weight norm ``||w||`` (the update-to-weight ratio is ``||dw|| / ||w||``; Karpathy's rule of
thumb for plain SGD is about ``1e-3``), and the loss, under the step number ``s + 1`` (the
``k``-th update: its batch loss is ``history["batch_loss"]`` at ``history["step"] == k``).
Between calls it costs nothing: nothing is added to the compiled training loop.

Divergence. ``train`` itself detects, inside its compiled loop, the first step whose loss,
gradient or updated parameters are not finite, keeps the parameters before it and raises
:class:`landscape.TrainingDivergedError`. It then asks each callback for a report
(:meth:`landscape.train.Callback.on_diverged`); the monitor's is a :class:`DivergenceReport`,
found by re-running the failing step on the failing mini-batch **outside** the compiled loop
from the last finite parameters:

1. the batch: NaN and Inf per field with the examples (data set indices) that hold them, and
   extreme values by robust z-scores against the training data (``z = (x - median) / (1.4826
   MAD)`` per feature, the rule and the default threshold 20 of :func:`audit_data`);
2. the forward pass, equation by equation in program order (the traced training-mode loss,
   evaluated with :func:`landscape._program.evaluate`): the first value that is not finite and
   where it sits: the batch itself, a value computed from the batch alone (preprocessing inside
   the loss: the input the model received), a layer (the parameter leaf of the latest layer it
   depends on, in forward order) or the loss (a value that also depends on the targets);
3. the gradient: the leaves whose gradient is not finite (first in forward order);
4. the update: the leaves whose updated value is not finite (an overflowing step).

The report's stage is the first of these that failed. ``landscape.train`` validates its data
(finite) before training, so a batch drawn by ``train`` never holds NaN itself: a NaN batch
during training is made by the loss (augmentation, normalisation by a zero norm) and shows as a
NaN in a value computed from the batch alone; :func:`diagnose_step` checks any batch directly
(a custom loop's).

References: Karpathy (2019), "A recipe for training neural networks" (update-to-weight
ratios); Rousseeuw & Croux (1993) (robust scale); Goodfellow, Bengio & Courville (2016),
section 8.2.4 (exploding gradients).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape import _program, _provenance, _serialize, engine
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.diagnostics._audit import DEFAULT_Z_THRESHOLD, MAD_SCALE
from landscape.losses import Loss
from landscape.train import Callback, TrainInfo

PyTree = Any

__all__ = [
    "DivergenceReport",
    "MonitorResult",
    "TrainingMonitor",
    "diagnose_step",
    "training_monitor",
]

_SHOW = 8  # example indices quoted in a summary line
_REFERENCE_ROWS = 10_000  # at most this many examples of the training data set the z-scores
_BUDGET = 64 << 20  # bytes of float64 copies at a time for the robust statistics

STAGES = ("batch", "input", "forward", "loss", "gradient", "update", "not reproduced")
"""Where the first non-finite value appeared (see :class:`DivergenceReport`)."""


# --------------------------------------------------------------------------------------------
# Compiled pieces
# --------------------------------------------------------------------------------------------
def _step_loss(loss_fn, params, state, batch):
    """The loss ``landscape.train`` takes a step on: a :class:`Loss` in training mode (batch
    statistics) with ``state``, a plain function as it is."""
    if isinstance(loss_fn, Loss):
        (loss, _aux), _ = loss_fn.train_loss(params, state, batch)
        return loss
    loss, _aux = engine.loss_and_aux(loss_fn, params, batch)
    return loss


def _sumsq(tree) -> jax.Array:
    """Per-leaf sums of squares (one reduction per leaf: cheap to compile). A sum that
    overflows, underflows to zero or is not finite is redone on the host (:func:`_norms`)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((0,), jnp.float32)
    return jnp.stack([jnp.sum(jnp.square(jnp.abs(x))) for x in leaves])


def _norms(sq, tree) -> np.ndarray:
    """Per-leaf Euclidean norms in float64 from the device's sums of squares; a leaf whose sum
    is not a finite number above ``1e6 n tiny`` (overflowed squares of values above ~1e19 in
    float32; squares flushed to zero below ~1e-19, which can lose part of a small sum; NaN,
    Inf, or a zero leaf) is read back and measured on the host, scaled by its largest
    magnitude: exact, NaN where it holds NaN, inf where Inf."""
    sq = np.asarray(sq, np.float64)
    out = np.sqrt(sq)
    leaves = jax.tree.leaves(tree)
    # squares below the dtype's smallest normal number are flushed to zero: n of them lose at
    # most n * tiny, so a sum within 1e6 times that may be off by more than 1e-6: redone
    dtypes = [np.dtype(getattr(x, "dtype", np.float64)) for x in leaves]
    floor = np.array(
        [
            1e6 * np.size(x) * float(np.finfo(dt).tiny) if np.issubdtype(dt, np.inexact) else 0.0
            for x, dt in zip(leaves, dtypes)
        ]
    )
    redo = np.flatnonzero(~(np.isfinite(sq) & (sq > floor)))
    if redo.size:
        for i in redo:
            x = np.abs(np.asarray(leaves[i])).astype(np.float64).ravel()
            if x.size == 0 or np.isnan(x).any():
                out[i] = 0.0 if x.size == 0 else np.nan
                continue
            m = x.max()
            out[i] = m if (m == 0 or np.isinf(m)) else m * np.sqrt(np.sum(np.square(x / m)))
    return out


@functools.partial(jax.jit, static_argnames=("loss_static", "opt"))
def _probe(loss_static, loss_dyn, opt, params, state, opt_state, batch):
    """The step ``landscape.train`` takes from ``params`` (one program per loss, optimiser and
    shapes): the gradient, the optimiser's update and the updated weights, and one array
    ``[loss, sums of squares per leaf of the gradient, the update, the weights, the updated
    weights]`` (one transfer to the host)."""
    loss_fn = engine.merge_fn(loss_static, loss_dyn)
    loss, g = jax.value_and_grad(lambda p: _step_loss(loss_fn, p, state, batch))(params)
    sg, sp = _sumsq(g), _sumsq(params)
    if opt is None:
        upd = new = None
        su = sn = jnp.full_like(sp, jnp.nan)
    else:
        import optax

        upd, _ = opt.update(g, opt_state, params)
        new = optax.apply_updates(params, upd)
        su, sn = _sumsq(upd), _sumsq(new)
    parts = [jnp.reshape(loss, (1,)), sg, su, sp, sn]
    dt = jnp.result_type(*parts)
    return g, upd, new, jnp.concatenate([x.astype(dt) for x in parts])


def _run_probe(loss_fn, opt, params, state, opt_state, batch):
    """``(loss, ||g||, ||dw||, ||w||, g finite, new weights finite)`` of the step
    ``landscape.train`` takes from ``params``, per leaf in tree order, on the host (float64)."""
    static, dyn = engine.split_fn(loss_fn)
    g, upd, new, stats = _probe(static, dyn, opt, params, state, opt_state, batch)
    stats = np.asarray(stats)
    sg, su, sp, sn = np.split(stats[1:], 4)
    gn = _norms(sg, g)
    pn = _norms(sp, params)
    if opt is None:
        un = np.full_like(pn, np.nan)
        new_ok = np.ones(len(pn), bool)
    else:
        un = _norms(su, upd)
        new_ok = np.isfinite(_norms(sn, new))
    return float(stats[0]), gn, un, pn, np.isfinite(gn), new_ok


# --------------------------------------------------------------------------------------------
# The traced program: leaves in forward order, layers, what each value depends on
# --------------------------------------------------------------------------------------------
def _layer_name(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


@dataclasses.dataclass
class _Program:
    """The training-mode loss ``(params, batch) -> loss`` as a flat program, with per value the
    latest parameter leaf it depends on (forward rank, -1: none) and the batch fields it depends
    on (a bit mask)."""

    closed: Any
    flat: Any
    leaves: list  # parameter leaf paths, tree order
    order: list  # tree indices in forward order
    fields: list  # batch leaf paths
    rank: dict  # value id -> forward rank of the latest leaf it depends on
    bdep: dict  # value id -> bit mask of batch fields
    label_mask: int  # batch fields that meet the parameters only in the loss (targets)
    by_pos: dict  # position -> FlatEqn

    @property
    def forward_leaves(self) -> list:
        return [self.leaves[i] for i in self.order]

    def layer_of_rank(self, r: int) -> str:
        return _layer_name(self.leaves[self.order[r]])


def _trace(loss_fn, params, state, batch) -> _Program:
    fn = functools.partial(_step_loss_pb, loss_fn, state)
    closed = jax.make_jaxpr(fn)(params, batch)
    flat = _program.flatten(closed)
    leaves = _tree.leaf_paths(params)
    fields = _tree.leaf_paths(batch)
    n_p = len(leaves)
    p_ids = flat.inputs[:n_p]
    b_ids = flat.inputs[n_p:]
    first = [min(flat.consumers.get(i, [math.inf])) for i in p_ids]
    order = sorted(range(n_p), key=lambda i: (first[i], i))
    rank_of_leaf = {leaf: r for r, leaf in enumerate(order)}
    rank = {vid: rank_of_leaf[i] for i, vid in enumerate(p_ids)}
    bdep = {vid: 1 << j for j, vid in enumerate(b_ids)}
    pset = set(p_ids)
    input_mask = 0
    for e in flat.eqns:
        ins = [r for r in e.ins if r is not None]
        r = max((rank.get(i, -1) for i in ins), default=-1)
        b = 0
        for i in ins:
            b |= bdep.get(i, 0)
        if any(i in pset for i in ins):
            input_mask |= b
        for o in e.outs:
            rank[o] = r
            bdep[o] = b
    label_mask = ((1 << len(b_ids)) - 1) & ~input_mask
    by_pos = {e.pos: e for e in flat.eqns}
    return _Program(closed, flat, leaves, order, fields, rank, bdep, label_mask, by_pos)


def _step_loss_pb(loss_fn, state, params, batch):
    return _step_loss(loss_fn, params, state, batch)


def _is_float(a) -> bool:
    dt = getattr(a, "dtype", None)
    return dt is not None and (
        jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.complexfloating)
    )


def _bad_rows(a, batch_size: int) -> np.ndarray | None:
    """Positions in the batch whose rows of ``a`` are not finite (``a`` batch-shaped), else
    None."""
    a = np.asarray(a)
    if a.ndim == 0 or a.shape[0] != batch_size:
        return None
    return np.flatnonzero(~np.isfinite(a.reshape(batch_size, -1)).all(axis=1))


def _forward(prog: _Program, params, batch, batch_size: int) -> dict:
    """Evaluate the program equation by equation; the first non-finite value (that depends on
    the parameters or the batch: a constant ``-inf`` mask is not one) and every layer with one."""
    args = jax.tree.leaves((params, batch))
    found: dict[str, Any] = {}
    layers: list[str] = []

    def note(kind, layer, where, value, rows):
        if not found:
            found.update(kind=kind, layer=layer, where=where, rows=rows, value=value)
        if layer is not None and layer not in layers and kind in ("forward", "loss"):
            layers.append(layer)

    n_p = len(prog.leaves)
    for name, x in zip(prog.fields, args[n_p:]):
        if _is_float(x) and not np.isfinite(np.asarray(x)).all():
            note("batch", None, f"batch[{name!r}]", _nan_or_inf(x), _bad_rows(x, batch_size))
            break

    def after(pos, eqn, outs):
        e = prog.by_pos.get(pos)
        if e is None:  # an inlined call: its equations were seen already
            return outs
        for vid, o in zip(e.outs, outs):
            if not _is_float(o):
                continue
            if np.isfinite(np.asarray(o)).all():
                continue
            r, b = prog.rank.get(vid, -1), prog.bdep.get(vid, 0)
            if r < 0 and not b:
                continue  # built from constants alone
            if r < 0:
                kind, layer = "input", None
            else:
                kind = "loss" if b & prog.label_mask else "forward"
                layer = prog.layer_of_rank(r)
            note(kind, layer, f"{e.name} at {e.loc}", _nan_or_inf(o), _bad_rows(o, batch_size))
            break
        return outs

    out = _program.evaluate(prog.closed, args, after)
    loss = float(np.asarray(out[0]).reshape(()))
    return {"first": found or None, "layers": layers, "loss": loss}


def _nan_or_inf(a) -> str:
    a = np.asarray(a)
    nan, inf = bool(np.isnan(a).any()), bool(np.isinf(a).any())
    return "NaN and Inf" if nan and inf else ("NaN" if nan else "Inf")


# --------------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------------
def _reference_rows(n: int) -> np.ndarray:
    if n <= _REFERENCE_ROWS:
        return np.arange(n)
    return np.linspace(0, n - 1, _REFERENCE_ROWS).round().astype(np.int64)


def _max_robust_z(rows: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per row of ``rows`` ``(B, d)``, the largest robust ``|z|`` against the columns of ``ref``
    ``(n, d)``: :func:`audit_data`'s rule (1.4826 MAD; for MAD = 0, 1.4826 times the median
    nonzero deviation; constant features score 0). Non-finite entries score 0 (they are counted
    as NaN/Inf)."""
    B, d = rows.shape
    n = ref.shape[0]
    out = np.zeros(B)
    step = max(1, min(d, _BUDGET // max(1, (n + B) * 8 * 3)))
    for j0 in range(0, d, step):
        r = ref[:, j0 : j0 + step].astype(np.float64)
        r = np.where(np.isfinite(r), r, np.nan)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(r, axis=0)
                dev = np.abs(r - med[None])
                scale = MAD_SCALE * np.nanmedian(dev, axis=0)
                const = ~(np.nanmax(r, axis=0) > np.nanmin(r, axis=0))
                sparse = ~(scale > 0) & ~const
                if sparse.any():
                    sub = dev[:, sparse]
                    scale[sparse] = MAD_SCALE * np.nanmedian(
                        np.where(sub > 0, sub, np.nan), axis=0
                    )
            b = rows[:, j0 : j0 + step].astype(np.float64)
            z = np.abs(b - med[None]) / np.where(const, 1.0, scale)[None]
        z = np.where(const[None] | ~np.isfinite(z), 0.0, z)
        out = np.maximum(out, z.max(axis=1) if z.size else 0.0)
    return out


def _check_batch(batch, indices: np.ndarray, reference, z_threshold: float) -> dict:
    """NaN, Inf and robust-z outliers per field of the batch (as data set indices)."""
    B = len(indices)
    names = _tree.leaf_paths(batch)
    leaves = jax.tree.leaves(batch)
    refs = jax.tree.leaves(reference) if reference is not None else [None] * len(leaves)
    nan, inf, out, max_z = {}, {}, {}, {}
    for name, x, ref in zip(names, leaves, refs):
        if not _is_float(x) or jnp.issubdtype(x.dtype, jnp.complexfloating):
            continue
        a = np.asarray(x).reshape(B, -1)
        rn = np.flatnonzero(np.isnan(a).any(axis=1))
        ri = np.flatnonzero(np.isinf(a).any(axis=1))
        if rn.size:
            nan[name] = indices[rn].tolist()
        if ri.size:
            inf[name] = indices[ri].tolist()
        if a.shape[1] == 0:
            continue
        if ref is None:
            r = a
        else:
            r_all = np.asarray(ref) if isinstance(ref, np.ndarray) else ref
            sel = _reference_rows(r_all.shape[0])
            r = np.asarray(r_all[sel]).reshape(len(sel), -1)
        z = _max_robust_z(a, r)
        max_z[name] = float(z.max()) if z.size else 0.0
        ro = np.flatnonzero(z > z_threshold)
        if ro.size:
            out[name] = indices[ro].tolist()
    return {
        "nan": nan,
        "inf": inf,
        "outlier": out,
        "max_abs_z": max_z,
        "z_threshold": float(z_threshold),
        "reference": "training data" if reference is not None else "the batch itself",
    }


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
def _ix(ix) -> str:
    ix = list(ix)
    head = ", ".join(str(int(i)) for i in ix[:_SHOW])
    return f"[{head}{', ...' if len(ix) > _SHOW else ''}]" + (
        f" ({len(ix)} examples)" if len(ix) > _SHOW else ""
    )


def _union(d: dict) -> np.ndarray:
    vals = [i for v in d.values() for i in v]
    return np.unique(np.asarray(vals, np.int64)) if vals else np.zeros((0,), np.int64)


@result
class DivergenceReport(Result):
    """What the failing step did, re-run outside the compiled loop from the last finite
    parameters (see the module docstring).

    Attributes:
      last_finite_params: the parameters before the failing step (after step ``step - 1``), on
        the host; every leaf finite.
      batch_indices: the failing mini-batch's example indices in the training data.
      loss: the failing step's loss, re-run (``nan``/``inf`` as it came out).
      step: the failing step (1-based count of updates; ``None`` from :func:`diagnose_step`
        without ``step=``).
      stage: where the first non-finite value appeared, one of :data:`STAGES`: ``"batch"``
        (the batch itself), ``"input"`` (a value the loss computes from the batch alone, before
        any parameter: the model's input), ``"forward"`` (a layer's value), ``"loss"`` (a value
        that also depends on the targets), ``"gradient"`` (the forward pass and loss are finite,
        a gradient leaf is not), ``"update"`` (the gradient is finite, an updated parameter is
        not: the step overflowed) or ``"not reproduced"`` (everything finite outside the
        compiled loop: a difference of compilation, see ``note``).
      layer: the layer (a parameter path without its last part, ``"layers/1"``) where it
        appeared, ``None`` for the batch and the input.
      leaf: for ``"gradient"``/``"update"`` the first such parameter leaf in forward order.
      where: the first non-finite value: ``"dot_general at file.py:12"``, ``"batch['x']"``.
      kind: ``"NaN"``, ``"Inf"`` or ``"NaN and Inf"`` (of that value).
      examples: data set indices of the examples whose rows of that value are not finite
        (where the value has one row per example), else empty.
      batch: the batch check: ``{"nan": {field: [example, ...]}, "inf": ..., "outlier": ...,
        "max_abs_z": {field: float}, "z_threshold", "reference"}``.
      nonfinite: ``{"forward": [layers with a non-finite value], "gradient": [leaves],
        "update": [leaves]}``, in forward order.
      note: anything the stage alone does not say.
      settings, provenance: what produced it.
    """

    last_finite_params: PyTree
    batch_indices: np.ndarray
    loss: np.ndarray
    step: int | None = static_field(default=None)
    stage: str = static_field(default="not reproduced")
    layer: str | None = static_field(default=None)
    leaf: str | None = static_field(default=None)
    where: str | None = static_field(default=None)
    kind: str | None = static_field(default=None)
    examples: tuple = static_field(default=())
    batch: dict = static_field(default_factory=dict)
    nonfinite: dict = static_field(default_factory=dict)
    note: str = static_field(default="")
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    @property
    def last_finite_step(self) -> int | None:
        return None if self.step is None else self.step - 1

    @property
    def batch_nan_examples(self) -> np.ndarray:
        """Data set indices of the batch's examples holding NaN (any field)."""
        return _union(self.batch.get("nan", {}))

    @property
    def batch_inf_examples(self) -> np.ndarray:
        return _union(self.batch.get("inf", {}))

    @property
    def batch_outlier_examples(self) -> np.ndarray:
        return _union(self.batch.get("outlier", {}))

    @property
    def batch_clean(self) -> bool:
        """The batch is finite, has no outlier, and no value computed from it alone is
        non-finite."""
        return (
            not self.batch_nan_examples.size
            and not self.batch_inf_examples.size
            and not self.batch_outlier_examples.size
            and self.stage not in ("batch", "input")
        )

    def _batch_text(self) -> str:
        b = self.batch
        parts = []
        for kind in ("nan", "inf"):
            for field, ix in b.get(kind, {}).items():
                parts.append(
                    f"batch held {kind.replace('nan', 'NaN').replace('inf', 'Inf')} "
                    f"at examples {_ix(ix)} (field {field!r})"
                )
        if not parts and self.stage == "input":
            parts.append(
                f"batch held {self.kind} at examples {_ix(self.examples)} in the input the "
                f"loss computes from it ({self.where}; the stored data are finite)"
            )
        for field, ix in b.get("outlier", {}).items():
            parts.append(
                f"batch held outliers at examples {_ix(ix)} (field {field!r}, |robust z| up "
                f"to {b.get('max_abs_z', {}).get(field, float('nan')):.3g} > "
                f"{b.get('z_threshold', DEFAULT_Z_THRESHOLD):g})"
            )
        if not parts:
            zmax = max(b.get("max_abs_z", {}).values(), default=0.0)
            parts.append(
                f"batch clean (finite; largest |robust z| {zmax:.3g} <= "
                f"{b.get('z_threshold', DEFAULT_Z_THRESHOLD):g})"
            )
        return "; ".join(parts)

    def _where_text(self) -> str:
        if self.stage == "not reproduced":
            return "the step is finite when re-run outside the compiled loop" + (
                f" ({self.note})" if self.note else ""
            )
        if self.stage in ("gradient", "update"):
            n = len(self.nonfinite.get(self.stage, ()))
            what = "gradient" if self.stage == "gradient" else "updated value"
            return (
                f"first non-finite value: the {what} of {self.leaf} (layer {self.layer}; "
                f"{n} leaf{'s' if n != 1 else ''} in all), forward and loss finite"
            )
        at = {"batch": "the batch", "input": "the input computed from the batch"}.get(
            self.stage, f"layer {self.layer}" + (" (in the loss)" if self.stage == "loss" else "")
        )
        return f"first non-finite value ({self.kind}) in {at}: {self.where}"

    def summary(self) -> str:
        head = f"step {self.step}" if self.step is not None else "the step"
        last = (
            f"; last finite parameters (after step {self.last_finite_step}) in "
            "err.report.last_finite_params"
            if self.step is not None
            else ""
        )
        return f"{head}: {self._batch_text()}; {self._where_text()}{last}."

    def __str__(self):
        return self.summary()

    def __repr__(self):
        return f"DivergenceReport({self.summary()})"

    def to_dict(self) -> dict:
        """The report as strict JSON (no parameters)."""
        return _serialize.to_jsonable(
            {
                "step": self.step,
                "stage": self.stage,
                "layer": self.layer,
                "leaf": self.leaf,
                "where": self.where,
                "kind": self.kind,
                "examples": list(self.examples),
                "loss": _finite_or_str(float(np.asarray(self.loss))),
                "batch_indices": np.asarray(self.batch_indices).tolist(),
                "batch": _thaw(self.batch),
                "nonfinite": _thaw(self.nonfinite),
                "note": self.note,
                "summary": self.summary(),
            }
        )


def _finite_or_str(v: float):
    return v if math.isfinite(v) else str(v)


def _thaw(v):
    if isinstance(v, dict):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [_thaw(x) for x in v]
    return v


@result
class MonitorResult(Result):
    """What :func:`training_monitor` recorded.

    Row ``t`` describes update ``step[t]``: its mini-batch loss, and per parameter leaf (columns
    in forward order, named by ``leaves``) the norm of its gradient, of the optimiser's update
    and of the weights it started from.

    Attributes:
      step: ``(T,)`` the updates described (1-based: the ``k``-th update is taken from the
        parameters after ``k - 1`` updates).
      loss: ``(T,)`` their mini-batch losses (training mode).
      grad_norm, update_norm, param_norm: ``(T, L)`` per leaf.
      leaves: the leaf paths (forward order); ``leaf_layers``: each leaf's layer.
      divergence: the :class:`DivergenceReport` as a dict (:meth:`DivergenceReport.to_dict`)
        when training diverged, else ``None`` (the report with its parameters is
        ``monitor.report`` and ``err.report``).
      settings, provenance: the monitor's settings and what produced it.
    """

    step: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    update_norm: np.ndarray
    param_norm: np.ndarray
    leaves: tuple = static_field(default=())
    leaf_layers: tuple = static_field(default=())
    divergence: dict | None = static_field(default=None)
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    @property
    def update_ratio(self) -> np.ndarray:
        """``(T, L)``: ``||dw|| / ||w||`` per leaf (``inf`` for a zero leaf that moves: a bias
        initialised at zero; the per-layer ratio is the one to read)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(self.update_norm) / np.asarray(self.param_norm)

    @property
    def layers(self) -> tuple:
        """The layers in forward order."""
        return tuple(dict.fromkeys(self.leaf_layers))

    def _layer(self, a) -> np.ndarray:
        a = np.asarray(a, np.float64)
        cols = [
            np.sqrt(
                np.sum(a[:, [i for i, g in enumerate(self.leaf_layers) if g == lay]] ** 2, axis=1)
            )
            for lay in self.layers
        ]
        return np.stack(cols, axis=1) if cols else np.zeros((a.shape[0], 0))

    @property
    def layer_grad_norm(self) -> np.ndarray:
        """``(T, num_layers)``: the gradient norm of each layer (its leaves together)."""
        return self._layer(self.grad_norm)

    @property
    def layer_update_norm(self) -> np.ndarray:
        return self._layer(self.update_norm)

    @property
    def layer_param_norm(self) -> np.ndarray:
        return self._layer(self.param_norm)

    @property
    def layer_update_ratio(self) -> np.ndarray:
        """``(T, num_layers)``: ``||dw|| / ||w||`` per layer."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.layer_update_norm / self.layer_param_norm

    @property
    def diverged(self) -> bool:
        return self.divergence is not None

    def summary(self) -> str:
        T = len(self.step)
        if not T:
            text = "no steps recorded"
        else:
            g = self.layer_grad_norm[-1]
            r = self.layer_update_ratio[-1]
            text = (
                f"{T} records (steps {int(self.step[0])}..{int(self.step[-1])}), last: loss "
                f"{float(self.loss[-1]):.4g}, gradient norm per layer "
                f"[{', '.join(f'{x:.3g}' for x in g)}], update/weight "
                f"[{', '.join(f'{x:.3g}' for x in r)}]"
            )
        if self.divergence is not None:
            text += f"; diverged: {self.divergence.get('summary')}"
        return text

    def __repr__(self):
        return f"MonitorResult({self.summary()})"


# --------------------------------------------------------------------------------------------
# The diagnosis
# --------------------------------------------------------------------------------------------
def _diagnose(
    loss_fn, params, state, batch, indices, opt, opt_state, reference, z_threshold, step
) -> DivergenceReport:
    B = len(indices)
    prog = _trace(loss_fn, params, state, batch)
    fwd = _forward(prog, params, batch, B)
    loss_j, _g, _u, _p, g_ok, new_ok = _run_probe(loss_fn, opt, params, state, opt_state, batch)
    order = prog.order
    bad_g = [prog.leaves[i] for i in order if not g_ok[i]]
    bad_u = [prog.leaves[i] for i in order if not new_ok[i]] if opt is not None else []
    batch_rep = _check_batch(batch, indices, reference, z_threshold)
    first = fwd["first"]
    loss_e = fwd["loss"]
    note = ""
    fields: dict[str, Any] = {}
    if first is not None and not (math.isfinite(loss_e) and np.isfinite(loss_j)):
        rows = first["rows"]
        fields = {
            "stage": first["kind"],
            "layer": first["layer"],
            "where": first["where"],
            "kind": first["value"],
            "examples": tuple(int(i) for i in indices[rows]) if rows is not None else (),
        }
    elif not (math.isfinite(loss_e) and np.isfinite(loss_j)):
        fields = {"stage": "loss", "kind": "NaN" if math.isnan(loss_e) else "Inf"}
        note = "no intermediate value is non-finite when evaluated equation by equation"
    elif bad_g or bad_u:
        stage = "gradient" if bad_g else "update"
        leaf = (bad_g or bad_u)[0]
        fields = {"stage": stage, "leaf": leaf, "layer": _layer_name(leaf)}
        if first is not None:
            note = (
                f"a non-finite value in the forward pass ({first['value']} at {first['where']}) "
                "is masked before the loss; its gradient is not (the jnp.where trap: mask the "
                "input of the operation, not its output)"
            )
    else:
        fields = {"stage": "not reproduced"}
        note = (
            "the compiled training step and this re-run differ in rounding (fusion, operation "
            "order); the step is at the edge of overflow"
        )
    settings = {"z_threshold": float(z_threshold), "batch_size": B}
    return DivergenceReport(
        _serialize.to_host(params),
        np.asarray(indices, np.int64),
        np.asarray(loss_e if not math.isfinite(loss_e) else loss_j),
        step=step,
        nonfinite={"forward": fwd["layers"], "gradient": bad_g, "update": bad_u},
        batch=batch_rep,
        note=note,
        settings=settings,
        provenance=_provenance.provenance(dtype=_tree.dtype_of(params), settings=settings),
        **fields,
    )


def _gather(data, idx: np.ndarray):
    return jax.tree.map(lambda x: x[idx], data)


# --------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainingMonitor(Callback):
    """The :class:`landscape.train.Callback` of :func:`training_monitor`: pass it in
    ``train(..., callbacks=[monitor])``; read :meth:`result` (also after a divergence) and
    :attr:`report`. Each ``train`` call it is given to starts a new record."""

    z_threshold: float = DEFAULT_Z_THRESHOLD
    log: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def report(self) -> DivergenceReport | None:
        """The :class:`DivergenceReport` of the last run, if it diverged."""
        return self.log.get("report")

    def result(self) -> MonitorResult:
        """What was recorded so far, as a :class:`MonitorResult`."""
        log = self.log
        L = len(log.get("leaves", ()))
        rows = log.get("rows", [])

        def col(k):
            if not rows:
                return np.zeros((0, L), np.float64)
            return np.stack([r[k] for r in rows]).astype(np.float64)

        rep = log.get("report")
        settings = {
            "every": self.every,
            "at_start": self.at_start,
            "name": self.name,
            "z_threshold": self.z_threshold,
            **log.get("settings", {}),
        }
        return MonitorResult(
            np.asarray([r["step"] for r in rows], np.int64),
            np.asarray([r["loss"] for r in rows], np.float64),
            col("g"),
            col("u"),
            col("p"),
            leaves=tuple(log.get("leaves", ())),
            leaf_layers=tuple(_layer_name(x) for x in log.get("leaves", ())),
            divergence=None if rep is None else rep.to_dict(),
            settings=settings,
            provenance=_provenance.provenance(dtype=log.get("dtype"), settings=settings),
        )

    def on_diverged(self, info: TrainInfo, step: int) -> DivergenceReport:
        """Called by :func:`landscape.train` when step ``step`` is not finite, with ``info`` at
        the last finite parameters: re-runs the step outside the compiled loop."""
        with _validate.boundary("landscape.diagnostics.training_monitor"):
            _require(info)
            _new_run(self.log, info)
            idx = np.asarray(info.batch_indices_fn(step), np.int64)
            batch = _gather(info.train_data, idx)
            rep = _diagnose(
                info.loss_fn,
                info.params,
                info.state,
                batch,
                idx,
                info.transformation,
                info.opt_state,
                info.train_data,
                self.z_threshold,
                step,
            )
            self.log["report"] = rep
            return rep


def _new_run(log: dict, info: TrainInfo) -> None:
    """Start a new record when ``info`` comes from another ``train`` call (each has its own
    history dict)."""
    if log.get("run") is not info.history:
        log.clear()
        log["run"] = info.history


def _require(info: TrainInfo) -> None:
    missing = [
        k
        for k in ("transformation", "batch_indices_fn", "num_steps")
        if getattr(info, k, None) is None
    ]
    if missing:
        raise TypeError(
            f"{_validate.where()}: the training loop gave no {', '.join(missing)} in its "
            "TrainInfo; the monitor runs inside landscape.train (for a step of your own loop "
            "use landscape.diagnostics.diagnose_step)."
        )


@_validate.public("landscape.diagnostics.training_monitor")
def training_monitor(
    *,
    every: int,
    at_start: bool = True,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    name: str = "monitor",
) -> TrainingMonitor:
    """A :func:`landscape.train` callback recording per-layer gradient norms, update-to-weight
    ratios and the loss every ``every`` steps, and reporting the first non-finite step.

    At each call (after ``s`` updates; at ``s = 0`` with ``at_start``) it evaluates update
    ``s + 1`` exactly as ``train`` takes it (same mini-batch, training-mode loss, optimiser
    state) and records it under step ``s + 1``; the last call (``s = num_steps``) records
    nothing. When training diverges, ``train`` raises :class:`landscape.TrainingDivergedError`
    with ``err.report``, the monitor's :class:`DivergenceReport`: the step, whether the batch
    held NaN/Inf or outliers (robust z-scores against the training data), the layer where the
    first non-finite value appears (the failing step re-run from the last finite parameters
    outside the compiled loop, equation by equation), and the last finite parameters.

    Cost: one forward and backward pass on one mini-batch and one optimiser update per call
    (one compiled program per loss, optimiser and shapes), four scalars per parameter leaf to
    the host; nothing inside the compiled training loop. Measured on the digits MLP 64-32-32-10
    with Adam (CPU, 2 cores under load 2-4, ``benchmarks/diagnostics/monitor_overhead.py``):
    about 0.6 ms per record, train's callback machinery included, against 0.06 ms per training
    step, so 1% at ``every=1000``, 10-20% at ``every=100`` to 50 (larger models pay the same
    fixed cost over longer steps). Callback periods set ``train``'s block length (it divides every
    period, at most ``max_block``): ``every`` of 50 or more keeps the longest blocks. On a
    divergence: one equation-by-equation evaluation of the loss (eager; seconds for a large
    model) and the batch's robust z-scores against up to 10,000 training examples.

    Args:
      every: steps between records (> 0).
      at_start: record the first update (called at step 0).
      z_threshold: a batch value is an outlier when its robust ``|z|`` against the training data
        exceeds this (default 20, :func:`audit_data`'s; see there why not 3.5).
      name: the callback's name.

    Returns:
      A :class:`TrainingMonitor` (a :class:`landscape.train.Callback`); ``.result()`` gives a
      :class:`MonitorResult` (plot with :func:`landscape.plot.plot_monitor`), ``.report`` the
      divergence report.

    Raises:
      ValueError, TypeError: ``every`` not a positive int, ``z_threshold`` not a positive
        number, ``name`` not a non-empty string.

    Example:
      >>> monitor = landscape.diagnostics.training_monitor(every=10)
      >>> try:
      ...     run = landscape.train(model, data, optimizer="sgd", learning_rate=0.1,
      ...                           num_steps=500, callbacks=[monitor])
      ... except landscape.TrainingDivergedError as err:
      ...     print(err.report)                # step, batch, layer
      ...     params = err.report.last_finite_params
      >>> landscape.plot.plot_monitor(monitor.result())

    References:
      Karpathy (2019), "A recipe for training neural networks"; Goodfellow, Bengio & Courville
      (2016), section 8.2.4.
    """
    every = _validate.check_positive_int(every, name="every")
    if not isinstance(at_start, (bool, np.bool_)):
        raise TypeError(f"{_validate.where()}: at_start must be True or False; got {at_start!r}.")
    z_threshold = _check_z(z_threshold)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{_validate.where()}: name must be a non-empty string; got {name!r}.")
    log: dict[str, Any] = {}

    def measure(info: TrainInfo):
        with _validate.boundary("landscape.diagnostics.training_monitor"):
            return _measure(info)

    def _measure(info: TrainInfo):
        _require(info)
        _new_run(log, info)
        if info.step >= info.num_steps:
            return None
        k = info.step + 1
        idx = np.asarray(info.batch_indices_fn(k), np.int64)
        batch = _gather(info.train_data, idx)
        if "order" not in log:
            prog = _trace(info.loss_fn, info.params, info.state, batch)
            log["order"] = prog.order
            log["leaves"] = prog.forward_leaves
            log["dtype"] = _tree.dtype_of(info.params)
            log["settings"] = {"optimizer": _serialize.to_jsonable(info.optimizer or {})}
            log["rows"] = []
        loss, g, u, p, _gok, _nok = _run_probe(
            info.loss_fn, info.transformation, info.params, info.state, info.opt_state, batch
        )
        o = log["order"]
        log["rows"].append({"step": k, "loss": float(loss), "g": g[o], "u": u[o], "p": p[o]})
        return None

    measure.__name__ = name
    return TrainingMonitor(every, measure, bool(at_start), name, z_threshold, log)


def _check_z(z_threshold) -> float:
    z = _validate.check_finite_scalar(z_threshold, name="z_threshold")
    if z <= 0:
        raise ValueError(f"{_validate.where()}: z_threshold must be > 0; got {z_threshold}.")
    return z


# --------------------------------------------------------------------------------------------
# One step, anywhere
# --------------------------------------------------------------------------------------------
@_validate.public("landscape.diagnostics.diagnose_step")
def diagnose_step(
    loss_fn: Loss | Callable,
    params: PyTree,
    batch: PyTree,
    *,
    state: PyTree = None,
    optimizer=None,
    opt_state: PyTree = None,
    data: PyTree = None,
    indices=None,
    step: int | None = None,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
) -> DivergenceReport:
    """The monitor's divergence report for one step of any training loop: the batch (NaN, Inf,
    outliers), the forward pass equation by equation (the first non-finite value and its
    layer), the gradient and, with ``optimizer``, the update from ``params``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)``); a :class:`Loss` is
        evaluated in training mode (batch statistics) with ``state``, as ``landscape.train``
        does.
      params: the parameters the step starts from (finite).
      batch: the step's mini-batch (a dict of arrays with a leading example axis; may hold
        NaN/Inf: that is what this looks for).
      state: the model state for a :class:`Loss` (default: the loss's own).
      optimizer: an ``optax.GradientTransformation`` to check the update with (optional).
      opt_state: its state (default ``optimizer.init(params)``).
      data: the data set the batch was drawn from, for the robust z-scores (default: the batch
        itself, a weak reference for small batches); same fields as ``batch``.
      indices: the batch's example indices in ``data`` (default ``0 .. B-1``).
      step: the step number to put in the report.
      z_threshold: outlier threshold on the robust ``|z|`` (default 20).

    Returns:
      A :class:`DivergenceReport` (``stage == "not reproduced"`` when the step is finite).

    Raises:
      ValueError, TypeError: a batch without a leading example axis shared by its fields,
        ``indices`` of the wrong length or outside ``data``, ``data`` with other fields,
        non-finite ``params``, ``opt_state`` without ``optimizer``, a bad ``z_threshold``.
    """
    _validate.check_callable(loss_fn, name="loss_fn")
    _validate.check_params(params, name="params")
    B = _validate.num_examples(batch, name="batch")
    if state is None:
        state = loss_fn.state if isinstance(loss_fn, Loss) else {}
    if opt_state is not None and optimizer is None:
        raise ValueError(
            f"{_validate.where()}: opt_state was given without optimizer; pass the optax "
            "transformation it belongs to."
        )
    if optimizer is not None:
        import optax

        if not isinstance(optimizer, optax.GradientTransformation):
            raise TypeError(
                f"{_validate.where()}: optimizer must be an optax.GradientTransformation; got "
                f"{type(optimizer).__name__}."
            )
        if opt_state is None:
            opt_state = optimizer.init(params)
    if data is not None:
        n = _validate.num_examples(data, name="data")
        if jax.tree.structure(data) != jax.tree.structure(batch):
            raise ValueError(
                f"{_validate.where()}: data must have the batch's fields; got "
                f"{_validate.describe(data)}, expected {_validate.describe(batch)}."
            )
    else:
        n = B
    if indices is None:
        indices = np.arange(B)
    ix = np.asarray(indices)
    if ix.ndim != 1 or ix.shape[0] != B or not np.issubdtype(ix.dtype, np.integer):
        raise ValueError(
            f"{_validate.where()}: indices must be {B} integers (one per example of the batch); "
            f"got an array of shape {ix.shape} and dtype {ix.dtype}."
        )
    if ix.size and (ix.min() < 0 or ix.max() >= n):
        raise ValueError(
            f"{_validate.where()}: indices must lie in [0, {n}) (examples of data); got "
            f"{int(ix.min())}..{int(ix.max())}."
        )
    if step is not None:
        step = _validate.check_positive_int(step, name="step")
    z_threshold = _check_z(z_threshold)
    return _diagnose(
        loss_fn,
        params,
        state,
        batch,
        ix.astype(np.int64),
        optimizer,
        opt_state,
        data,
        z_threshold,
        step,
    )
