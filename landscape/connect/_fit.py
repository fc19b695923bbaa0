"""Curve finding (Garipov et al. 2018): train the bends of a Bezier curve or polygonal chain so
that the expected loss along the curve is low, with the endpoints fixed."""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from landscape import _provenance, engine
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._result import Result, result, static_field
from landscape.connect._common import as_loss
from landscape.losses import Loss
from landscape.paths import Path, as_bends

PyTree = Any

CURVE_KINDS = ("bezier", "polychain")
T_SAMPLING = ("stratified", "uniform")
CHECKPOINT_ENTRY = "curve"
"""The store entry holding the bends, optimiser state, step and history."""

__all__ = ["CURVE_KINDS", "CurveResult", "CurveTrainingError", "fit_curve"]


@result
class CurveResult(Result):
    """A trained curve.

    Attributes:
      controls: the control points (start, bends, end) on a leading axis; ``.path`` is the
        :class:`Path`.
      history: ``{"step": (n,), "batch_loss": (n,)}``: the mini-batch objective (mean over the
        step's values of ``t``, weight decay included) after each step.
      kind: ``"bezier"`` or ``"polychain"``.
      num_steps: steps done (including steps restored from a checkpoint).
      config, provenance: the settings and what produced them; elapsed: seconds spent in this
        call.
    """

    controls: PyTree
    history: dict
    kind: str = static_field(default="bezier")
    num_steps: int = static_field(default=0)
    config: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)
    elapsed: float = static_field(default=0.0)

    @property
    def path(self) -> Path:
        """The curve as a :class:`Path` (evaluable at any ``t``)."""
        return Path(self.controls, self.kind)

    @property
    def bends(self) -> PyTree:
        return self.path.bends

    def __repr__(self):
        bl = np.asarray(self.history.get("batch_loss", []))
        last = f"{float(bl[-1]):.4g}" if bl.size else "n/a"
        return (
            f"CurveResult({self.kind}, num_bends={self.path.num_bends}, steps={self.num_steps}, "
            f"last batch loss {last}, time={self.elapsed:.1f}s)"
        )


class CurveTrainingError(FloatingPointError):
    """:func:`fit_curve` met a non-finite loss or gradient.

    Attributes:
      step: the step (1-based count of updates) whose loss or gradient was not finite.
      result: a :class:`CurveResult` holding the last finite curve (the bends before ``step``)
        and the history up to then; also written to the checkpoint if one was asked for.
    """

    def __init__(self, message: str, step: int, result: CurveResult):
        super().__init__(message)
        self.step = step
        self.result = result


# --------------------------------------------------------------------------------------------
def _objective_at(loss_fn, params, batch):
    """Training-mode loss at one point (batch statistics for batch-norm models)."""
    if isinstance(loss_fn, Loss):
        (loss, _), _ = loss_fn.train_loss(params, loss_fn.state, batch)
        return loss
    loss, _ = engine.loss_and_aux(loss_fn, params, batch)
    return loss


def _controls(ends, bends):
    a, b = ends
    return jax.tree.map(
        lambda x, y, z: jnp.concatenate([x[None], y, z[None]], axis=0), a, bends, b
    )


def sample_ts(key, num_ts: int, t_sampling: str, dtype):
    """``num_ts`` values of ``t``: i.i.d. uniform, or one uniform draw per stratum
    ``[j / num_ts, (j + 1) / num_ts)`` (unbiased for ``E_t``, lower variance)."""
    u = jax.random.uniform(key, (num_ts,), dtype)
    if t_sampling == "uniform":
        return u
    return (jnp.arange(num_ts, dtype=dtype) + u) / num_ts


@functools.partial(
    jax.jit,
    static_argnames=("loss_static", "opt", "kind", "num_ts", "t_sampling", "shard_t"),
    donate_argnums=(2, 3),
)
def _curve_block(loss_static, loss_dyn, bends, opt_state, ends, data, idx, key, step0, wd,
                 opt, kind, num_ts, t_sampling, shard_t):
    loss_fn = engine.merge_fn(loss_static, loss_dyn)
    dtype = _tree.dtype_of(bends)

    def objective(bs, batch, ts):
        path = Path(_controls(ends, bs), kind)

        def one(t):
            p = path(t)
            val = _objective_at(loss_fn, p, batch)
            # weight decay at the curve point (Garipov et al.), not on the control points
            return val + 0.5 * wd.astype(val.dtype) * _tree.vdot(p, p)

        return jnp.mean(jax.vmap(one)(ts))

    def body(carry, inp):
        bs, o, bad = carry
        i, ix = inp
        batch = jax.tree.map(lambda x: jnp.take(x, ix, axis=0), data)
        ts = sample_ts(jax.random.fold_in(key, step0 + i), num_ts, t_sampling, dtype)
        if shard_t:
            ts = jax.lax.with_sharding_constraint(ts, NamedSharding(engine.mesh(), P(engine.DATA_AXIS)))
        # convolutions of the gradient in XLA:CPU's fast form inside the scan (engine.canonical_convs)
        val, g = engine.canonical_convs(jax.value_and_grad(objective))(bs, batch, ts)
        ok = jnp.isfinite(val) & engine.all_finite(g)
        upd, no = opt.update(g, o, bs)
        nb = optax.apply_updates(bs, upd)
        keep = ok & (bad < 0)
        bs2 = jax.tree.map(lambda x, y: jnp.where(keep, x, y), nb, bs)
        o2 = jax.tree.map(lambda x, y: jnp.where(keep, x, y), no, o)
        bad2 = jnp.where((bad < 0) & ~ok, step0 + i + 1, bad)
        return (bs2, o2, bad2), val

    steps = jnp.arange(idx.shape[0])
    (bs, o, bad), vals = jax.lax.scan(body, (bends, opt_state, jnp.asarray(-1)), (steps, idx))
    return bs, o, bad, vals


def initial_bends(params_a: PyTree, params_b: PyTree, num_bends: int) -> PyTree:
    """``num_bends`` points evenly spaced on the segment (at ``k / (num_bends + 1)``), stacked on
    a leading axis: with them a Bezier curve or a chain is exactly the straight line."""
    dtype = _tree.dtype_of(params_a)
    fr = jnp.arange(1, num_bends + 1, dtype=dtype) / (num_bends + 1)

    def leaf(x, y):
        f = fr.reshape((-1,) + (1,) * jnp.ndim(x)).astype(jnp.result_type(x))
        return (1 - f) * jnp.asarray(x)[None] + f * jnp.asarray(y)[None]

    return jax.tree.map(leaf, params_a, params_b)


def _block_length(num_steps: int, every: int | None, cap: int) -> int:
    g = num_steps if every is None else math.gcd(num_steps, every)
    for d in range(min(g, cap), 0, -1):
        if g % d == 0:
            return d
    return 1


# --------------------------------------------------------------------------------------------
@_validate.public("landscape.connect.fit_curve")
def fit_curve(
    model_or_loss,
    params_a: PyTree,
    params_b: PyTree,
    data: dict,
    *,
    key=None,
    kind: str = "bezier",
    num_bends: int = 1,
    optimizer: optax.GradientTransformation | None = None,
    num_steps: int = 1000,
    batch_size: int = 128,
    num_ts: int = 4,
    t_sampling: str = "stratified",
    weight_decay: float = 0.0,
    init: PyTree | None = None,
    store=None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    max_block: int = 50,
) -> CurveResult:
    """Train a curve between two solutions (Garipov et al. 2018).

    Minimises ``E_{t ~ U[0, 1]} [L(phi(t)) + (weight_decay / 2) ||phi(t)||^2]`` over the bends
    of the curve ``phi`` with the endpoints fixed. Each step draws ``num_ts`` values of ``t``
    (stratified by default) and evaluates them on the same mini-batch, vectorised with
    ``vmap`` (Garipov et al. draw one ``t`` per mini-batch; more values cut the gradient's
    variance at the same number of steps). Batch-norm models are trained in training mode
    (batch statistics at each curve point); evaluate them with ``profile(...,
    bn="reestimate")``.

    Steps run in compiled blocks (``lax.scan``; one compilation); the values of ``t`` come from
    ``jax.random.fold_in(key, step)`` and the mini-batch order from NumPy's ``default_rng``
    seeded with the key's data and the epoch (for ``key = jax.random.key(s)``:
    ``default_rng([s, epoch])``), so a run resumed from its store continues exactly as if it
    had not stopped. With several devices and ``num_ts`` a multiple of their count, the values
    of ``t`` are sharded across devices.

    Args:
      model_or_loss: a :class:`landscape.Model` (cross-entropy), a :class:`landscape.Loss`, or
        a ``loss_fn(params, batch)``.
      params_a, params_b: the endpoints (fixed).
      data: training data ``{"x", "y"}`` (kept on the device).
      key: a JAX PRNG key (required): the values of ``t`` and the mini-batch order.
      kind: ``"bezier"`` or ``"polychain"``.
      num_bends: number of bends (Garipov et al.: 1, i.e. ``num_bends=3`` control points in
        their code).
      optimizer: an Optax transformation (default ``optax.adam(1e-3)``); any schedule inside
        it counts steps from 0 of this run's first call.
      num_steps: total steps (a resumed run continues up to this count); default 1000.
      batch_size: examples per step.
      num_ts: values of ``t`` per step.
      t_sampling: ``"stratified"`` or ``"uniform"`` (i.i.d., as Garipov et al.).
      weight_decay: L2 coefficient applied at the curve point.
      init: the starting bends (one bend shaped like the parameters, or stacked on a leading
        axis); default: evenly spaced on the segment ``a -> b`` (the curve starts as the
        straight line, exactly, for both kinds).
      store: a directory (or :class:`landscape.Store`): the bends, optimiser state, step and
        history are saved atomically every ``checkpoint_every`` steps (entry ``curve``) and a
        call with the same settings resumes from them; a store of other settings raises
        ``ValueError`` listing the differences (``landscape.Store(path, overwrite=True)``
        replaces it). The store is bound to the endpoints, data, loss, key, sizes and the
        optimiser's type, but NOT to its hyperparameters (optax transformations do not expose
        them): use a new store when you change the learning rate or schedule.
      checkpoint_every: steps between saves (default: about 10 per run).
      progress: tqdm progress bar.
      max_block: at most this many steps per compiled call.

    Returns:
      :class:`CurveResult`; ``result.path`` is the trained :class:`landscape.paths.Path`.

    Raises:
      CurveTrainingError: a non-finite loss or gradient; ``err.step`` names the step and
        ``err.result`` keeps the last finite curve (also saved in the store).
      ValueError, TypeError: mismatched endpoints, bad data or settings, a missing key, or a
        store of different settings.

    Cost: per step ``num_ts`` forward and backward passes on one mini-batch; memory
    ``num_ts`` parameter copies plus their activations.

    References:
      Garipov, Izmailov, Podoprikhin, Vetrov and Wilson 2018, "Loss surfaces, mode
      connectivity, and fast ensembling of DNNs"; Draxler et al. 2018.
    """
    loss_fn = as_loss(model_or_loss)
    key = _validate.check_key(key)
    _validate.check_choice(kind, CURVE_KINDS, name="kind")
    _validate.check_choice(t_sampling, T_SAMPLING, name="t_sampling")
    num_bends = _validate.check_positive_int(num_bends, name="num_bends")
    num_steps = _validate.check_positive_int(num_steps, name="num_steps")
    num_ts = _validate.check_positive_int(num_ts, name="num_ts")
    max_block = _validate.check_positive_int(max_block, name="max_block")
    weight_decay = _validate.check_finite_scalar(weight_decay, name="weight_decay")
    if weight_decay < 0:
        raise ValueError(f"{_validate.where()}: weight_decay must be >= 0; got {weight_decay}.")
    _validate.check_params(params_a, name="params_a")
    _validate.check_params(params_b, name="params_b")
    _validate.check_same_structure(params_b, params_a, name="params_b",
                                   ref_name="params_a", check_dtypes=True)
    n = _validate.check_data(data)
    batch_size = _validate.check_batch_size(batch_size, n)
    engine.check_loss(loss_fn, params_a, data)
    if optimizer is None:
        optimizer = optax.adam(1e-3)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{_validate.where()}: optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}.")
    if checkpoint_every is None:
        checkpoint_every = max(1, num_steps // 10)
    checkpoint_every = _validate.check_positive_int(checkpoint_every, name="checkpoint_every")

    dtype = _tree.dtype_of(params_a)
    a = jax.tree.map(jnp.asarray, params_a)
    b = jax.tree.map(jnp.asarray, params_b)
    if init is None:
        bends = initial_bends(a, b, num_bends)
    else:
        bl = as_bends(init, params_a, name="init")
        if len(bl) != num_bends:
            raise ValueError(f"{_validate.where()}: init holds {len(bl)} bends but num_bends={num_bends}.")
        bends = _tree.stack([jax.tree.map(jnp.asarray, x) for x in bl])

    words = _validate.key_words(key)
    config = {
        "kind": kind, "num_bends": num_bends, "batch_size": batch_size, "num_ts": num_ts,
        "t_sampling": t_sampling, "weight_decay": weight_decay, "key": words,
        "endpoints": _provenance.data_hash({"a": params_a, "b": params_b}),
        "init": None if init is None else _provenance.data_hash(init),
        "data": _provenance.data_hash(data), "loss": repr(loss_fn)[:200],
        "optimizer": _store.stable_text(optimizer)[:200],
    }
    store = _store.as_store(store, {"job": _validate.where(), **config})
    opt_state = optimizer.init(bends)
    step = 0
    history: dict[str, list] = {"step": [], "batch_loss": []}
    if store is not None and store.has(CHECKPOINT_ENTRY):
        saved = store.load(CHECKPOINT_ENTRY)
        bends = jax.tree.map(jnp.asarray, saved["bends"])
        _, treedef = jax.tree.flatten(opt_state)
        opt_state = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in saved["opt_state"]])
        step = int(saved["step"])
        history = {k: list(np.asarray(v)) for k, v in saved["history"].items()}

    def make_result(bs, elapsed):
        hist = {k: np.asarray(v) for k, v in history.items()}
        prov = _provenance.provenance(dtype=dtype, seeds={"key": words}, data=config["data"],
                                      settings=config)
        return CurveResult(
            controls=_controls((a, b), bs), history=hist, kind=kind, num_steps=step,
            config={**config, "num_steps": num_steps}, provenance=prov, elapsed=elapsed,
        )

    def save(bs, o):
        if store is None:
            return
        store.save(
            CHECKPOINT_ENTRY,
            {"bends": jax.tree.map(np.asarray, bs), "opt_state": [np.asarray(x) for x in jax.tree.leaves(o)],
             "step": np.asarray(step), "history": {k: np.asarray(v) for k, v in history.items()}},
        )

    ddata = jax.tree.map(jnp.asarray, data)
    steps_per_epoch = n // batch_size
    epochs: dict[int, np.ndarray] = {}

    def indices(start: int, count: int) -> np.ndarray:
        rows = []
        for s in range(start, start + count):
            e, r = divmod(s, steps_per_epoch)
            if e not in epochs:
                order = np.random.default_rng([*words, e]).permutation(n)
                epochs[e] = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
                for old in [k for k in epochs if k < e - 1]:
                    del epochs[old]
            rows.append(epochs[e][r])
        return np.stack(rows).astype(np.int32)

    ndev = jax.device_count()
    shard_t = ndev > 1 and num_ts % ndev == 0
    loss_static, loss_dyn = engine.split_fn(loss_fn)
    wd = jnp.asarray(weight_decay, dtype)
    block = _block_length(num_steps, checkpoint_every, max_block)
    t0 = time.perf_counter()
    bar = None
    if progress and step < num_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=step, desc="fit_curve", unit="step")
    try:
        while step < num_steps:
            count = min(block - step % block, num_steps - step)
            idx = jnp.asarray(indices(step, count))
            bends, opt_state, bad, vals = _curve_block(
                loss_static, loss_dyn, bends, opt_state, (a, b), ddata, idx, key,
                jnp.asarray(step), wd, optimizer, kind, num_ts, t_sampling, shard_t,
            )
            bad = int(bad)
            vals = np.asarray(vals)
            if bad >= 0:
                good = bad - 1 - step
                history["step"].extend(range(step + 1, step + 1 + good))
                history["batch_loss"].extend(vals[:good].tolist())
                step = bad - 1
                # non-finite steps are not applied: bends/opt_state hold the last finite values
                save(bends, opt_state)
                res = make_result(bends, time.perf_counter() - t0)
                where = f" (last finite curve saved in {store.path})" if store is not None else ""
                raise CurveTrainingError(
                    f"{_validate.where()}: non-finite loss or gradient at step {bad} (batch loss "
                    f"{vals[good]}); training stopped and the curve after step {bad - 1} is kept "
                    f"in err.result{where}. Lower the learning rate or check the endpoints.",
                    bad,
                    res,
                )
            history["step"].extend(range(step + 1, step + count + 1))
            history["batch_loss"].extend(vals.tolist())
            step += count
            if bar is not None:
                bar.update(count)
                bar.set_postfix(loss=f"{vals[-1]:.4f}")
            if step % checkpoint_every == 0 or step == num_steps:
                save(bends, opt_state)
    except KeyboardInterrupt:
        if store is not None:  # the last save is consistent; the interrupted block is not saved
            import sys

            last = int(store.load(CHECKPOINT_ENTRY)["step"]) if store.has(CHECKPOINT_ENTRY) else 0
            print(f"\nfit_curve: interrupted; the curve after step {last} is saved in "
                  f"{store.path}. Call again with the same arguments and store to resume.",
                  file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    return make_result(bends, time.perf_counter() - t0)
