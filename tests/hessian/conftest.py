"""Session fixtures for the Hessian tests: small models with dense float64 references.

Everything here is computed once per session: a trained ReLU MLP 64-16-10 and a randomly
initialised tanh MLP 64-16-10 (1210 parameters each) on 256 digits examples, their dense
Hessians (``jax.hessian`` in float64), eigendecompositions, GGNs and empirical Fishers. Tests
reuse the same loss objects and shapes so compiled programs are shared between tests.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from threadpoolctl import threadpool_limits

import landscape

N_EX = 256
BATCH = 128


def _mlp_logits(params, x, act):
    """The 64-16-10 MLP written directly in jnp (independent of the library's model code)."""
    l0, l1 = params["layers"][0], params["layers"][1]
    h = act(x @ l0["kernel"] + l0["bias"][None, :])
    return h @ l1["kernel"] + l1["bias"][None, :]


def _ce(logits, y):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def _dense(params, data, act):
    """Dense Hessian, its eigendecomposition, GGN and empirical Fisher (float64, NumPy)."""
    flat, unravel = ravel_pytree(params)
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])

    def loss(f):
        return _ce(_mlp_logits(unravel(f), x, act), y)

    H = np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64)
    H = 0.5 * (H + H.T)
    with threadpool_limits(1):  # OpenBLAS threads on a shared 2-core machine: 20x slower
        evals, evecs = np.linalg.eigh(H)
    J = np.asarray(jax.jit(jax.jacrev(lambda f: _mlp_logits(unravel(f), x, act)))(flat))  # (N, C, P)
    logits = np.asarray(_mlp_logits(unravel(flat), x, act))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = x.shape[0]
    HJ = p[:, :, None] * J - p[:, :, None] * np.einsum("nc,ncp->np", p, J)[:, None, :]
    with threadpool_limits(1):
        G = J.reshape(-1, J.shape[-1]).T @ HJ.reshape(-1, J.shape[-1]) / n
    r = p - np.eye(p.shape[1])[np.asarray(y)]
    g = np.einsum("ncp,nc->np", J, r)  # per-example gradients
    F = g.T @ g / n
    return H, evals, evecs, 0.5 * (G + G.T), F


@pytest.fixture(scope="session")
def small(digits_data):
    """Float64 references for a trained ReLU MLP and a random tanh MLP (1210 params each)."""
    relu = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,), seed=0)
    x32 = np.asarray(digits_data.train["x"][:N_EX], np.float32)
    y = np.asarray(digits_data.train["y"][:N_EX], np.int32)
    trained = landscape.train(relu, {"x": x32, "y": y}, optimizer=optax.adam(1e-2), num_steps=150, batch_size=64,
                              seed=0, progress=False)
    tanh = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,), seed=1, activation="tanh")
    ns = types.SimpleNamespace()
    ns.data32 = {"x": x32, "y": y}
    ns.relu_model32 = trained.model
    ns.relu_loss = landscape.make_loss_fn(trained.model)
    ns.relu_params32 = trained.model.params
    ns.tanh_loss = landscape.make_loss_fn(tanh)
    ns.tanh_params32 = tanh.params
    with jax.enable_x64(True):
        ns.data = {"x": np.asarray(x32, np.float64), "y": y}
        ns.relu_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), trained.model.params)
        ns.tanh_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tanh.params)
        ns.relu_H, ns.relu_evals, ns.relu_evecs, ns.relu_G, ns.relu_F = _dense(ns.relu_params, ns.data, jax.nn.relu)
        ns.tanh_H, ns.tanh_evals, ns.tanh_evecs, _, _ = _dense(ns.tanh_params, ns.data, jnp.tanh)
    ns.num_params = ns.relu_H.shape[0]
    ns.batch = BATCH
    return ns


def flat(tree):
    """Ravel a pytree to a float64 NumPy vector in leaf order (dense references only)."""
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def rows(stacked):
    """Rows of a stacked params pytree (leading axis) as a float64 NumPy matrix."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(stacked)]
    return np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def quad_loss(A, params, batch):
    """``0.5 w^T A w`` (the batch is ignored): a loss whose Hessian is exactly ``A``."""
    w = params["w"]
    return 0.5 * w @ (A @ w) + 0.0 * jnp.sum(batch["x"])


@pytest.fixture(scope="session")
def planted():
    """Quadratic losses with planted spectra (float64, dimension 60)."""
    from jax.tree_util import Partial

    rng = np.random.default_rng(0)
    n = 60
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    data = {"x": np.zeros((4, 1))}

    def make(lams):
        A = (Q * np.asarray(lams, np.float64)) @ Q.T
        A = 0.5 * (A + A.T)
        with jax.enable_x64(True):
            return Partial(quad_loss, jnp.asarray(A)), {"w": jnp.asarray(rng.normal(size=n))}, A

    return types.SimpleNamespace(make=make, n=n, Q=Q, data=data, rng=rng)
