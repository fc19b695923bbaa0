"""Filter normalisation on a transformer (issue 16): attention kernels per (head, head unit) and
per (head, output unit), attention biases per head, LayerNorm parameters under ``bias_bn``."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import landscape
from landscape.surface import filter_norms, normalize_direction, random_direction
from landscape.surface._directions import attention_filter_axes

# norms of float32 leaves of O(1) entries: rounding ~ 1e-7 relative
RTOL32 = 2e-6


@pytest.fixture(scope="module")
def tiny():
    model = landscape.make_model(
        "transformer",
        input_shape=(4, 2),
        patch=1,
        num_outputs=3,
        width=8,
        depth=2,
        heads=2,
        mlp_ratio=2,
        seed=0,
    )
    rng = np.random.default_rng(0)
    data = {
        "x": rng.standard_normal((16, 4, 2)).astype(np.float32),
        "y": rng.integers(0, 3, 16).astype(np.int32),
    }
    return model, data


def _leaf(tree, path):
    for p, x in zip(landscape.tree.leaf_paths(tree), jax.tree.leaves(tree)):
        if p == path:
            return np.asarray(x)
    raise KeyError(path)


def test_attention_layers_are_recognised_by_names_and_shapes(tiny):
    model, _ = tiny
    axes = attention_filter_axes(model.params)
    for b in (0, 1):
        a = f"blocks/{b}/attn/"
        assert (
            axes[a + "query/kernel"]
            == axes[a + "key/kernel"]
            == axes[a + "value/kernel"]
            == (1, 2)
        )
        assert axes[a + "out/kernel"] == (0, 2)
        assert axes[a + "query/bias"] == (0,)
    assert len(axes) == 2 * 7  # q, k, v, o kernels and q, k, v biases; out/bias (d,) is 1-D
    # a lone 3-D out/kernel (a 1-D convolution) is not an attention layer
    assert attention_filter_axes({"out": {"kernel": np.zeros((3, 4, 5))}}) == {}
    # shapes that do not fit together are not either
    bad = {
        "query": {"kernel": np.zeros((8, 2, 4))},
        "value": {"kernel": np.zeros((8, 2, 4))},
        "out": {"kernel": np.zeros((4, 2, 8))},
    }
    assert attention_filter_axes(bad) == {}


def test_direction_filter_norms_equal_the_weights_per_head(tiny, key):
    model, _ = tiny
    p = model.params
    d = random_direction(key, p).vector
    # the public per-filter norms, on one attention layer (eager: a few small programs)
    fd, fw = filter_norms(d["blocks"][0]["attn"]), filter_norms(p["blocks"][0]["attn"])
    for path in ("query/kernel", "key/kernel", "value/kernel", "out/kernel"):
        np.testing.assert_allclose(_leaf(fd, path), _leaf(fw, path), rtol=RTOL32)
    assert _leaf(fd, "query/kernel").shape == (2, 4) and _leaf(fd, "out/kernel").shape == (2, 8)
    for b in (0, 1):
        a = f"blocks/{b}/attn/"
        for part in ("query", "key", "value"):
            w, v = _leaf(p, a + part + "/kernel"), _leaf(d, a + part + "/kernel")
            # by hand: the column W[:, h, j] over d_model
            np.testing.assert_allclose(
                np.linalg.norm(v, axis=0), np.linalg.norm(w, axis=0), rtol=RTOL32
            )
            assert not _leaf(d, a + part + "/bias").any()  # bias_bn="zero"
        w, v = _leaf(p, a + "out/kernel"), _leaf(d, a + "out/kernel")
        # by hand: W_O[h, :, j] over d_head, one filter per (head, output unit)
        np.testing.assert_allclose(
            np.linalg.norm(v, axis=1), np.linalg.norm(w, axis=1), rtol=RTOL32
        )
        for ln in ("ln1", "ln2"):  # LayerNorm scale and offset: zero by default
            assert not _leaf(d, f"blocks/{b}/{ln}/scale").any()
            assert not _leaf(d, f"blocks/{b}/{ln}/bias").any()
    # dense kernels keep the last axis
    np.testing.assert_allclose(
        np.linalg.norm(_leaf(d, "blocks/0/mlp/fc1/kernel"), axis=0),
        np.linalg.norm(_leaf(p, "blocks/0/mlp/fc1/kernel"), axis=0),
        rtol=RTOL32,
    )


def test_bias_bn_filter_moves_layernorm_and_head_biases_as_groups(tiny, key):
    model, _ = tiny
    p = model.params
    d = random_direction(key, p, bias_bn="filter").vector
    for path in ("blocks/0/ln1/scale", "blocks/1/ln2/bias", "ln_f/scale"):
        w, v = _leaf(p, path), _leaf(d, path)
        np.testing.assert_allclose(np.linalg.norm(v), np.linalg.norm(w), rtol=RTOL32)
        if np.linalg.norm(w) > 0:  # a whole-leaf group: not +-|w| entry by entry
            assert not np.allclose(np.abs(v), np.abs(w))
    qb = _leaf(d, "blocks/0/attn/query/bias")
    np.testing.assert_allclose(
        np.linalg.norm(qb, axis=1),
        np.linalg.norm(_leaf(p, "blocks/0/attn/query/bias"), axis=1),
        rtol=RTOL32,
        atol=1e-30,
    )


def test_tuple_filter_axes_in_overrides_and_bad_axes(tiny, key):
    model, _ = tiny
    p = model.params
    # the last-axis filters of a query kernel, asked for explicitly (the old behaviour)
    d = random_direction(key, p, overrides={"*/query/kernel": {"filter_axis": -1}}).vector
    w, v = _leaf(p, "blocks/0/attn/query/kernel"), _leaf(d, "blocks/0/attn/query/kernel")
    np.testing.assert_allclose(
        np.linalg.norm(v, axis=(0, 1)), np.linalg.norm(w, axis=(0, 1)), rtol=RTOL32
    )
    e = normalize_direction(
        jax.tree.map(np.ones_like, p),
        p,
        overrides={"blocks/0/mlp/fc1/kernel": {"filter_axis": (0, 1)}},
    )
    np.testing.assert_allclose(
        _leaf(e, "blocks/0/mlp/fc1/kernel"),
        np.abs(_leaf(p, "blocks/0/mlp/fc1/kernel")),
        rtol=RTOL32,
    )
    with pytest.raises(
        ValueError, match="filter_axis .* out of range .*blocks/0/attn/query/kernel"
    ):
        random_direction(key, p, overrides={"blocks/0/attn/query/kernel": {"filter_axis": (1, 5)}})
    with pytest.raises(
        TypeError, match=r"overrides\['\*kernel'\]\['filter_axis'\] must be an int or"
    ):
        random_direction(key, p, overrides={"*kernel": {"filter_axis": "heads"}})


# slice_1d on a transformer along a filter-normalised random direction, against the loss at each
# point: tests/test_transformer.py::test_slice_and_linear_path_profile (float64, exact
# reference); not repeated here (a grid program and an evaluation program more)
