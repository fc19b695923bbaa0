"""Convolutional networks inside compiled loops (XLA:CPU): the products the Krylov loops repeat
have their convolutions in the canonical NHWC/HWIO/NHWC form (``engine.canonical_convs``), so
XLA:CPU runs them with its library kernels inside ``while`` bodies too (it canonicalises only
the entry computation; otherwise 10-300x slower), and the values are those of the standalone
product.

Tolerances (float32): a product inside a loop against the standalone product and against the
loop without the rewrite: 1e-5 of the largest entry (different kernels sum in different
orders; float32 eps is 1.2e-7, a product sums about 40 x 36 x 36 terms). Top eigenvalue
against the dense Hessian's: 1e-4 relative (the solver's default tolerance is 1e-6 on the
eigenvalue error bound, the dense float32 Hessian is accurate to about 1e-6).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

import landscape
from landscape import _convs, engine, hessian
from landscape.hessian import _operators as ops

CANONICAL = "b01f_01io->b01f"


@pytest.fixture(scope="module")
def cnn():
    """A 244-parameter CNN (two 3x3 convolutions) on 40 random 6x6x2 images."""
    rng = np.random.default_rng(0)
    data = {
        "x": rng.normal(size=(40, 6, 6, 2)).astype(np.float32),
        "y": rng.integers(0, 4, 40).astype(np.int32),
    }
    model = landscape.make_model(
        "cnn", input_shape=(6, 6, 2), num_outputs=4, channels=(4, 4), seed=0
    )
    return model, landscape.make_loss_fn(model), data


def _conv_labels(compiled_text: str) -> set[str]:
    return set(re.findall(r"convolution\(.*?dim_labels=(\S+?)[,\s]", compiled_text))


def _loop(prep, n, v):
    """``n`` products in a compiled loop with traced bounds (as the Lanczos blocks run them)."""
    return lax.fori_loop(0, n, lambda i, w: prep(w)[0], v)


def _vector(op):
    leaves, treedef = jax.tree.flatten(op.subset.restrict(op.params))
    rng = np.random.default_rng(1)
    return jax.tree.unflatten(
        treedef, [rng.normal(size=x.shape).astype(np.float32) for x in leaves]
    )


def test_loop_product_equals_standalone_and_previous_path(cnn, monkeypatch):
    model, loss_fn, data = cnn
    # batches of 16: the product is a scan over two full batches plus the remainder
    op = hessian.make_hvp(
        loss_fn, model.params, data, batch_size=16, method="forward_over_reverse"
    )
    prep, v = op.host_prepared(), _vector(op)
    standalone = op(v)
    new = jax.jit(lambda p, n, v: _loop(p, n, v)).lower(prep, 1, v).compile()
    got = new(prep, 1, v)
    # the route: every convolution XLA sees in the loop program is canonical
    assert _conv_labels(new.as_text()) == {CANONICAL}
    monkeypatch.setattr(engine, "CANONICAL_CONVS", "never")
    # a new function: traced without the rewrite (the code before it)
    old = jax.jit(lambda p, n, v: _loop(p, n, v)).lower(prep, 1, v).compile()
    before = old(prep, 1, v)
    assert _conv_labels(old.as_text()) > {CANONICAL}  # the slow kind
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(standalone))
    for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(standalone), jax.tree.leaves(before)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5 * scale)


def _user_hvp(loss_fn, params, data, v):
    return jax.jvp(jax.grad(lambda p: loss_fn(p, data)[0]), (params,), (v,))[1]


def test_linearized_and_user_matvecs_take_the_route(cnn):
    model, loss_fn, data = cnn
    lin = hessian.make_hvp(loss_fn, model.params, data, method="linearize").host_prepared()
    user = ops.as_operator(
        Partial(_user_hvp, loss_fn, model.params, jax.tree.map(jnp.asarray, data)),
        like=model.params,
    ).host_prepared()
    v = _vector(hessian.make_hvp(loss_fn, model.params, data))
    for prep in (lin, user):
        assert _convs.noncanonical_convs(jax.make_jaxpr(lambda p, v: _loop(p, 2, v))(prep, v)) == 0
    raw = jax.make_jaxpr(lambda v: _user_hvp(loss_fn, model.params, data, v))(v)
    assert _convs.noncanonical_convs(raw) > 0  # what the route rewrote


def test_eigenvalues_of_a_cnn_match_the_dense_hessian(cnn, key):
    model, loss_fn, data = cnn
    flat, unravel = ravel_pytree(model.params)
    d = jax.tree.map(jnp.asarray, data)
    H = np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), d)[0]))(flat), np.float64)
    top = np.linalg.eigvalsh(0.5 * (H + H.T))[-1]
    res = hessian.eigenvalues(loss_fn, model.params, data, k=1, key=key)
    np.testing.assert_allclose(res.largest[0], top, rtol=1e-4)


@pytest.mark.parametrize("mode, slow", [("cpu", False), ("never", True)])
def test_training_steps_take_the_route(cnn, mode, slow, monkeypatch):
    # landscape.train's compiled block of steps (a lax.scan over value_and_grad and the update)
    import importlib

    import optax

    # the module (landscape.train is the function)
    _train = importlib.import_module("landscape.train")
    model, loss_fn, data = cnn
    monkeypatch.setattr(engine, "CANONICAL_CONVS", mode)
    loss_static, loss_dyn = engine.split_fn(loss_fn)
    opt = optax.sgd(0.1)
    idx = np.arange(8, dtype=np.int32).reshape(2, 4)
    block = _train._run_block.__wrapped__  # traced afresh: jit's cache does not see the mode
    jaxpr = jax.make_jaxpr(
        lambda p, s, o, d: block(loss_static, loss_dyn, p, s, o, d, idx, opt, 0)
    )(model.params, model.state, opt.init(model.params), data)
    assert (_convs.noncanonical_convs(jaxpr) > 0) == slow


@pytest.mark.parametrize("mode, slow", [("cpu", False), ("never", True)])
def test_learning_rate_sweep_steps_take_the_route(cnn, mode, slow, monkeypatch):
    # diagnostics.learning_rate_range's mini-batch scan (vmapped over rates)
    from landscape.diagnostics import _lr

    model, loss_fn, data = cnn
    monkeypatch.setattr(engine, "CANONICAL_CONVS", mode)
    loss_static, loss_dyn = engine.split_fn(loss_fn)
    opt = _lr._Opt("sgd", ())
    batched = engine.batch(data, 20)
    idx = jnp.asarray(np.arange(8, dtype=np.int32).reshape(2, 4))
    sweep = _lr._sweep.__wrapped__  # traced afresh: jit's cache does not see the mode
    jaxpr = jax.make_jaxpr(
        lambda lrs, p, s, d: sweep(loss_static, loss_dyn, opt, lrs, p, s, batched, d, idx, 2)
    )(jnp.array([0.1, 0.2]), model.params, model.state, data)
    assert (_convs.noncanonical_convs(jaxpr) > 0) == slow
