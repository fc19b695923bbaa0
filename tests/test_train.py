"""Training: accuracy, determinism, schedules, callbacks, snapshots, divergence."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import landscape
from landscape.train import make_schedule


def test_trained_fixture_learns(trained_mlp):
    h = trained_mlp.history
    assert h["test_accuracy"][-1] > 0.9
    assert h["train_loss"][-1] < 0.5 * h["train_loss"][0]
    assert list(h["eval_step"])[0] == 0 and int(h["eval_step"][-1]) == 300
    assert len(h["batch_loss"]) == 300


def test_same_seed_same_result_bit_for_bit(digits_data):
    def run(seed):
        m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,), seed=0)
        return landscape.train(
            m,
            digits_data.train,
            optimizer="sgd",
            learning_rate=0.1,
            num_steps=40,
            batch_size=32,
            seed=seed,
            progress=False,
        )

    a, b, c = run(0), run(0), run(1)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(a.history["batch_loss"], c.history["batch_loss"])


def test_callbacks_snapshots_and_schedules(digits_data):
    seen = []

    def cb(info):
        seen.append((info.step, info.learning_rate))
        return {"param_norm": float(landscape.tree.norm(info.params))}

    m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(16,))
    r = landscape.train(
        m,
        digits_data.train,
        optimizer="momentum",
        learning_rate=0.05,
        schedule="cosine",
        num_steps=60,
        batch_size=32,
        callbacks=[landscape.callback(cb, every=20)],
        snapshot_steps=[0, 30, 60],
        progress=False,
    )
    assert [s for s, _ in seen] == [0, 20, 40, 60]
    assert seen[0][1] == pytest.approx(0.05) and seen[-1][1] == pytest.approx(0.0, abs=1e-8)
    assert len(r.history["param_norm"]) == 4
    assert list(r.snapshots["step"]) == [0, 30, 60]
    np.testing.assert_array_equal(
        r.snapshot(0)["layers"][0]["kernel"], m.params["layers"][0]["kernel"]
    )
    np.testing.assert_array_equal(
        r.snapshot(2)["layers"][0]["kernel"], r.params["layers"][0]["kernel"]
    )
    for name in ("constant", "warmup_cosine", "step", "exponential"):
        sched = make_schedule(
            name, 0.1, num_steps=100, warmup_steps=10 if name == "warmup_cosine" else 0
        )
        assert float(sched(0)) >= 0 and float(sched(99)) <= 0.1 + 1e-9
    assert float(make_schedule("step", 1.0, num_steps=100)(80)) == pytest.approx(0.01)


def test_batchnorm_statistics_train_and_eval(trained_resnet):
    m = trained_resnet.model
    assert trained_resnet.history["test_accuracy"][-1] > 0.5
    # the running statistics moved away from their initial values (0 mean, 1 var)
    means = [np.abs(np.asarray(x)).max() for x in jax.tree.leaves(m.state)]
    assert max(means) > 0.05


def test_divergence_names_step_and_keeps_last_finite(digits_data):
    m = landscape.make_model(
        "mlp", input_shape=(64,), num_outputs=10, hidden=(16,), activation="linear"
    )
    with pytest.raises(
        landscape.TrainingDivergedError, match=r"non-finite loss, gradient or update at step \d+"
    ) as ei:
        landscape.train(
            m,
            digits_data.train,
            optimizer=optax.sgd(50.0),
            num_steps=100,
            batch_size=64,
            progress=False,
        )
    err = ei.value
    assert err.step > 0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(err.result.params))
    assert len(err.result.history["batch_loss"]) == err.step - 1
    assert np.isfinite(err.result.history["batch_loss"]).all()


def test_overflowing_update_keeps_finite_parameters(digits_data):
    """A finite loss and gradient whose update overflows is a bad step too."""
    m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,))
    data = {k: v[:64] for k, v in digits_data.train.items()}
    lf = landscape.make_loss_fn(m, has_aux=False)

    def loss(p, b):  # gradient 10 on every first-layer weight: a 1e39 step overflows float32
        return lf(p, b) + 10.0 * jnp.sum(p["layers"][0]["kernel"])

    with pytest.raises(landscape.TrainingDivergedError) as ei:
        landscape.train(m, data, loss=loss, optimizer=optax.sgd(1e38), num_steps=5, batch_size=32,
                        progress=False)
    assert ei.value.step == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(ei.value.result.params))


def test_callbacks_may_keep_the_arrays_they_get(digits_data):
    """Step blocks donate their buffers; callbacks get copies, so a kept trajectory stays
    readable (the last one equals the final parameters)."""
    m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,))
    data = {k: v[:128] for k, v in digits_data.train.items()}
    traj = []
    r = landscape.train(m, data, num_steps=20, batch_size=16, progress=False, snapshot_steps=[5, 10, 15],
                        callbacks=[landscape.callback(lambda info: traj.append((info.step, info.params)), every=5)])
    assert [s for s, _ in traj] == [0, 5, 10, 15, 20]
    for _step, p in traj:
        leaves = [np.asarray(x) for x in jax.tree.leaves(p)]  # raises if the buffers were donated
        assert all(np.isfinite(x).all() for x in leaves)
    final = [np.asarray(x) for x in jax.tree.leaves(r.params)]
    assert all(np.array_equal(a, b) for a, b in zip(leaves, final))


def test_train_bad_inputs(digits_data):
    m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,))
    with pytest.raises(ValueError, match="exactly one of num_steps and num_epochs"):
        landscape.train(m, digits_data.train, progress=False)
    with pytest.raises(ValueError, match="batch_size=5000 is larger than the data set"):
        landscape.train(m, digits_data.train, num_steps=1, batch_size=5000, progress=False)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        landscape.train(m, digits_data.train, num_steps=1, batch_size=0, progress=False)
    bad = {"x": digits_data.train["x"].copy(), "y": digits_data.train["y"]}
    bad["x"][3, 5] = np.nan
    with pytest.raises(ValueError, match="data must be finite; found 1 NaN"):
        landscape.train(m, bad, num_steps=1, progress=False)
    with pytest.raises(ValueError, match="snapshot_steps must lie in"):
        landscape.train(m, digits_data.train, num_steps=5, snapshot_steps=[7], progress=False)
    wrong = landscape.make_model("mlp", input_shape=(10,), num_outputs=10, hidden=(8,))
    with pytest.raises(ValueError, match="could not be evaluated on data"):
        landscape.train(wrong, digits_data.train, num_steps=1, progress=False)


def test_named_optimizer_does_not_recompile(digits_data):
    """Named optimizers with the same settings are the same static object: no recompilation."""
    import sys

    tr = sys.modules["landscape.train"]  # the module (landscape.train is the function)
    m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,))
    data = {k: v[:64] for k, v in digits_data.train.items()}
    landscape.train(m, data, optimizer="adam", learning_rate=2e-3, num_steps=4, batch_size=16, progress=False)
    before = tr._run_block._cache_size()
    for seed in (1, 2):
        landscape.train(m, data, optimizer="adam", learning_rate=2e-3, num_steps=4, batch_size=16,
                        seed=seed, progress=False)
    assert tr._run_block._cache_size() == before
