"""The one driver from a public estimator's inputs to an operator, and back to a result.

Every estimator (:func:`~landscape.hessian.eigenvalues`, :func:`~landscape.hessian.trace`,
:func:`~landscape.hessian.spectral_density`) is a solver on an operator (``_eigen.solve``,
``_trace.estimate_trace``, ``_density.estimate_density``) behind :func:`drive`, as lineax's
``linear_solve`` and ``jax.scipy.sparse.linalg``'s ``_isolve`` put every solver behind one entry.
The first argument says what was given:

* a :class:`~landscape.hessian.CurvatureOperator` (from :func:`~landscape.hessian.make_hvp`):
  used as is;
* a plain matvec ``v -> A v`` with ``like=`` (a params-shaped template): wrapped once
  (:func:`~landscape.hessian._operators.as_operator`);
* ``loss_fn, params, data`` and the curvature settings of :func:`make_hvp`: the operator is built
  (the one-shot).

Anything else (params or data or curvature settings next to an operator, ``like`` next to a
loss) is a ``TypeError`` that names the public function.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from landscape import _provenance
from landscape import validate as _validate
from landscape.hessian import _operators as ops

PyTree = Any


def resolve(operator, params: PyTree, data: PyTree, *, like: PyTree | None, curvature: dict):
    """The operator an estimator runs on (see the module docstring)."""
    built = isinstance(operator, (ops.CurvatureOperator, ops.MatvecOperator))
    if not built and (params is not None or data is not None):
        return _one_shot(operator, params, data, like=like, curvature=curvature)
    given = [name for name, x in (("params", params), ("data", data)) if x is not None]
    if given:
        raise TypeError(
            f"{_validate.where()}: {' and '.join(given)} given with an operator (a "
            "CurvatureOperator holds its point and data); pass either an operator, or "
            "loss_fn, params, data."
        )
    if curvature:
        names = ", ".join(f"{k}=" for k in curvature)
        raise TypeError(
            f"{_validate.where()}: {names} configure(s) the operator built from loss_fn, params, "
            "data (the settings of landscape.hessian.make_hvp); with an operator or a matvec they "
            "do not apply: set them in make_hvp(...) and pass its operator."
        )
    if isinstance(operator, ops.CurvatureOperator) and like is not None:
        raise TypeError(
            f"{_validate.where()}: like= is for a plain matvec; a CurvatureOperator's vectors "
            "are shaped like its params."
        )
    if not built:
        _validate.check_callable(operator, name="operator")
        if like is None:
            raise TypeError(
                f"{_validate.where()}: a plain matvec v -> A v needs like=, a params-shaped "
                "pytree (arrays or jax.ShapeDtypeStruct) its vectors are shaped like; for the "
                "one-shot pass loss_fn, params, data; or pass a CurvatureOperator from make_hvp."
            )
    return ops.as_operator(operator, like=like)


def _one_shot(loss_fn, params, data, *, like, curvature):
    if like is not None:
        raise TypeError(
            f"{_validate.where()}: like= is for a plain matvec; with loss_fn, params, data the "
            "vectors are shaped like params."
        )
    if params is None or data is None:
        missing = "params" if params is None else "data"
        raise TypeError(
            f"{_validate.where()}: {missing} is required with loss_fn (the one-shot takes "
            "loss_fn, params, data); or pass an operator (make_hvp, or a matvec with like=)."
        )
    return ops.make_hvp(loss_fn, params, data, **curvature)


def drive(
    solver,
    operator,
    params: PyTree,
    data: PyTree,
    /,
    *,
    like,
    curvature: dict,
    key,
    record: dict,
    **settings,
):
    """Resolve the operator, run ``solver(op, key=key, **settings)`` and record provenance
    (``record`` plus the operator's :meth:`describe`) unless the solver did."""
    op = resolve(operator, params, data, like=like, curvature=curvature)
    res = solver(op, key=key, **settings)
    if res.provenance:
        return res
    return res.replace(provenance=provenance(op, key, record))


def provenance(op, key, record: dict) -> dict:
    return _provenance.provenance(
        dtype=op.dtype, seeds=key_desc(key), settings={**record, **op.describe()}
    )


def key_desc(key) -> Any:
    """A JSON-able description of a PRNG key (its data)."""
    try:
        return np.asarray(jax.random.key_data(key)).tolist()
    except Exception:  # pragma: no cover
        return repr(key)
