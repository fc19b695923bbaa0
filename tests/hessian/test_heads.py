"""Curvature per attention head (issue 16): selections that address slices of leaves, the
restricted operator ``S^T A S`` against the dense float64 Hessian (and GGN) of a tiny
transformer, ``head_spectra`` against the dense sub-blocks' eigenvalues and traces, float32,
shared compiled programs, bad selections.

The transformer is the library's ``make_model("transformer")`` (its forward pass is checked
against a NumPy reference in ``tests/test_transformer.py``), attention-only and without
LayerNorm to keep every compiled Hessian-vector product small (a program containing one costs
1.5-3 s of CPU to compile here, about half of what it cost with the MLPs and LayerNorms; the head
and block selections do not depend on them): 2 blocks, width 8, 2 heads of width 4, 4 tokens of 2 channels (659 parameters), 8
examples with 3 classes. ``head_spectra``'s per-block eigenvalues are also this suite's check of
the Lanczos eigenvalues of a transformer's Hessian against the dense float64 one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import landscape
from landscape import engine
from landscape.hessian import (
    Slice,
    _select,
    attention_layers,
    block_selection,
    head_selection,
    head_spectra,
    make_hvp,
    restrict,
    select,
)

D, HEADS, DH, T, C, N = 8, 2, 4, 4, 3, 8
BLOCK = 3 * (D * DH * HEADS + DH * HEADS) + HEADS * DH * D + D  # one block's parameters: 288
FOR = "forward_over_reverse"  # the HVP method, given: "auto" would trace a linearisation


def _ravel(tree):
    """``ravel_pytree`` without device programs: the leaves flattened in NumPy on the host,
    and an ``unravel`` that slices and reshapes (traceable; on NumPy input it returns NumPy
    leaves, so slicing them compiles nothing)."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [np.shape(x) for x in leaves]
    ends = np.cumsum([int(np.prod(sh, dtype=np.int64)) for sh in shapes])

    def unravel(f):
        parts = [
            f[e - n : e].reshape(sh) for e, n, sh in zip(ends, np.diff(ends, prepend=0), shapes)
        ]
        return jax.tree.unflatten(treedef, parts)

    return np.concatenate([np.ravel(np.asarray(x)) for x in leaves]), unravel


def _model(dtype="float64"):
    return landscape.make_model(
        "transformer",
        input_shape=(T, 2),
        patch=1,
        num_outputs=C,
        width=D,
        depth=2,
        heads=HEADS,
        mlp_ratio=0,
        layer_norm=False,
        seed=0,
        param_dtype=dtype,
    )


def _data(dtype):
    rng = np.random.default_rng(1)
    return {
        "x": rng.standard_normal((N, T, 2)).astype(dtype),
        "y": rng.integers(0, C, N).astype(np.int32),
    }


@pytest.fixture(scope="module")
def f64():
    """The model, its loss, parameters, data, the dense Hessian and GGN (float64) and
    coordinate ids."""
    with jax.enable_x64(True):
        model = _model()
        loss_fn = landscape.make_loss_fn(model)
        params = model.params
        data = jax.tree.map(jax.device_put, _data(np.float64))
        flat, unravel = _ravel(params)
        apply_fn = model.apply_fn

        @jax.jit
        def dense(f):  # one compiled program for the references
            H = jax.hessian(lambda g: loss_fn(unravel(g), data)[0])(f)
            J = jax.jacrev(lambda g: apply_fn(unravel(g), {}, data["x"])[0])(f)  # (N, C, P)
            return H, J, jax.nn.softmax(apply_fn(unravel(f), {}, data["x"])[0], axis=-1)

        H, J, p = (np.asarray(a) for a in dense(flat))
        HJ = p[:, :, None] * J - p[:, :, None] * np.einsum("nc,ncp->np", p, J)[:, None, :]
        G = np.einsum("ncp,ncq->pq", J, HJ) / N
        # NumPy leaves: slicing them on the host compiles nothing
        ids = unravel(np.arange(flat.size, dtype=np.float64))
    assert flat.size == 659
    return {
        "model": model,
        "loss_fn": loss_fn,
        "params": params,
        "data": data,
        "H": 0.5 * (H + H.T),
        "G": 0.5 * (G + G.T),
        "ids": ids,
    }


def _sum_of_squares(params, batch):
    """A loss of any parameters (the library's losses refuse parameters of another shape)."""
    return sum(jnp.sum(x**2) for x in jax.tree.leaves(params)) + 0.0 * jnp.sum(batch["x"])


def _coords(sel, ids):
    """Positions of the selection's coordinates in ravel_pytree(params), in the order of
    ravel_pytree of its vectors."""
    return _flat(sel.restrict(ids)).astype(int)


def _flat(tree):
    """``ravel_pytree(tree)[0]`` on the host (leaf order), in NumPy."""
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def _dense(sop):
    """The restricted operator as a dense matrix: its products with the basis vectors, in one
    compiled program (vmap over the basis)."""
    zero = {k: np.zeros(v.shape, v.dtype) for k, v in sop.selection.template.items()}
    flat, unravel = _ravel(zero)
    s, d = engine.split_fn(sop.host_prepared())
    f = jax.jit(
        jax.vmap(
            lambda e, d: ravel_pytree(engine.merge_fn(s, d)(unravel(e))[0])[0], in_axes=(0, None)
        )
    )
    return np.asarray(f(np.eye(flat.size, dtype=flat.dtype), d), np.float64)


# ------------------------------------------------------------------------------------------
def test_selections_address_head_slices(f64):
    with jax.enable_x64(True):
        _check_selections(f64["params"], f64["ids"])


def _check_selections(params, ids):
    layers = attention_layers(params)
    assert [a.folder for a in layers] == ["blocks/0/attn", "blocks/1/attn"]
    assert layers[0].heads == HEADS and layers[0].d_head == DH
    sel = head_selection(params, block=1, head=1, parts=("query", "key"))
    assert sel.size == 2 * (D * DH + DH) == 72
    assert set(sel.template) == {"query/kernel", "query/bias", "key/kernel", "key/bias"}
    assert sel.template["query/kernel"].shape == (D, 1, DH)
    sub = sel.restrict(ids)
    np.testing.assert_array_equal(
        sub["query/kernel"], ids["blocks"][1]["attn"]["query"]["kernel"][:, 1:2]
    )
    np.testing.assert_array_equal(sub["key/bias"], ids["blocks"][1]["attn"]["key"]["bias"][1:2])
    # embed is the transpose of restrict: zeros outside the head, the head's slices inside
    back = sel.embed(sub, params)
    k = np.asarray(back["blocks"][1]["attn"]["query"]["kernel"])
    np.testing.assert_array_equal(k[:, 1], ids["blocks"][1]["attn"]["query"]["kernel"][:, 1])
    assert not k[:, 0].any() and not np.asarray(back["blocks"][0]["attn"]["query"]["kernel"]).any()
    vo = head_selection(params, block=0, head=0, parts=("value", "out"))
    assert vo.size == D * DH + DH + DH * D == 68  # out/bias is shared by the heads: not in a head
    # the same coordinates through the general specs
    same = select(params, Slice("blocks/1/attn/query/*", 1), Slice("blocks/1/attn/key/*", 1))
    np.testing.assert_array_equal(np.sort(_coords(same, ids)), np.sort(_coords(sel, ids)))
    assert block_selection(params, block=0).size == BLOCK == 288
    # the library's transformer has the same layout (tied queries and keys: no key part); the
    # selections read shapes only: its parameters as shapes (eval_shape: no initialiser runs)
    shapes = jax.eval_shape(
        lambda: (
            landscape.make_model(
                "transformer",
                input_shape=(4,),
                num_outputs=2,
                vocab_size=5,
                width=8,
                heads=2,
                depth=2,
                mlp_ratio=1,
                tie_qk=True,
            ).params
        )
    )
    got = attention_layers(shapes)
    assert [a.folder for a in got] == ["blocks/0/attn", "blocks/1/attn"]
    assert "key/kernel" not in got[0].leaves and got[0].leaves["out/kernel"] == 0
    tied = head_selection(shapes, block=1, head=0, parts=("query", "key"))
    assert tied.label == "block 1 head 0: query" and tied.size == D * DH + DH


def test_restricted_operator_is_the_dense_sub_block_float64(f64):
    with jax.enable_x64(True):
        params, ids, H = f64["params"], f64["ids"], f64["H"]
        op = make_hvp(f64["loss_fn"], params, f64["data"], method=FOR)
        # a head's query and key slices, slices along a non-head axis (two units of the
        # residual stream: columns of the embedding kernel) and a whole leaf, in one selection
        sel = select(
            params,
            Slice("blocks/1/attn/query/*", 1),
            Slice("blocks/1/attn/key/*", 1),
            Slice("embed/kernel", [1, 5], axis=1),
            "head/kernel",
        )
        sop = restrict(op, sel)
        idx = _coords(sel, ids)
        assert sop.num_params == sel.size == idx.size == 72 + 2 * 2 + D * C
        M = _dense(sop)
        # the same arithmetic in another order: rounding of float64 products
        np.testing.assert_allclose(M, H[np.ix_(idx, idx)], rtol=0, atol=1e-10 * np.abs(H).max())


def test_restricted_ggn_shares_programs_across_heads_and_blocks(f64):
    """The block and head are arguments of the compiled product: one program for every head of
    every block; each product is the GGN's sub-block (the curvature passes through)."""
    with jax.enable_x64(True):
        params, ids, G = f64["params"], f64["ids"], f64["G"]
        gop = make_hvp(
            f64["loss_fn"],
            params,
            f64["data"],
            curvature="ggn",
            model=f64["model"],
            output_loss="cross_entropy",
            method=FOR,
        )
        rng = np.random.default_rng(2)
        n = None
        for b in (0, 1):
            for h in (0, 1):
                sel = head_selection(params, block=b, head=h)
                v = {
                    k: jax.device_put(rng.standard_normal(s.shape))
                    for k, s in sel.template.items()
                }
                out = restrict(gop, sel)(v)
                idx = _coords(sel, ids)
                expect = G[np.ix_(idx, idx)] @ _flat(v)
                np.testing.assert_allclose(
                    _flat(out), expect, rtol=0, atol=1e-10 * np.abs(G).max()
                )
                if n is None:
                    n = _select._apply_jit._cache_size()
        assert _select._apply_jit._cache_size() == n


def test_head_spectra_match_the_dense_blocks_float64(f64, key):
    with jax.enable_x64(True):
        params, ids, H = f64["params"], f64["ids"], f64["H"]
        op = make_hvp(f64["loss_fn"], params, f64["data"], method=FOR)
        # the Q/K group only (the V/O block is checked in float32 below: one compiled family
        # fewer); every head block fits the budget: exact traces; the top two eigenvalues
        res = head_spectra(op, key=key, groups={"qk": ("query", "key")}, max_hvps=72, k=2)
        assert res.values.shape == (2, HEADS, 1, 2) and res.groups == ("qk",)
        for b in range(2):
            for h in range(HEADS):
                for g, parts in enumerate((("query", "key"),)):
                    idx = _coords(head_selection(params, block=b, head=h, parts=parts), ids)
                    block = H[np.ix_(idx, idx)]
                    ev = np.linalg.eigvalsh(block)
                    assert res.sizes[b, h, g] == idx.size
                    # tol 1e-6 relative to ||A_S|| (the default); the bounds hold and are below it
                    err = np.abs(res.values[b, h, g] - ev[::-1][:2])
                    assert np.all(err <= res.error_bounds[b, h, g] + 1e-12)
                    assert np.all(res.error_bounds[b, h, g] <= 1e-6 * np.abs(ev).max())
                    # the exact diagonal's sum: float64 rounding
                    assert res.trace_exact[b, h, g] and res.trace_se[b, h, g] == 0
                    np.testing.assert_allclose(
                        res.traces[b, h, g],
                        np.trace(block),
                        rtol=0,
                        atol=1e-10 * np.abs(block).sum(),
                    )
            idx = _coords(block_selection(params, block=b), ids)
            ev = np.linalg.eigvalsh(H[np.ix_(idx, idx)])
            assert res.layer_sizes[b] == idx.size == BLOCK
            # Lanczos to residual tol 1e-6 of ||A_S||: the Ritz values' error is ~ residual^2 /
            # gap, below this tolerance (the top eigenvalues are separated here)
            np.testing.assert_array_less(
                np.abs(res.layer_values[b] - ev[::-1][:2]), 1e-6 * np.abs(ev).max()
            )
    assert res.converged.all() and res.num_hvps > 0
    assert "qk" in res.table() and "whole block" in res.table()
    assert "HeadSpectraResult(hessian" in repr(res)


def test_float32_restricted_operator_and_spectra(f64, key):
    # the float64 parameters rounded to float32, the same loss and data
    # (cast on the host: NumPy rounds to nearest as XLA does, and compiles no program per leaf)
    params = jax.tree.map(lambda x: jax.device_put(np.asarray(x, np.float32)), f64["params"])
    data = jax.tree.map(jax.device_put, _data(np.float32))
    op = make_hvp(f64["loss_fn"], params, data, method=FOR)
    sel = head_selection(params, block=0, head=1, parts=("value", "out"))
    sop = restrict(op, sel)
    assert sop.dtype == jnp.float32 and sop.num_params == 68
    with jax.enable_x64(True):
        idx = _coords(sel, f64["ids"])
    block = f64["H"][np.ix_(idx, idx)]
    # float32 products of O(1) quantities through 2 blocks (and float32 rounding of the
    # parameters and inputs): ~1e-6 relative
    np.testing.assert_allclose(_dense(sop), block, rtol=0, atol=2e-5 * np.abs(block).max())
    e = landscape.hessian.eigenvalues(sop, k=1, key=key)
    # tol floored at 64 eps(float32) = 7.6e-6 relative, plus the products' rounding
    np.testing.assert_allclose(e.values[0], np.linalg.eigvalsh(block)[-1], rtol=1e-4)
    assert set(e.vectors) == {"value/kernel", "value/bias", "out/kernel"}
    full = sel.embed(e.vectors, params)  # back in the parameters' shape, zeros elsewhere
    assert full["blocks"][0]["attn"]["out"]["kernel"].shape == (1, HEADS, DH, D)
    assert not np.asarray(full["blocks"][0]["attn"]["out"]["kernel"])[:, 0].any()


def test_bad_selections_name_the_argument(f64):
    with jax.enable_x64(True):
        _check_bad_selections(f64)


def _check_bad_selections(f64):
    params, loss_fn = f64["params"], f64["loss_fn"]
    with pytest.raises(ValueError, match=r"head_selection: head=2 is out of range.*2 heads"):
        head_selection(params, block=0, head=2)
    with pytest.raises(
        ValueError, match=r"head_selection: block=5 is out of range.*2 attention layers"
    ):
        head_selection(params, block=5, head=0)
    with pytest.raises(ValueError, match=r"parts \['keys'\] are not attention parts"):
        head_selection(params, block=0, head=0, parts=("query", "keys"))
    with pytest.raises(
        ValueError, match=r"select: pattern 'blocks/3/\*' \(specs\[0\]\) matches no parameter"
    ):
        select(params, Slice("blocks/3/*", 0))
    with pytest.raises(ValueError, match=r"axis='heads'.*'embed/kernel'.*has no heads axis"):
        select(params, Slice("embed/kernel", 0))
    with pytest.raises(ValueError, match=r"axis='heads'.*'blocks/0/attn/out/bias'"):
        select(params, Slice("blocks/0/attn/out/*", 0))
    with pytest.raises(
        ValueError,
        match=r"index 2 is out of range for axis 1 of 'blocks/0/attn/query/kernel' "
        r"\(size 2: the heads\)",
    ):
        select(params, Slice("blocks/0/attn/query/kernel", 2))
    with pytest.raises(ValueError, match=r"axis 3 \(specs\[0\]\) is out of range"):
        select(params, Slice("blocks/0/attn/query/kernel", 0, axis=3))
    with pytest.raises(ValueError, match=r"sliced along axes 1 and 2"):
        select(
            params,
            Slice("blocks/0/attn/query/kernel", 0),
            Slice("blocks/0/attn/query/kernel", 0, axis=2),
        )
    with pytest.raises(TypeError, match=r"specs\[0\] must be a glob pattern"):
        select(params, 3)
    with pytest.raises(ValueError, match="hold no attention layer"):
        head_selection({"dense": {"kernel": np.zeros((3, 4))}}, block=0, head=0)
    # one head unit (sliced on the host)
    other = jax.tree.map(
        lambda x: jax.device_put(np.asarray(x)[..., :1]) if x.ndim == 3 else x, params
    )
    with pytest.raises(ValueError, match="built for other parameters"):
        restrict(
            make_hvp(_sum_of_squares, other, f64["data"], method=FOR),
            head_selection(params, block=0, head=0),
        )
    op = make_hvp(loss_fn, params, f64["data"], params_filter="blocks/0", method=FOR)
    # a family member on a filtered operator keeps only its own block's leaves
    own = restrict(op, head_selection(params, block=0, head=0))
    assert own.selection.entries[0].paths == ("blocks/0/attn/query/kernel",)
    with pytest.raises(ValueError, match="outside the operator's params_filter"):
        restrict(op, head_selection(params, block=1, head=0))
    with pytest.raises(ValueError, match="head_spectra: the operator has a params_filter"):
        head_spectra(op, key=jax.random.key(0))
    with pytest.raises(TypeError, match="restrict: operator must be a CurvatureOperator"):
        restrict(loss_fn, head_selection(params, block=0, head=0))
    with pytest.raises(TypeError, match="groups must be a non-empty dict"):
        head_spectra(loss_fn, params, f64["data"], key=jax.random.key(0), groups=("qk",))


def test_result_round_trip_and_plots(f64, key, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape.hessian import HeadSpectraResult
    from landscape.plot import plot_depth_spectrum, plot_head_spectra

    rng = np.random.default_rng(0)
    res = HeadSpectraResult(
        values=rng.random((2, 2, 2, 1)),
        error_bounds=np.zeros((2, 2, 2, 1)),
        converged=np.ones((2, 2, 2), bool),
        traces=rng.random((2, 2, 2)),
        trace_se=np.zeros((2, 2, 2)),
        trace_exact=np.ones((2, 2, 2), bool),
        sizes=np.full((2, 2, 2), 72),
        layer_values=rng.random((2, 1)),
        layer_sizes=np.full(2, BLOCK),
        groups=("qk", "vo"),
        group_parts=(("query", "key"), ("value", "out")),
        blocks=("blocks/0/attn", "blocks/1/attn"),
    )
    res.save(tmp_path / "heads.npz")
    back = HeadSpectraResult.load(tmp_path / "heads.npz")
    np.testing.assert_array_equal(back.values, res.values)
    assert back.groups == res.groups and back.group_parts == res.group_parts
    ax = plot_head_spectra(res)
    assert len(ax.get_xticklabels()) == 4 and ax.get_xticklabels()[2].get_text() == "vo h0"
    ax2 = plot_head_spectra(res, quantity="trace")
    ax3 = plot_depth_spectrum({"hessian": res, "ggn": res.replace(curvature="ggn")})
    assert len(ax3.get_lines()) == 2 * (1 + 2)
    with pytest.raises(ValueError, match="quantity must be one of"):
        plot_head_spectra(res, quantity="bottom")
    for a in (ax, ax2, ax3):
        plt.close(a.figure)
