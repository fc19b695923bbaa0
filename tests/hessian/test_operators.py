"""Curvature products against dense float64 references; identities; settings.

Tolerances: float64 products agree with the dense matrices to rounding (1e-12 relative to the
largest entry of the result: sums of 256 example terms in float64). float32 products carry
about 1e-6 relative rounding (2e-5 allowed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape import hessian
from tests.hessian.conftest import flat


def rand_like(params, seed):
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=x.shape), x.dtype) for x in leaves])


def _close(out, ref, rel=1e-12):
    np.testing.assert_allclose(out, ref, rtol=0, atol=rel * np.abs(ref).max())


def test_products_match_dense_float64(small):
    with jax.enable_x64(True):
        v = rand_like(small.relu_params, 0)
        refs = {"hessian": small.relu_H, "ggn": small.relu_G, "fisher": small.relu_F,
                "residual": small.relu_H - small.relu_G}
        for curvature, M in refs.items():
            op = hessian.make_hvp(small.relu_loss, small.relu_params, small.data, curvature=curvature,
                                  batch_size=small.batch)
            assert op.method == "forward_over_reverse"  # tiny model: "auto" does not linearise
            _close(flat(op(v)), M @ flat(v))
        # linearising once gives the same products
        op = hessian.make_hvp(small.relu_loss, small.relu_params, small.data, batch_size=small.batch,
                              method="linearize")
        _close(flat(op(v)), small.relu_H @ flat(v))
        # the one-shot hvp
        _close(flat(hessian.hvp(small.relu_loss, small.relu_params, small.data, v, batch_size=small.batch)),
               small.relu_H @ flat(v))
        # symmetry <u, Hv> = <v, Hu> and linearity
        u = rand_like(small.relu_params, 1)
        op = hessian.make_hvp(small.relu_loss, small.relu_params, small.data, batch_size=small.batch)
        hu, hv = flat(op(u)), flat(op(v))
        assert abs(flat(u) @ hv - flat(v) @ hu) <= 1e-12 * np.linalg.norm(hv) * np.linalg.norm(flat(u))
        _close(flat(op(jax.tree.map(lambda a, b: 2.0 * a - 3.0 * b, u, v))), 2 * hu - 3 * hv)


def test_float32_products(small):
    v = rand_like(small.relu_params32, 1)
    op = hessian.make_hvp(small.relu_loss, small.relu_params32, small.data32, batch_size=small.batch)
    out = op(v)
    assert jax.tree.leaves(out)[0].dtype == jnp.float32
    # float32: ~1e-6 relative rounding in the products
    _close(flat(out), small.relu_H @ flat(v), rel=2e-5)


def test_weight_decay_filter_model_triple_preconditioner(small):
    with jax.enable_x64(True):
        v = rand_like(small.relu_params, 4)
        Hv = small.relu_H @ flat(v)
        # weight decay in the loss: the L2 term 0.5 wd ||theta||^2 adds exactly wd * v
        wd = 0.01
        loss_wd = landscape.make_loss_fn(small.relu_model32, weight_decay=wd)
        h1 = flat(hessian.hvp(loss_wd, small.relu_params, small.data, v, batch_size=small.batch))
        np.testing.assert_allclose(h1 - Hv, wd * flat(v), atol=1e-12)
        # a parameter subset: the diagonal block (zeros elsewhere)
        out = flat(hessian.hvp(small.relu_loss, small.relu_params, small.data, v, params_filter="layers/1",
                               batch_size=small.batch))
        paths = landscape.tree.leaf_paths(small.relu_params)
        sizes = [x.size for x in jax.tree.leaves(small.relu_params)]
        sel = np.concatenate([np.full(s, p.startswith("layers/1/")) for p, s in zip(paths, sizes)])
        _close(out, (small.relu_H @ (flat(v) * sel)) * sel)
        assert np.all(out[~sel] == 0)

        # GGN from a plain loss plus the model triple and an output loss
        def plain(params, batch):
            return small.relu_loss(params, batch)[0]

        out = hessian.hvp(plain, small.relu_params, small.data, v, curvature="ggn", model=small.relu_model32,
                          output_loss="cross_entropy", batch_size=small.batch)
        _close(flat(out), small.relu_G @ flat(v))
        # diagonal preconditioner: P^{-1/2} H P^{-1/2}
        P = jax.tree.map(lambda a: jnp.abs(a) + 0.5, small.relu_params)
        op = hessian.make_hvp(small.relu_loss, small.relu_params, small.data, preconditioner=P, batch_size=small.batch)
        d = 1 / np.sqrt(flat(P))
        _close(flat(op(v)), d * (small.relu_H @ (d * flat(v))))


def test_no_recompilation_on_second_call(small):
    from landscape.hessian import _operators

    v = rand_like(small.relu_params32, 7)
    op = hessian.make_hvp(small.relu_loss, small.relu_params32, small.data32, batch_size=small.batch)
    op(v)
    size = _operators._apply_jit._cache_size()
    # a new operator at a new point with the same loss object and shapes reuses the program
    p2 = jax.tree.map(lambda a: a * 1.01, small.relu_params32)
    op2 = hessian.make_hvp(small.relu_loss, p2, small.data32, batch_size=small.batch)
    op2(v)
    hessian.hvp(small.relu_loss, p2, small.data32, v, batch_size=small.batch)
    assert _operators._apply_jit._cache_size() == size
    with pytest.raises(ValueError, match="tree structure"):
        op({"w": jnp.zeros(3)})
