"""Analyses compute float32 products in full float32 on every backend (no TF32 on GPUs).

On CPU, DEFAULT and HIGHEST give the same numbers, so this is checked on the programs: every
``dot_general`` and convolution traced by an analysis carries ``Precision.HIGHEST``, while
training keeps the backend default.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import landscape
from landscape import engine, hessian

_OPS = {"dot_general", "conv_general_dilated"}


def _precisions(jaxpr):
    """Precision of every dot/conv in a (closed) jaxpr, sub-jaxprs included."""
    out = []

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name in _OPS:
                out.append(eqn.params.get("precision"))
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)
                    elif hasattr(sub, "eqns"):
                        walk(sub)

    walk(jaxpr.jaxpr)
    return out


def _all_highest(precs):
    assert precs, "no matmul found: the test would pass vacuously"
    for p in precs:
        assert p is not None and all(q == lax.Precision.HIGHEST for q in p), precs


def test_engine_curvature_and_ntk_programs_use_highest_precision():
    ds = landscape.load_data("digits")
    data = {k: v[:100] for k, v in ds.train.items()}
    model = landscape.make_model("mlp", input_shape=ds.input_shape, num_outputs=10, hidden=(16,), seed=0)
    loss_fn = landscape.make_loss_fn(model)
    batched = engine.batch(data, 32)

    # loss and gradient through the engine
    _all_highest(_precisions(jax.make_jaxpr(
        lambda p: engine.batched_mean(lambda q, b: engine._value_and_grad(loss_fn, q, b), p, batched)
    )(model.params)))
    # a Hessian-vector product, forward-over-reverse and linearised
    op = hessian.make_hvp(loss_fn, model.params, data, batch_size=32, method="forward_over_reverse")
    _all_highest(_precisions(jax.make_jaxpr(op.matvec)(op.zeros())))
    lin = hessian.make_hvp(loss_fn, model.params, data, batch_size=32, method="linearize")
    _all_highest(_precisions(jax.make_jaxpr(lambda v: lin.prepared()(v)[0])(lin.zeros())))

    # empirical and analytic NTK
    import ntk

    arch = ntk.serial(ntk.Dense(32), ntk.Relu(), ntk.Dense(10))
    net = arch.init(jax.random.key(0), (64,))
    x = jnp.asarray(data["x"][:8])
    from ntk import _empirical

    def f(p, xx):
        return net.apply_fn(p, net.state, xx)[0]

    for impl in (_empirical.ntk_jacobian, _empirical.ntk_ntvp):
        _all_highest(_precisions(jax.make_jaxpr(lambda p, impl=impl: impl(f, p, x))(net.params)))
    # the surface module's first-layer trick (features computed outside the engine)
    from landscape.surface import _fast

    target, _ = _fast.affine_first_layer()._find(loss_fn, model.params, data)
    target = dataclasses.replace(target, num_basis=2)
    basis = (model.params, model.params)
    fs, fd = engine.split_fn(loss_fn)
    _all_highest(_precisions(jax.make_jaxpr(
        lambda d: _fast._features(fs, fd, target, basis, d))(data)))
    _all_highest(_precisions(jax.make_jaxpr(
        lambda p: _empirical.ntk_structured(arch, p, x))(net.params)))
    _all_highest(_precisions(jax.make_jaxpr(lambda xx: arch.kernel_fn(xx))(x)))

    # training is left at the backend default (TF32 allowed on GPUs)
    params = model.params
    precs = _precisions(jax.make_jaxpr(lambda p: jax.grad(lambda q: loss_fn(q, data)[0])(p))(params))
    assert precs and all(p is None or p == (lax.Precision.DEFAULT,) * 2 for p in precs)
    assert np.isfinite(float(loss_fn(params, data)[0]))
