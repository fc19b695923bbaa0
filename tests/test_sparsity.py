"""Sparsity: masks and magnitude pruning (exact references), masked training (exact zeros under
momentum, weight decay and Adam), resumed training (bit for bit), iterative pruning with
rewinding and its controls (resumable), instability, bad inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from threadpoolctl import threadpool_limits

import landscape
from landscape import sparsity as S
from landscape.train import TrainState


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Dense NumPy linear algebra (references, host eigensolves) on one BLAS thread: on a
    shared 2-core machine OpenBLAS's threads contend with the test workers (10-20x slower)."""
    with threadpool_limits(1):
        yield


HIDDEN = (8,)
TC = {
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "num_steps": 20,
    "batch_size": 32,
    "eval_every": 10,
}


@pytest.fixture(scope="module")
def small(digits_data):
    """320 training and 120 test digits: every run here is a few milliseconds."""
    cut = lambda d, n: {k: v[:n] for k, v in d.items()}  # noqa: E731
    return cut(digits_data.train, 320), cut(digits_data.test, 120)


@pytest.fixture(scope="module")
def model():
    return landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=HIDDEN, seed=0)


def _eq(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)
    )


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------
PARAMS = {
    "a": {"kernel": jnp.asarray([[0.5, -0.1], [0.3, -2.0]]), "bias": jnp.asarray([0.01, 0.02])},
    "b": {"kernel": jnp.asarray([[1.0], [-0.2], [0.05]])},
}


def test_magnitude_prune_exact():
    # global: 7 prunable weights, round(0.5 * 7) = 4 smallest: 0.05, -0.1, -0.2, 0.3
    m = S.magnitude_prune(PARAMS, 0.5)
    np.testing.assert_array_equal(m["a"]["kernel"], [[True, False], [False, True]])
    np.testing.assert_array_equal(m["b"]["kernel"], [[True], [False], [False]])
    np.testing.assert_array_equal(m["a"]["bias"], [True, True])  # biases are not prunable
    # layer-wise: round(0.5 * 4) = 2 of a (-0.1, 0.3), round(0.5 * 3) = 2 of b (0.05, -0.2)
    lw = S.magnitude_prune(PARAMS, 0.5, scope="layerwise")
    np.testing.assert_array_equal(lw["a"]["kernel"], [[True, False], [False, True]])
    np.testing.assert_array_equal(lw["b"]["kernel"], [[True], [False], [False]])
    lw = S.magnitude_prune(PARAMS, 0.25, scope="layerwise")  # 1 of a, round(0.75) = 1 of b
    np.testing.assert_array_equal(lw["a"]["kernel"], [[True, False], [True, True]])
    np.testing.assert_array_equal(lw["b"]["kernel"], [[True], [True], [False]])
    # a second round prunes among the survivors only: round(0.5 * 3) = 2 more (0.5, 1.0 kept? no:
    # survivors 0.5, -2.0, 1.0 -> the smallest two are 0.5 and 1.0)
    m2 = S.magnitude_prune(PARAMS, 0.5, mask=m)
    np.testing.assert_array_equal(m2["a"]["kernel"], [[False, False], [False, True]])
    np.testing.assert_array_equal(m2["b"]["kernel"], [[False], [False], [False]])
    # ties broken by position; prunable by path or callable (biases included)
    tie = {"kernel": jnp.asarray([1.0, 1.0, 1.0, 2.0])}
    np.testing.assert_array_equal(
        S.magnitude_prune(tie, 0.5)["kernel"], [False, False, True, True]
    )
    allp = S.magnitude_prune(PARAMS, 0.2, prunable=lambda path, x: True)  # round(1.8) = 2
    np.testing.assert_array_equal(allp["a"]["bias"], [False, False])
    onlyb = S.magnitude_prune(PARAMS, 0.5, prunable=("b/kernel",))
    assert np.all(onlyb["a"]["kernel"]) and np.sum(~np.asarray(onlyb["b"]["kernel"])) == 2
    # a layer at its own rate (Frankle & Carbin's output layer at half the rate), by leading
    # path part or whole path: b alone at 0.25, round(0.75) = 1 (0.05); a alone at 0.5 (the
    # global threshold over the rest), round(2.0) = 2 (-0.1, 0.3)
    for lr in ({"b": 0.25}, {"b/kernel": 0.25}):
        out = S.magnitude_prune(PARAMS, 0.5, layer_rates=lr)
        np.testing.assert_array_equal(out["a"]["kernel"], [[True, False], [False, True]])
        np.testing.assert_array_equal(out["b"]["kernel"], [[True], [True], [False]])
    # the rest keeps one global threshold: with b at its own rate 0.4 (round(1.2) = 1), and a at
    # 0.25 (round(1.0) = 1: -0.1, though b's 0.05 is smaller)
    out = S.magnitude_prune(PARAMS, 0.25, layer_rates={"b": 0.4})
    np.testing.assert_array_equal(out["a"]["kernel"], [[True, False], [True, True]])
    np.testing.assert_array_equal(out["b"]["kernel"], [[True], [True], [False]])
    # reporting
    rep = S.sparsity_report(m)
    assert rep.sparsity == pytest.approx(4 / 7) and rep.overall == pytest.approx(4 / 9)
    assert int(rep.pruned["a/kernel"]) == 2 and rep.prunable == ("a/kernel", "b/kernel")
    assert S.sparsity(S.dense_mask(PARAMS)) == 0.0 and "kept" in rep.table()
    pm = S.prunable_mask(PARAMS)
    assert not bool(np.any(pm["a"]["bias"])) and bool(np.all(pm["b"]["kernel"]))
    z = S.apply_mask(PARAMS, m)
    assert float(z["b"]["kernel"][2, 0]) == 0.0 and float(z["b"]["kernel"][0, 0]) == 1.0


def test_random_mask_keeps_counts(key):
    big = {"w": {"kernel": jnp.arange(200.0).reshape(20, 10)}, "v": {"bias": jnp.ones(5)}}
    m = S.magnitude_prune(big, 0.3)
    r = S.random_mask(m, key=key)
    assert int(np.sum(r["w"]["kernel"])) == int(np.sum(m["w"]["kernel"])) == 140
    assert not np.array_equal(r["w"]["kernel"], m["w"]["kernel"])
    assert r["w"]["kernel"].dtype == jnp.bool_ and bool(np.all(r["v"]["bias"]))
    # the leaf's own key (leaves in tree order: v/bias, w/kernel) permutes it as
    # jax.random.permutation does
    want = jax.random.permutation(jax.random.split(key, 2)[1], m["w"]["kernel"].ravel())
    np.testing.assert_array_equal(r["w"]["kernel"], want.reshape(20, 10))


def test_bad_masks_and_rates(small, model):
    with pytest.raises(ValueError, match=r"magnitude_prune: rate must lie in \(0, 1\)"):
        S.magnitude_prune(PARAMS, 1.0)
    with pytest.raises(ValueError, match="rate must lie in"):
        S.magnitude_prune(PARAMS, 0.0)
    with pytest.raises(TypeError, match="rate must be a float"):
        S.magnitude_prune(PARAMS, "0.2")
    with pytest.raises(ValueError, match="scope must be one of"):
        S.magnitude_prune(PARAMS, 0.2, scope="local")
    with pytest.raises(ValueError, match="prunable=.*selects no leaf"):
        S.magnitude_prune(PARAMS, 0.2, prunable=("weight",))
    with pytest.raises(ValueError, match=r"layer_rates\['b'\] must lie in \(0, 1\)"):
        S.magnitude_prune(PARAMS, 0.2, layer_rates={"b": 1.0})
    with pytest.raises(TypeError, match=r"layer_rates\['b'\] must be a float"):
        S.magnitude_prune(PARAMS, 0.2, layer_rates={"b": "half"})
    with pytest.raises(ValueError, match="layer_rates key 'a/bias' names no prunable leaf"):
        S.magnitude_prune(PARAMS, 0.2, layer_rates={"a/bias": 0.1})
    with pytest.raises(ValueError, match="layer_rates names leaf 'b/kernel' twice"):
        S.magnitude_prune(PARAMS, 0.2, layer_rates={"b": 0.1, "b/kernel": 0.2})
    with pytest.raises(TypeError, match="layer_rates must be a dict"):
        S.magnitude_prune(PARAMS, 0.2, layer_rates=[("b", 0.1)])
    m = S.dense_mask(model.params)
    with pytest.raises(
        ValueError, match="landscape.train: mask must have the same tree structure"
    ):
        landscape.train(model, small[0], mask={"x": m}, num_steps=2, progress=False)
    with pytest.raises(TypeError, match=r"mask leaf 'layers/0/bias' must be boolean"):
        landscape.train(
            model,
            small[0],
            mask=jax.tree.map(lambda x: x.astype(float), m),
            num_steps=2,
            progress=False,
        )
    bad = jax.tree.map(lambda x: x, m)
    bad["layers"][0]["kernel"] = jnp.ones((3, 3), bool)
    with pytest.raises(ValueError, match="mask leaf 'layers/0/kernel' has shape"):
        S.apply_mask(model.params, bad)


# --------------------------------------------------------------------------------------------
# masked training
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["momentum_wd", "adam"])
def test_masked_training_exact_zeros(small, model, opt):
    mask = S.magnitude_prune(model.params, 0.6)
    if opt == "adam":
        optimizer = optax.adam(1e-2)
    else:  # coupled decay through the loss and decoupled decay in the chain, plus momentum
        optimizer = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9))
    kw = {"weight_decay": 1e-3} if opt != "adam" else {}
    r = landscape.train(
        model,
        small[0],
        optimizer=optimizer,
        mask=mask,
        num_steps=20,
        batch_size=32,
        progress=False,
        **kw,
    )
    for p, m, p0 in zip(
        jax.tree.leaves(r.params), jax.tree.leaves(mask), jax.tree.leaves(model.params)
    ):
        p, m, p0 = np.asarray(p), np.asarray(m), np.asarray(p0)
        assert np.all(p[~m] == 0.0)  # exactly zero, not small
        # kept weights train (a few digits pixels are always 0: their weights get no gradient)
        assert p0.ndim == 1 or np.mean(p[m] != p0[m]) > 0.8
    # no gradient reaches a pruned weight: the optimiser's moments (momentum trace; Adam's mu
    # and nu) are zero there too
    kernels = [k for k in jax.tree.leaves(mask) if np.ndim(k) == 2]
    moments = [x for x in jax.tree.leaves(r.opt_state) if np.ndim(x) == 2]
    assert len(moments) == len(kernels) * (2 if opt == "adam" else 1)
    for i, x in enumerate(moments):
        m = np.asarray(kernels[i % len(kernels)])
        assert np.all(np.asarray(x)[~m] == 0.0) and np.any(np.asarray(x)[m] != 0.0)
    assert r.config["masked"] is True
    # rewound from a dense run's state (the tickets' path): the dense moments of the weights
    # pruned since are zeroed, so they stay zero (and act on no survivor)
    # (the dense run under the all-True mask: the same numbers as unmasked, the same compiled
    # step as the masked runs)
    rewind = landscape.train(
        model,
        small[0],
        optimizer=optimizer,
        mask=S.dense_mask(model.params),
        num_steps=20,
        stop_step=10,
        batch_size=32,
        progress=False,
        **kw,
    ).train_state()
    assert np.any(
        np.asarray(rewind.params["layers"][0]["kernel"])[~np.asarray(mask["layers"][0]["kernel"])]
        != 0
    )
    r2 = landscape.train(
        model,
        small[0],
        optimizer=optimizer,
        mask=mask,
        initial_state=rewind,
        num_steps=20,
        batch_size=32,
        progress=False,
        **kw,
    )
    moments = [x for x in jax.tree.leaves(r2.opt_state) if np.ndim(x) == 2]
    for i, x in enumerate(moments):
        assert np.all(np.asarray(x)[~np.asarray(kernels[i % len(kernels)])] == 0.0)


def test_resume_bit_for_bit(small, model, tmp_path):
    kw = dict(
        optimizer="momentum",
        learning_rate=0.05,
        schedule="cosine",
        num_steps=40,
        batch_size=32,
        eval_every=10,
        progress=False,
        test_data=small[1],
    )
    full = landscape.train(model, small[0], seed=3, **kw)
    first = landscape.train(model, small[0], seed=3, stop_step=20, **kw)
    assert first.final_step == 20 and list(first.history["eval_step"]) == [0, 10, 20]
    state = first.train_state()
    state.save(tmp_path / "state.npz")
    loaded = TrainState.load(tmp_path / "state.npz")
    assert loaded.step == 20 and loaded.seed == 3
    second = landscape.train(model, small[0], initial_state=loaded, **kw)  # seed from the state
    assert _eq(second.params, full.params) and _eq(second.opt_state, full.opt_state)
    np.testing.assert_array_equal(second.history["batch_loss"], full.history["batch_loss"][20:])
    np.testing.assert_array_equal(
        second.history["test_accuracy"], full.history["test_accuracy"][2:]
    )
    assert list(second.history["step"]) == list(range(21, 41))
    other = landscape.train(model, small[0], initial_state=loaded, seed=4, **kw)
    assert not _eq(other.params, full.params)
    with pytest.raises(TypeError, match="initial_state must be a landscape.train.TrainState"):
        landscape.train(model, small[0], initial_state={"params": 1}, **kw)
    import dataclasses

    for bad, exc in ((-5, ValueError), (10.7, TypeError)):
        with pytest.raises(exc, match="initial_state.step"):
            landscape.train(
                model, small[0], initial_state=dataclasses.replace(loaded, step=bad), **kw
            )
    with pytest.raises(ValueError, match="stop_step must be at most num_steps=40"):
        landscape.train(model, small[0], stop_step=41, **kw)
    with pytest.raises(ValueError, match="initial_state.step=20 leaves nothing to train"):
        landscape.train(model, small[0], initial_state=loaded, stop_step=20, **kw)
    with pytest.raises(ValueError, match="opt_state does not fit"):
        landscape.train(
            model, small[0], initial_state=loaded, **{**kw, "optimizer": "adam", "schedule": None}
        )


# --------------------------------------------------------------------------------------------
# iterative pruning
# --------------------------------------------------------------------------------------------
OUT_RATE = {"layers/1": 0.25}  # the output layer at half the rate (Frankle & Carbin)


def _prune(model, small, store, rate=0.5, layer_rates=OUT_RATE):
    """The module's pruning job (2 rounds, rewind to step 10, the output layer at half the
    rate) on ``model`` at ``rate``."""
    return S.iterative_pruning(
        model,
        small[0],
        TC,
        test_data=small[1],
        rounds=2,
        rate=rate,
        rewind_step=10,
        key=jax.random.key(0),
        layer_rates=layer_rates,
        store=store,
    )


@pytest.fixture(scope="module")
def pruning(small, model, tmp_path_factory):
    """The job, with the (first step, last step) of every training run it made."""
    store = tmp_path_factory.mktemp("imp") / "store"
    runs = []
    train = S.train

    def recorded(*args, initial_state=None, stop_step=None, **kwargs):
        runs.append(
            (0 if initial_state is None else initial_state.step, stop_step or TC["num_steps"])
        )
        return train(*args, initial_state=initial_state, stop_step=stop_step, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "train", recorded)
        res = _prune(model, small, store)
    return res, store, runs


def test_iterative_pruning_reference(pruning, small, model):
    res, _, runs = pruning
    # 512 first-layer weights at 0.5: 256 then 128 more; 80 output weights at 0.25:
    # round(20.0) = 20, then round(15.0) = 15 (592 prunable weights: exact)
    np.testing.assert_allclose(res.sparsity, [0.0, 276 / 592, 419 / 592], atol=1e-12)
    rep = S.sparsity_report(res.mask(2))
    assert int(rep.pruned["layers/0/kernel"]) == 384 and int(rep.pruned["layers/1/kernel"]) == 35
    assert res.settings["layer_rates"] == {"layers/1/kernel": 0.25}
    # equal budgets: after the run to the rewind step, the dense run, every ticket and both
    # controls (re-initialisation included) train from step 10 to the end
    assert runs == [(0, 10)] + [(10, 20)] * (1 + 2 * 3)
    m1, m2 = res.mask(1), res.mask(2)
    assert all(
        bool(np.all(np.asarray(b) <= np.asarray(a)))
        for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2))
    )
    # the references: the dense run, its state at step 10, the round-1 mask from its weights,
    # and the ticket trained from the rewound state with that mask
    dense = landscape.train(model, small[0], test_data=small[1], progress=False, **TC)
    rewind = landscape.train(model, small[0], stop_step=10, progress=False, **TC).train_state()
    ref_m1 = S.magnitude_prune(dense.params, 0.5, layer_rates=OUT_RATE)
    assert _eq(ref_m1, m1)
    ticket1 = landscape.train(
        model, small[0], test_data=small[1], mask=m1, initial_state=rewind, progress=False, **TC
    )
    assert res.test_accuracy["ticket"][0] == dense.history["test_accuracy"][-1]
    assert res.test_accuracy["ticket"][1] == ticket1.history["test_accuracy"][-1]
    # the re-initialised control of round 1: the rewind state with the weights' values replaced
    # by the shuffled initialisation, trained with the round's mask over the ticket's steps
    k_init = jax.random.split(jax.random.split(jax.random.key(0), 2)[0])[1]
    p0 = S._shuffle_init(model.params, k_init)
    reinit1 = landscape.train(
        model,
        small[0],
        test_data=small[1],
        mask=m1,
        initial_state=rewind.replace(params=p0),
        progress=False,
        **TC,
    )
    assert res.test_accuracy["reinit"][1] == reinit1.history["test_accuracy"][-1]
    ticket2 = landscape.train(
        model, small[0], test_data=small[1], mask=m2, initial_state=rewind, progress=False, **TC
    )
    assert _eq(ticket2.params, res.params)
    assert set(res.test_accuracy) == {"ticket", "random_mask", "reinit"}
    assert np.all((res.test_accuracy["reinit"] >= 0) & (res.test_accuracy["random_mask"] <= 1))
    assert "round" in res.table() and "rewind_step=10" in repr(res)


def test_iterative_pruning_resumes(pruning, small, model, monkeypatch):
    res, store, _ = pruning

    def no_training(*a, **k):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr(S, "train", no_training)
    again = _prune(model, small, store)
    for k in res.test_accuracy:
        np.testing.assert_array_equal(again.test_accuracy[k], res.test_accuracy[k])
    assert _eq(again.masks, res.masks) and _eq(again.params, res.params)
    with pytest.raises(ValueError, match="holds results of another job"):
        _prune(model, small, store, rate=0.4)
    with pytest.raises(ValueError, match="another job.*layer_rates"):
        _prune(model, small, store, layer_rates=None)
    # the same parameters from another architecture (tanh), and optimisers that differ only
    # in the values their functions close over, are other jobs too
    tanh = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=HIDDEN, seed=0, activation="tanh"
    )
    assert _eq(tanh.params, model.params)
    with pytest.raises(ValueError, match="another job.*activation"):
        _prune(tanh, small, store)
    import optax

    from landscape import store as _store

    assert _store.stable_text(optax.sgd(0.1)) != _store.stable_text(optax.sgd(2.0))


def test_iterative_pruning_bad_inputs(small, model, key):
    x = small[0]
    ok = {"test_data": small[1], "rounds": 1, "key": key}
    with pytest.raises(ValueError, match="iterative_pruning: rate must lie in"):
        S.iterative_pruning(model, x, TC, rate=1.5, **ok)
    with pytest.raises(ValueError, match="rewind_step must be below the run's num_steps=20"):
        S.iterative_pruning(model, x, TC, rewind_step=20, **ok)
    with pytest.raises(ValueError, match="train_config must not set"):
        S.iterative_pruning(model, x, {**TC, "mask": None}, **ok)
    with pytest.raises(ValueError, match="keys landscape.train does not take"):
        S.iterative_pruning(model, x, {**TC, "lr": 0.1}, **ok)
    with pytest.raises(ValueError, match="controls must be one of"):
        S.iterative_pruning(model, x, TC, controls=("shuffle",), **ok)
    with pytest.raises(ValueError, match="test_data is required"):
        S.iterative_pruning(model, x, TC, rounds=1, key=key)
    with pytest.raises(TypeError, match="key is required"):
        S.iterative_pruning(model, x, TC, test_data=small[1], rounds=1, key=None)
    nan = {**x, "x": np.asarray(x["x"]).copy()}
    nan["x"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"iterative_pruning: data must be finite"):
        S.iterative_pruning(model, nan, TC, **ok)


# --------------------------------------------------------------------------------------------
# instability
# --------------------------------------------------------------------------------------------
def test_instability_reference(small, model, pruning):
    res = S.instability(
        model,
        small[0],
        TC,
        test_data=small[1],
        spawn_step=[10, 0],
        key=jax.random.key(1),
        mask=[None, pruning[0].mask(1)],
        num_ts=5,
    )
    assert list(res.spawn_steps) == [0, 10] and res.barrier["test/error"].shape == (2, 2)
    np.testing.assert_allclose(res.sparsity, [0.0, 276 / 592], atol=1e-12)
    # the reference at spawn step 10, dense: parent to 10, two copies, profile, barrier
    sa, sb = res.seeds
    assert sa != sb
    state = landscape.train(model, small[0], stop_step=10, progress=False, **TC).train_state()
    base = {k: v for k, v in TC.items()}
    ends = [
        landscape.train(
            model,
            small[0],
            test_data=small[1],
            initial_state=state,
            seed=s,
            progress=False,
            **base,
        )
        for s in (sa, sb)
    ]
    prof = landscape.connect.profile(
        landscape.make_loss_fn(ends[0].model),
        landscape.connect.linear_path(ends[0].params, ends[1].params),
        small[0],
        test_data=small[1],
        num_ts=5,
        refine=False,
    )
    b = landscape.connect.barrier(prof)
    assert res.barrier["test/error"][0, 1] == pytest.approx(b.get("error", "test"), abs=0)
    assert res.barrier["train/loss"][0, 1] == pytest.approx(b.get("loss", "train"), abs=0)
    assert res.end_test_accuracy[0, 1, 0] == ends[0].history["test_accuracy"][-1]
    assert np.all(np.isfinite(res.barrier["test/error"])) and "spawn_steps=[0, 10]" in repr(res)
    with pytest.raises(ValueError, match=r"spawn_step must lie in \[0, num_steps=20\)"):
        S.instability(
            model, small[0], TC, test_data=small[1], spawn_step=20, key=jax.random.key(1)
        )
    with pytest.raises(TypeError, match="spawn_step must be an int"):
        S.instability(
            model, small[0], TC, test_data=small[1], spawn_step=1.5, key=jax.random.key(1)
        )


def test_plots(pruning):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import landscape.plot as lp

    res = pruning[0]
    ax = lp.plot_pruning(res)
    assert len(ax.lines) == 3 and ax.get_xscale() == "log"
    fake = S.InstabilityResult(
        spawn_steps=np.asarray([0, 10]),
        sparsity=np.asarray([0.0, 0.5]),
        barrier={"test/error": np.asarray([[0.0, 0.01], [0.1, 0.0]])},
        end_test_accuracy=np.zeros((2, 2, 2)),
        t_max=np.zeros((2, 2)),
    )
    ax = lp.plot_instability(fake)
    assert len(ax.lines) >= 2
    with pytest.raises(ValueError, match="metric must be one of"):
        lp.plot_instability(fake, metric="loss")
    plt.close("all")
