"""Sparse subnetworks: pruning masks, lottery tickets, instability analysis.

* Masks are pytrees of booleans shaped like the parameters (True = kept): :func:`dense_mask`,
  :func:`prunable_mask` (which leaves may be pruned: kernels by default, never biases or
  batch-norm scales unless asked), :func:`magnitude_prune` (global or layer-wise),
  :func:`random_mask` (the random-pruning control: the same count per leaf, random places),
  :func:`apply_mask`, :func:`sparsity` and :func:`sparsity_report`.
* Masked training is :func:`landscape.train`'s ``mask=``: the mask multiplies the gradients,
  the updates and the weights after every step, so pruned weights stay exactly zero under any
  optimiser (momentum, Adam, weight decay). ``optax.masked`` is not this: it selects whole
  leaves to transform and passes the others' raw gradients through.
* :func:`iterative_pruning`: Frankle & Carbin's iterative magnitude pruning with rewinding
  (Frankle et al. 2020): train, prune the smallest surviving weights, rewind the survivors to
  their values at ``rewind_step`` (0 = the initialisation), repeat; with the random
  re-initialisation and random-mask controls, resumable per round through a store.
* :func:`instability`: two copies of a network spawned from the same training state at
  ``spawn_step`` and trained with different mini-batch orders; the error barrier on the linear
  path between them (:func:`landscape.connect.profile` and :func:`landscape.connect.barrier`).

Plots: :func:`landscape.plot.plot_pruning` (test accuracy vs sparsity) and
:func:`landscape.plot.plot_instability` (barrier vs spawn step).

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis" (ICLR); Frankle, Dziugaite, Roy &
  Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (ICML).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from landscape import _provenance
from landscape import store as _store
from landscape import tree as _tree
from landscape import validate as _validate
from landscape._model import Model, as_model
from landscape._result import Result, result, static_field
from landscape.train import TrainResult, TrainState, _apply_mask, check_mask, train

PyTree = Any

__all__ = [
    "DEFAULT_PRUNABLE",
    "InstabilityResult",
    "PruningResult",
    "SparsityReport",
    "apply_mask",
    "check_mask",
    "dense_mask",
    "instability",
    "iterative_pruning",
    "magnitude_prune",
    "prunable_mask",
    "random_mask",
    "sparsity",
    "sparsity_report",
]

DEFAULT_PRUNABLE = ("kernel",)
"""Leaf names pruned by default: weight matrices and convolution kernels (Flax's ``kernel``),
not biases, batch-norm scales or embeddings (Frankle & Carbin prune weights only)."""

CONTROLS = ("random_mask", "reinit")


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def _prunable_flags(params: PyTree, prunable) -> list[bool]:
    """One bool per leaf of ``params``: whether the leaf may be pruned."""
    paths = _tree.leaf_paths(params)
    leaves = jax.tree.leaves(params)
    if isinstance(prunable, str):
        prunable = (prunable,)
    if callable(prunable):
        return [bool(prunable(p, x)) for p, x in zip(paths, leaves)]
    if isinstance(prunable, (tuple, list)) and all(isinstance(s, str) for s in prunable):
        names = set(prunable)
        flags = [p.split("/")[-1] in names or p in names for p in paths]
        if not any(flags):
            raise ValueError(
                f"{_validate.where()}: prunable={tuple(prunable)!r} selects no leaf of the "
                f"parameters (leaf paths: {paths[:12]}); name leaves by their last path part "
                "(e.g. 'kernel') or full path, or pass a callable (path, leaf) -> bool."
            )
        return flags
    raise TypeError(
        f"{_validate.where()}: prunable must be leaf names (e.g. ('kernel',)) or a callable "
        f"(path, leaf) -> bool; got {type(prunable).__name__}."
    )


@_validate.public
def dense_mask(params: PyTree) -> PyTree:
    """The mask that keeps every weight (all True), shaped like ``params``."""
    _validate.check_params(params, finite=False)
    return _tree.to_device(jax.tree.map(lambda x: np.ones(np.shape(x), bool), params))


@_validate.public
def prunable_mask(params: PyTree, *, prunable=DEFAULT_PRUNABLE) -> PyTree:
    """True on every entry of the leaves that may be pruned, False elsewhere.

    Args:
      params: the parameters.
      prunable: leaf names (the last part of a leaf's path, e.g. ``"kernel"``, or the whole
        path, e.g. ``"layers/0/kernel"``), or a callable ``(path, leaf) -> bool``.
    """
    _validate.check_params(params, finite=False)
    flags = _prunable_flags(params, prunable)
    leaves, treedef = jax.tree.flatten(params)
    return _tree.to_device(
        jax.tree.unflatten(treedef, [np.full(np.shape(x), f, bool) for x, f in zip(leaves, flags)])
    )


@_validate.public
def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """``params`` with the pruned entries (mask False) set to exactly zero."""
    mask = check_mask(mask, params)
    return _apply_mask(params, mask)


def _check_rate(rate, name: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
        raise TypeError(f"{_validate.where()}: {name} must be a float in (0, 1); got {rate!r}.")
    r = float(rate)
    if not 0.0 < r < 1.0:
        raise ValueError(
            f"{_validate.where()}: {name} must lie in (0, 1) (the fraction of the surviving "
            f"prunable weights removed per round; 0.2 is Frankle & Carbin's); got {rate!r}."
        )
    return r


def _layer_groups(params: PyTree, flags: list[bool], layer_rates) -> dict[int, float]:
    """``{leaf index: rate}`` for the prunable leaves ``layer_rates`` names (a leaf path, or a
    leading part of one: ``"head"`` names ``head/kernel``); validated."""
    if layer_rates is None:
        return {}
    if not isinstance(layer_rates, dict) or not all(isinstance(k, str) for k in layer_rates):
        raise TypeError(
            f"{_validate.where()}: layer_rates must be a dict {{leaf path or its leading part: "
            f"rate}} (e.g. {{'head': 0.1}}); got {type(layer_rates).__name__}."
        )
    paths = _tree.leaf_paths(params)
    out: dict[int, float] = {}
    for key, value in layer_rates.items():
        r = _check_rate(value, name=f"layer_rates[{key!r}]")
        hits = [
            i
            for i, p in enumerate(paths)
            if flags[i] and (p == key or p.startswith(key.rstrip("/") + "/"))
        ]
        if not hits:
            prunable = [p for p, f in zip(paths, flags) if f]
            raise ValueError(
                f"{_validate.where()}: layer_rates key {key!r} names no prunable leaf (prunable "
                f"leaves: {prunable[:12]}); give a leaf path or its leading part, e.g. "
                f"{prunable[-1].rsplit('/', 1)[0]!r}."
            )
        for i in hits:
            if i in out:
                raise ValueError(
                    f"{_validate.where()}: layer_rates names leaf {paths[i]!r} twice (keys "
                    f"{sorted(layer_rates)}); give each leaf one rate."
                )
            out[i] = r
    return out


@_validate.public
def magnitude_prune(
    params: PyTree,
    rate: float,
    *,
    mask: PyTree | None = None,
    scope: str = "global",
    prunable=DEFAULT_PRUNABLE,
    layer_rates: dict | None = None,
) -> PyTree:
    """Remove the fraction ``rate`` of the surviving prunable weights with the smallest
    magnitudes.

    Args:
      params: the (trained) parameters whose magnitudes rank the weights.
      rate: the fraction in ``(0, 1)`` of the surviving prunable weights to remove:
        ``round(rate * survivors)`` of them (per leaf with ``scope="layerwise"``).
      mask: the current mask (default: every weight kept); pruned weights stay pruned.
      scope: ``"global"`` (one threshold over every prunable leaf: Frankle & Carbin's deeper
        networks) or ``"layerwise"`` (the same fraction of each leaf: their LeNet and Conv-2/4/6).
      prunable: which leaves may be pruned (see :func:`prunable_mask`); the others are kept
        whole.
      layer_rates: ``{leaf path or its leading part: rate}`` for leaves pruned at their own rate
        (each named leaf by itself, layer-wise), e.g. Frankle & Carbin's output layer at half
        the rate: ``rate=0.2, layer_rates={"head": 0.1}`` (``"layers/2"`` for a two-hidden-layer
        ``mlp``). Default ``None``: every prunable leaf at ``rate`` (the output layer included).
        The other prunable leaves are pruned at ``rate`` under ``scope``.

    Returns:
      The new mask (booleans, ``params``' structure). Ties in magnitude are broken by position
      (the earlier entry in a leaf, the earlier leaf, is pruned first), so the count is exact.

    Raises:
      ValueError, TypeError: ``rate`` (or a ``layer_rates`` value) outside ``(0, 1)``, a
        ``layer_rates`` key naming no prunable leaf or a leaf twice, a mask of another structure
        or not boolean, an unknown ``scope``, non-finite parameters.
    """
    rate = _check_rate(rate)
    _validate.check_choice(scope, ("global", "layerwise"), name="scope")
    _validate.check_params(params)
    mask = dense_mask(params) if mask is None else check_mask(mask, params)
    flags = _prunable_flags(params, prunable)
    leaves, treedef = jax.tree.flatten(params)
    mags = [np.abs(np.asarray(x, np.float64)).ravel() for x in leaves]
    keep = [np.asarray(m).ravel().copy() for m in jax.tree.leaves(mask)]

    own = _layer_groups(params, flags, layer_rates)

    def prune(ids: list[int], r: float):
        alive = [np.flatnonzero(keep[i]) for i in ids]
        vals = np.concatenate([mags[i][a] for i, a in zip(ids, alive)]) if ids else np.zeros(0)
        k = int(round(r * vals.size))
        if k == 0:
            return
        order = np.argsort(vals, kind="stable")[:k]
        offsets = np.cumsum([0] + [a.size for a in alive])
        for j, (i, a) in enumerate(zip(ids, alive)):
            sel = order[(order >= offsets[j]) & (order < offsets[j + 1])] - offsets[j]
            keep[i][a[sel]] = False

    chosen = [i for i, f in enumerate(flags) if f and i not in own]
    if scope == "global":
        prune(chosen, rate)
    else:
        for i in chosen:
            prune([i], rate)
    for i, r in own.items():
        prune([i], r)
    return _tree.to_device(
        jax.tree.unflatten(treedef, [k.reshape(np.shape(x)) for k, x in zip(keep, leaves)])
    )


@_validate.public
def random_mask(mask: PyTree, *, key, prunable=DEFAULT_PRUNABLE) -> PyTree:
    """The random-pruning control of ``mask``: in every prunable leaf the same number of pruned
    entries at uniformly random places (a random permutation of the leaf's mask); other leaves
    unchanged. Frankle & Carbin's "random sparse network of the same layer-wise sparsity"."""
    key = _validate.check_key(key)
    check_mask(mask, mask)
    flags = _prunable_flags(mask, prunable)
    leaves, treedef = jax.tree.flatten(mask)
    keys = _tree.split_key(key, len(leaves))
    out = []
    for k, m, f in zip(keys, leaves, flags):
        m = _tree.to_device(m)
        out.append(_permuted(k, m) if f else m)
    return jax.tree.unflatten(treedef, out)


def _permuted(key, x):
    """``x``'s entries in a random order: ``jax.random.permutation(key, x.ravel())`` (the same
    stable sort by the same random keys, hence the same order), through the permutation of the
    indices (compiled once per size, whatever the dtype: masks and parameters share it) applied
    on the host."""
    flat = np.asarray(x).ravel()
    return _tree.to_device(flat[np.asarray(_permutation(key, flat.size))].reshape(x.shape))


@functools.partial(jax.jit, static_argnums=1)
def _permutation(key, n: int):
    """``jax.random.permutation(key, n)`` in one program per ``n`` (eagerly: an iota and a
    shuffle program)."""
    return jax.random.permutation(key, n)


@result
class SparsityReport(Result):
    """How much of each leaf a mask prunes.

    Attributes:
      pruned, size: ``{leaf path: count}`` of pruned entries and of all entries.
      prunable: the paths of the prunable leaves.
    """

    pruned: dict
    size: dict
    prunable: tuple = static_field(default=())

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable leaves' entries pruned."""
        tot = sum(int(self.size[p]) for p in self.prunable)
        return sum(int(self.pruned[p]) for p in self.prunable) / tot if tot else 0.0

    @property
    def overall(self) -> float:
        """Fraction of all parameters pruned (biases and other kept leaves included)."""
        return sum(int(v) for v in self.pruned.values()) / sum(int(v) for v in self.size.values())

    def table(self) -> str:
        lines = [f"{'leaf':<28}{'pruned':>10}{'size':>10}{'sparsity':>10}"]
        for p in self.size:
            s, n = int(self.pruned[p]), int(self.size[p])
            mark = "" if p in self.prunable else " (kept)"
            lines.append(f"{p + mark:<28}{s:>10}{n:>10}{s / max(n, 1):>10.4f}")
        lines.append(f"prunable sparsity {self.sparsity:.4f}, overall {self.overall:.4f}")
        return "\n".join(lines)

    def __repr__(self):
        return f"SparsityReport(sparsity={self.sparsity:.4f}, overall={self.overall:.4f})"


@_validate.public
def sparsity_report(mask: PyTree, *, prunable=DEFAULT_PRUNABLE) -> SparsityReport:
    """Pruned counts per leaf, the prunable leaves' sparsity and the overall sparsity."""
    check_mask(mask, mask)
    paths = _tree.leaf_paths(mask)
    flags = _prunable_flags(mask, prunable)
    leaves = [np.asarray(m) for m in jax.tree.leaves(mask)]
    return SparsityReport(
        pruned={p: np.asarray(int(m.size - m.sum())) for p, m in zip(paths, leaves)},
        size={p: np.asarray(int(m.size)) for p, m in zip(paths, leaves)},
        prunable=tuple(p for p, f in zip(paths, flags) if f),
    )


@_validate.public
def sparsity(mask: PyTree, *, prunable=DEFAULT_PRUNABLE) -> float:
    """The fraction of the prunable leaves' entries that ``mask`` prunes (0 = dense)."""
    return sparsity_report(mask, prunable=prunable).sparsity


# --------------------------------------------------------------------------------------------
# Shared by the experiments
# --------------------------------------------------------------------------------------------
_TRAIN_ARGS = set(inspect.signature(train.__wrapped__).parameters) - {"model", "data"}
_RESERVED = {"mask", "initial_state", "stop_step", "test_data", "snapshot_steps"}


def _train_config(config) -> dict:
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError(
            f"{_validate.where()}: train_config must be a dict of landscape.train keyword "
            f"arguments (e.g. {{'optimizer': 'sgd', 'learning_rate': 0.1, 'num_steps': 500}}); "
            f"got {type(config).__name__}."
        )
    unknown = sorted(set(config) - _TRAIN_ARGS)
    if unknown:
        raise ValueError(
            f"{_validate.where()}: train_config has keys landscape.train does not take: {unknown}."
        )
    reserved = sorted(set(config) & _RESERVED)
    if reserved:
        raise ValueError(
            f"{_validate.where()}: train_config must not set {reserved}: this function sets them "
            "(pass test_data as its own argument)."
        )
    return {"progress": False, **config}


def _num_steps(config: dict, n: int) -> int:
    if config.get("num_steps") is not None:
        return _validate.check_positive_int(config["num_steps"], name="train_config['num_steps']")
    if config.get("num_epochs") is not None:
        bs = int(config.get("batch_size", 64))
        return int(config["num_epochs"]) * (n // max(bs, 1))
    raise ValueError(f"{_validate.where()}: train_config must give num_steps or num_epochs.")


def _split_data(data, test_data):
    if hasattr(data, "train") and hasattr(data, "test") and not isinstance(data, dict):
        if test_data is None:
            test_data = data.test
        data = data.train
    n = _validate.check_data(data)
    if test_data is None:
        raise ValueError(
            f"{_validate.where()}: test_data is required (the results are test accuracies and "
            "errors); pass a landscape.Dataset or test_data=."
        )
    _validate.check_data(test_data, name="test_data")
    return data, test_data, n


def _last(h: dict, k: str) -> float:
    return float(h[k][-1]) if k in h and len(h[k]) else float("nan")


def _leaves_np(tree) -> list:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# --------------------------------------------------------------------------------------------
# Iterative magnitude pruning
# --------------------------------------------------------------------------------------------
@result
class PruningResult(Result):
    """Outcome of :func:`iterative_pruning`: one entry per round, round 0 the dense network.

    Attributes:
      sparsity: ``(rounds + 1,)`` fraction of the prunable weights pruned after each round.
      remaining: ``(rounds + 1,)`` fraction of them remaining (``1 - sparsity``).
      test_accuracy, train_accuracy: ``{"ticket", "random_mask", "reinit"}`` (the controls
        run), each ``(rounds + 1,)``: the final accuracy of the network trained with that
        round's mask (round 0: the dense run, the same for all).
      masks: the mask of every round (a list of pytrees; round 0 dense).
      params: the ticket's trained parameters of the last round.
      rewind_step, rate, scope: the settings (static).
    """

    sparsity: Any
    remaining: Any
    test_accuracy: dict
    train_accuracy: dict
    masks: list
    params: PyTree
    rewind_step: int = static_field(default=0)
    rate: float = static_field(default=0.2)
    scope: str = static_field(default="global")
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    def mask(self, r: int) -> PyTree:
        """The mask after round ``r``."""
        return self.masks[r]

    def table(self) -> str:
        names = list(self.test_accuracy)
        lines = [f"{'round':>5}{'sparsity':>10}" + "".join(f"{k:>13}" for k in names)]
        for r in range(len(np.asarray(self.sparsity))):
            row = "".join(f"{float(np.asarray(self.test_accuracy[k])[r]):>13.4f}" for k in names)
            lines.append(f"{r:>5}{float(np.asarray(self.sparsity)[r]):>10.4f}" + row)
        return "\n".join(lines)

    def __repr__(self):
        s = np.asarray(self.sparsity)
        t = np.asarray(self.test_accuracy["ticket"])
        return (
            f"PruningResult(rounds={s.size - 1}, rewind_step={self.rewind_step}, "
            f"sparsity {float(s[-1]):.3f}, ticket test accuracy {float(t[0]):.4f} -> "
            f"{float(t[-1]):.4f})"
        )


def _shuffle_init(params, key):
    """The random re-initialisation: each leaf's initial values in a random order (the same
    per-leaf distribution as the initialiser's, a fresh draw of positions)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = _tree.split_key(key, len(leaves))
    return jax.tree.unflatten(treedef, [_permuted(k, x) for k, x in zip(keys, leaves)])


@_validate.public
def iterative_pruning(
    model: Model,
    data,
    train_config: dict,
    *,
    rounds: int,
    rate: float = 0.2,
    rewind_step: int = 0,
    key,
    test_data=None,
    scope: str = "global",
    prunable=DEFAULT_PRUNABLE,
    controls: Sequence[str] = CONTROLS,
    reinit_fn: Callable | None = None,
    layer_rates: dict | None = None,
    store=None,
) -> PruningResult:
    """Iterative magnitude pruning with rewinding, and its random controls.

    Round 0 trains the dense network with ``landscape.train(model, data, **train_config)``,
    keeping its training state at ``rewind_step``. Each round ``r = 1..rounds`` then prunes the
    fraction ``rate`` of the surviving prunable weights with the smallest magnitudes after the
    previous round's training (:func:`magnitude_prune`), rewinds the survivors to the state at
    ``rewind_step`` (parameters, optimiser state, schedule position and data order: the whole
    :class:`landscape.train.TrainState`, masked) and trains to the end with the mask. After
    ``r`` rounds ``1 - (1 - rate)^r`` of the prunable weights are gone (to rounding; a leaf of
    ``layer_rates`` loses ``1 - (1 - its rate)^r`` of its own).

    Controls (each round, the same mask count per leaf): ``"random_mask"`` trains from the
    same rewind state with :func:`random_mask` of the round's mask; ``"reinit"`` trains the
    round's mask from a random re-initialisation (``reinit_fn(key) -> params``, default: each
    leaf's initial values in a random order, the same per-leaf distribution). Every run of a
    round has the same budget, as Frankle et al. 2020 compare them: the ticket and both
    controls train from ``rewind_step`` to the end (``num_steps - rewind_step`` updates, the
    same schedule positions and batches). With ``rewind_step > 0`` the re-initialised control
    starts from the rewind state with only the weights' values replaced (parameters
    re-initialised; optimiser state, batch-norm statistics, schedule position and data order
    those of the rewind state, the optimiser's moments of pruned weights zeroed as for the
    ticket); with ``rewind_step=0`` it is a run from step 0. A winning ticket beats both
    controls at moderate sparsity (Frankle & Carbin 2019, Fig. 3/4).

    Args:
      model: the model at its initialisation.
      data: a :class:`landscape.Dataset` (train and test), or the training dict with
        ``test_data=``.
      train_config: keyword arguments of :func:`landscape.train` (``optimizer``,
        ``learning_rate``, ``schedule``, ``num_steps``, ``batch_size``, ``seed``,
        ``weight_decay``, ...), the same for every run.
      rounds: pruning rounds (>= 1).
      rate: fraction of the surviving prunable weights removed per round, in ``(0, 1)``.
      rewind_step: the step whose values the survivors are rewound to (0: the initialisation,
        Frankle & Carbin 2019; a few hundred steps for deep networks, Frankle et al. 2020);
        below the run's number of steps.
      key: PRNG key of the controls.
      scope, prunable, layer_rates: as in :func:`magnitude_prune` (Frankle & Carbin prune the
        output layer at half the rate: ``layer_rates={"head": rate / 2}``; default: every
        prunable leaf at ``rate``).
      controls: which of ``("random_mask", "reinit")`` to run (each costs one training per
        round).
      store: a directory or :class:`landscape.Store`: the rewind state and each finished
        round are saved atomically; calling again with the same arguments resumes after the
        last saved round.

    Returns:
      :class:`PruningResult` (``landscape.plot.plot_pruning``).

    Cost: ``1 + rounds * (1 + len(controls))`` training runs (plus the run to ``rewind_step``).

    Raises:
      ValueError, TypeError: bad ``rate``, ``layer_rates``, ``rounds``, ``rewind_step``
        (beyond training), ``controls``, ``train_config``, data (non-finite values), or key.
    """
    model = as_model(model)
    tc = _train_config(train_config)
    train_data, test, n = _split_data(data, test_data)
    num_steps = _num_steps(tc, n)
    rounds = _validate.check_positive_int(rounds, name="rounds")
    rate = _check_rate(rate)
    rewind_step = _validate.check_positive_int(rewind_step, name="rewind_step", allow_zero=True)
    if rewind_step >= num_steps:
        raise ValueError(
            f"{_validate.where()}: rewind_step must be below the run's num_steps={num_steps} "
            f"(0 = the initialisation); got {rewind_step}."
        )
    _validate.check_choice(scope, ("global", "layerwise"), name="scope")
    controls = tuple(controls)
    for c in controls:
        _validate.check_choice(c, CONTROLS, name="controls")
    key = _validate.check_key(key)
    if reinit_fn is not None:
        _validate.check_callable(reinit_fn, name="reinit_fn")
    # validated before any training
    own = _layer_groups(model.params, _prunable_flags(model.params, prunable), layer_rates)
    treedef = jax.tree.structure(model.params)

    settings = {
        "rounds": rounds,
        "rate": rate,
        "rewind_step": rewind_step,
        "scope": scope,
        "prunable": (
            prunable if isinstance(prunable, (str, tuple, list)) else _store.stable_text(prunable)
        ),
        "controls": list(controls),
        "num_steps": num_steps,
        "train_config": {
            # an optimiser, schedule or loss by its code and the values it closes over (a repr
            # would make optax.sgd(0.1) and optax.sgd(2.0) the same job)
            k: v if isinstance(v, (int, float, str, bool, type(None))) else _store.stable_text(v)
            for k, v in tc.items()
            if k != "progress"
        },
    }
    if own:  # by leaf path ({"head": r} and {"head/kernel": r} are one job); absent: rate
        paths = _tree.leaf_paths(model.params)
        settings["layer_rates"] = {paths[i]: own[i] for i in sorted(own)}
    meta = {
        "job": _validate.where(),
        **settings,
        "params": _provenance.data_hash(model.params),
        "state": _provenance.data_hash(model.state),
        # the architecture: the registry's recipe, else the apply function's description
        "model": model.spec if model.spec is not None else _store.stable_text(model.apply_fn),
        "data": _provenance.data_hash({"train": train_data, "test": test}),
        "key": _validate.key_words(key),
        "reinit_fn": None if reinit_fn is None else _store.stable_text(reinit_fn),
    }
    store = _store.as_store(store, meta)

    def run(initial_state=None, mask=None, start_model=model) -> TrainResult:
        return train(
            start_model, train_data, test_data=test, mask=mask, initial_state=initial_state, **tc
        )

    def accs(r: TrainResult):
        return _last(r.history, "test_accuracy"), _last(r.history, "train_accuracy")

    # round 0: the dense run and the rewind state
    rewind = None
    if store is not None and store.has("round-000"):
        if rewind_step:
            rewind = store.load("rewind", TrainState)
        entry = store.load("round-000")
    else:
        if rewind_step:
            rewind = train(model, train_data, stop_step=rewind_step, **tc).train_state()
        dense = run(rewind)
        te, tr = accs(dense)
        entry = {
            "mask": _leaves_np(dense_mask(model.params)),
            "params": _leaves_np(dense.params),
            "test": {c: np.asarray(te) for c in ("ticket", *controls)},
            "train": {c: np.asarray(tr) for c in ("ticket", *controls)},
        }
        if store is not None:
            if rewind is not None:
                store.save("rewind", rewind)
            store.save("round-000", entry)
    entries = [entry]
    keys = _tree.split_key(key, rounds)
    for r in range(1, rounds + 1):
        name = f"round-{r:03d}"
        if store is not None and store.has(name):
            entries.append(store.load(name))
            continue
        prev = entries[-1]
        prev_params = jax.tree.unflatten(treedef, list(prev["params"]))
        prev_mask = jax.tree.unflatten(treedef, [np.asarray(m, bool) for m in prev["mask"]])
        mask = magnitude_prune(
            prev_params,
            rate,
            mask=prev_mask,
            scope=scope,
            prunable=prunable,
            layer_rates=settings.get("layer_rates"),
        )
        ticket = run(rewind, mask)
        te, tr = accs(ticket)
        test_acc, train_acc = {"ticket": te}, {"ticket": tr}
        k_mask, k_init = _tree.split_key(keys[r - 1])
        for c in controls:
            if c == "random_mask":
                res = run(rewind, random_mask(mask, key=k_mask, prunable=prunable))
            else:
                p0 = (
                    reinit_fn(k_init)
                    if reinit_fn is not None
                    else _shuffle_init(model.params, k_init)
                )
                check_mask(
                    jax.tree.map(lambda x: np.zeros(np.shape(x), bool), p0),
                    model.params,
                    name="reinit_fn(key)",
                )
                # the ticket's budget: from the rewind state (only the weights' values
                # replaced) or, rewinding to 0, from step 0
                start = None if rewind is None else rewind.replace(params=p0)
                res = run(start, mask, Model(model.apply_fn, p0, model.state, model.spec))
            test_acc[c], train_acc[c] = accs(res)
        entry = {
            "mask": _leaves_np(mask),
            "params": _leaves_np(ticket.params),
            "test": {k: np.asarray(v) for k, v in test_acc.items()},
            "train": {k: np.asarray(v) for k, v in train_acc.items()},
        }
        if store is not None:
            store.save(name, entry)
        entries.append(entry)

    masks = [
        jax.tree.unflatten(treedef, [np.asarray(m, bool) for m in e["mask"]]) for e in entries
    ]
    sp = np.asarray([sparsity(m, prunable=prunable) for m in masks])
    names = ("ticket", *controls)
    out = PruningResult(
        sparsity=sp,
        remaining=1.0 - sp,
        test_accuracy={k: np.asarray([float(e["test"][k]) for e in entries]) for k in names},
        train_accuracy={k: np.asarray([float(e["train"][k]) for e in entries]) for k in names},
        masks=masks,
        params=jax.tree.unflatten(treedef, list(entries[-1]["params"])),
        rewind_step=rewind_step,
        rate=rate,
        scope=scope,
        settings=settings,
        provenance=_provenance.provenance(
            dtype=_tree.dtype_of(model.params),
            seeds={"key": _validate.key_words(key)},
            data={"train": train_data, "test": test},
            settings=settings,
        ),
    )
    return out


# --------------------------------------------------------------------------------------------
# Instability
# --------------------------------------------------------------------------------------------
@result
class InstabilityResult(Result):
    """Outcome of :func:`instability`.

    Attributes:
      spawn_steps: ``(S,)`` the steps the copies were spawned at.
      sparsity: ``(M,)`` the prunable sparsity of each mask (0 for the dense network).
      barrier: ``{"test/error", "train/error", "test/loss", "train/loss"}``, each ``(M, S)``:
        the linear-path barrier ``max_t v(t) - (v(0) + v(1)) / 2`` between the two copies
        (Frankle et al. 2020's instability for the error; "stable" below 0.02).
      end_test_accuracy: ``(M, S, 2)`` the copies' final test accuracies.
      t_max: ``(M, S)`` where the test error peaks along the path.
      seeds: the two copies' data-order seeds.
    """

    spawn_steps: Any
    sparsity: Any
    barrier: dict
    end_test_accuracy: Any
    t_max: Any
    seeds: tuple = static_field(default=())
    settings: dict = static_field(default_factory=dict)
    provenance: dict = static_field(default_factory=dict)

    def __repr__(self):
        b = np.asarray(self.barrier["test/error"])
        return (
            f"InstabilityResult(spawn_steps={np.asarray(self.spawn_steps).tolist()}, "
            f"sparsity={np.round(np.asarray(self.sparsity), 3).tolist()}, test error "
            f"barrier={np.round(b, 4).tolist()})"
        )


def _spawn_steps(spawn_step, num_steps) -> list[int]:
    if isinstance(spawn_step, (int, np.integer)) and not isinstance(spawn_step, bool):
        steps = [int(spawn_step)]
    elif isinstance(spawn_step, (list, tuple, np.ndarray)) and len(spawn_step):
        steps = []
        for s in spawn_step:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
                raise TypeError(f"{_validate.where()}: spawn_step must be ints; got {s!r}.")
            steps.append(int(s))
    else:
        raise TypeError(
            f"{_validate.where()}: spawn_step must be an int or a non-empty list of ints; got "
            f"{spawn_step!r}."
        )
    bad = [s for s in steps if not 0 <= s < num_steps]
    if bad:
        raise ValueError(
            f"{_validate.where()}: spawn_step must lie in [0, num_steps={num_steps}); got {bad}."
        )
    if len(set(steps)) != len(steps):
        raise ValueError(f"{_validate.where()}: spawn_step has repeated steps: {steps}.")
    return sorted(steps)


@_validate.public
def instability(
    model: Model,
    data,
    train_config: dict,
    *,
    spawn_step: int | Sequence[int],
    key,
    test_data=None,
    mask: PyTree | Sequence[PyTree] | None = None,
    prunable=DEFAULT_PRUNABLE,
    num_ts: int = 21,
    bn: str = "auto",
) -> InstabilityResult:
    """Instability to SGD noise: the error barrier between two copies spawned at a step.

    The parent run (``landscape.train(model, data, **train_config)``, with ``mask``) is trained
    to each spawn step ``k``; there two copies start from the same training state (parameters,
    optimiser state, schedule position) and train to the end with two different mini-batch
    orders (seeds drawn from ``key``); the linear path between their final parameters is
    profiled (:func:`landscape.connect.profile`, ``num_ts`` points, no refinement) and its
    barrier taken (:func:`landscape.connect.barrier`). Frankle et al. 2020 call a network
    stable at ``k`` when the test error barrier is below 2%; small networks on easy data
    (LeNet on MNIST, a digits MLP) are stable from step 0.

    Args:
      model: the model at its initialisation.
      data: a :class:`landscape.Dataset`, or the training dict with ``test_data=``.
      train_config: keyword arguments of :func:`landscape.train` (the copies' ``seed`` is
        drawn from ``key``; the config's ``seed`` orders the parent's batches).
      spawn_step: a step or a list of steps in ``[0, num_steps)``.
      key: PRNG key of the copies' data orders (the same pair at every spawn step).
      mask: a mask (or a list of masks, e.g. ``[result.mask(r) for r in ...]`` of
        :func:`iterative_pruning`; ``None`` in the list: the dense network) training sparse
        networks from ``model``'s parameters; ``None``: the dense network only.
      prunable: for the reported sparsity.
      num_ts: points of the linear path (>= 3; 0 and 1 included).
      bn: the profile's batch-norm policy (:func:`landscape.connect.profile`).

    Returns:
      :class:`InstabilityResult` (``landscape.plot.plot_instability``).

    Cost: per mask, one parent run to the last spawn step and ``2 * len(spawn_step)`` runs to
    the end, plus ``num_ts`` full-data evaluations per spawn step.
    """
    from landscape import connect
    from landscape.losses import make_loss_fn

    model = as_model(model)
    tc = _train_config(train_config)
    train_data, test, n = _split_data(data, test_data)
    num_steps = _num_steps(tc, n)
    steps = _spawn_steps(spawn_step, num_steps)
    key = _validate.check_key(key)
    num_ts = _validate.check_positive_int(num_ts, name="num_ts")
    if num_ts < 3:
        raise ValueError(f"{_validate.where()}: num_ts must be >= 3; got {num_ts}.")
    if mask is None:
        masks = [None]
    elif (
        isinstance(mask, (list, tuple))
        and mask
        and all(
            m is None or jax.tree.structure(m) == jax.tree.structure(model.params) for m in mask
        )
    ):
        masks = [
            None if m is None else check_mask(m, model.params, name=f"mask[{i}]")
            for i, m in enumerate(mask)
        ]
    else:
        masks = [check_mask(mask, model.params, name="mask")]
    words = np.random.default_rng(_validate.key_words(key)).integers(0, 2**31 - 1, size=2)
    seeds = (int(words[0]), int(words[1]))
    loss = tc.get("loss", "cross_entropy")
    wd = tc.get("weight_decay", 0.0)
    base = {k: v for k, v in tc.items() if k != "seed"}

    bars = {
        k: np.zeros((len(masks), len(steps)))
        for k in ("test/error", "train/error", "test/loss", "train/loss")
    }
    acc = np.zeros((len(masks), len(steps), 2))
    t_max = np.zeros((len(masks), len(steps)))
    for i, m in enumerate(masks):
        state = None
        for j, k in enumerate(steps):
            if k > 0:  # the parent continues from the previous spawn step (bit-exact resume)
                state = train(
                    model, train_data, mask=m, initial_state=state, stop_step=k, **tc
                ).train_state()
            ends = [
                train(
                    model, train_data, test_data=test, mask=m, initial_state=state, seed=s, **base
                )
                for s in seeds
            ]
            loss_fn = (
                make_loss_fn(ends[0].model, loss, weight_decay=wd)
                if isinstance(loss, str)
                else loss
            )
            prof = connect.profile(
                loss_fn,
                connect.linear_path(ends[0].params, ends[1].params),
                train_data,
                test_data=test,
                num_ts=num_ts,
                refine=False,
                bn=bn,
            )
            b = connect.barrier(prof)
            t_max[i, j] = b.get("error", "test", "t_max") if "test/error" in b.values else np.nan
            for name in bars:
                split, metric = name.split("/")
                bars[name][i, j] = (
                    b.get(metric, split) if f"{split}/{metric}" in b.values else np.nan
                )
            acc[i, j] = [_last(e.history, "test_accuracy") for e in ends]
    sp = np.asarray([0.0 if m is None else sparsity(m, prunable=prunable) for m in masks])
    settings = {
        "num_ts": num_ts,
        "bn": bn,
        "num_steps": num_steps,
        "train_config": {
            # an optimiser, schedule or loss by its code and the values it closes over (a repr
            # would make optax.sgd(0.1) and optax.sgd(2.0) the same job)
            k: v if isinstance(v, (int, float, str, bool, type(None))) else _store.stable_text(v)
            for k, v in base.items()
            if k != "progress"
        },
    }
    return InstabilityResult(
        spawn_steps=np.asarray(steps),
        sparsity=sp,
        barrier=bars,
        end_test_accuracy=acc,
        t_max=t_max,
        seeds=seeds,
        settings=settings,
        provenance=_provenance.provenance(
            dtype=_tree.dtype_of(model.params),
            seeds={"copies": list(seeds)},
            data={"train": train_data, "test": test},
            settings=settings,
        ),
    )
