"""Run directories and result objects: exact round trips, atomic writes, clear mismatches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape import _serialize
from landscape.train import TrainResult


def test_run_round_trip_exact(tmp_path, trained_resnet):
    out = landscape.save_run(tmp_path / "run", trained_resnet, config={"note": "x"})
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "history.npz", "params.npz", "provenance.json", "state.npz"]
    run = landscape.load_run(out)
    for a, b in zip(jax.tree.leaves(run.model.params), jax.tree.leaves(trained_resnet.params)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(run.model.state), jax.tree.leaves(trained_resnet.state)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(run.model.params) == jax.tree.structure(trained_resnet.params)
    np.testing.assert_array_equal(run.history["test_loss"], trained_resnet.history["test_loss"])
    assert run.config["note"] == "x" and run.config["model"]["name"] == "resnet"
    prov = run.provenance
    for k in ("packages", "dtype", "seeds", "data_hash", "settings", "devices", "python"):
        assert k in prov
    assert prov["packages"]["jax"] == jax.__version__ and prov["dtype"] == "float32"
    # the loaded model computes the same loss
    ds = landscape.load_data("digits", flat=False)
    a = landscape.evaluate(landscape.make_loss_fn(run.model), run.model.params, ds.test)
    b = landscape.evaluate(
        landscape.make_loss_fn(trained_resnet.model), trained_resnet.params, ds.test
    )
    assert float(a["loss"]) == float(b["loss"])


def test_load_run_other_architecture_fails(tmp_path, trained_mlp):
    out = landscape.save_run(tmp_path / "run", trained_mlp)
    other = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(48, 32))
    with pytest.raises(ValueError, match="another architecture|saved from model"):
        landscape.load_run(out, model=other)
    with pytest.raises(FileNotFoundError, match="no run in"):
        landscape.load_run(tmp_path / "nothing")
    # a template of the same architecture from another seed is fine: the seed is not architecture
    spec = trained_mlp.model.spec
    same = landscape.make_model(spec["name"], input_shape=tuple(spec["input_shape"]),
                                num_outputs=spec["num_outputs"], seed=spec["seed"] + 7, **spec["kwargs"])
    run = landscape.load_run(out, model=same)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(run.model.params),
                                                    jax.tree.leaves(trained_mlp.params)))


def test_snapshots_saved(tmp_path, digits_data):
    m = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,))
    r = landscape.train(m, digits_data.train, num_steps=10, snapshot_steps=5, progress=False)
    run = landscape.load_run(landscape.save_run(tmp_path / "r", r))
    assert list(run.snapshots["step"]) == [0, 5, 10]
    np.testing.assert_array_equal(
        run.snapshots["params"]["layers"][1]["kernel"],
        r.snapshots["params"]["layers"][1]["kernel"],
    )


def test_atomic_writes_leave_no_partial_file(tmp_path):
    path = tmp_path / "t.npz"
    _serialize.save_tree(path, {"a": np.ones(3)})

    class Boom:
        shape = (1,)
        dtype = np.dtype("O")

        def __array__(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom|cannot save"):
        _serialize.save_tree(path, {"a": Boom()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]  # old file intact, no temp file
    np.testing.assert_array_equal(_serialize.load_tree(path)["a"], np.ones(3))


def test_tree_serialisation_keeps_structure_and_keys():
    tree = {
        "a": {0: np.arange(3), 1: [np.float32(2.0), None]},
        "k": jax.random.key(4),
        "t": (1, "s"),
    }
    arrays, spec = _serialize.tree_to_arrays(tree)
    back = _serialize.arrays_to_tree(arrays, spec)
    assert list(back["a"].keys()) == [0, 1] and back["a"][1][1] is None and back["t"] == (1, "s")
    assert jnp.array_equal(jax.random.key_data(back["k"]), jax.random.key_data(tree["k"]))


@landscape.result
class _Toy(landscape.Result):
    values: jax.Array
    vectors: dict
    name: str = landscape.static_field(default="toy")
    provenance: dict = landscape.static_field(default_factory=dict)


def test_result_pytree_save_load(tmp_path):
    r = _Toy(jnp.arange(3.0), {"w": jnp.ones((2, 2))}, "demo", landscape.provenance(seeds=1))
    leaves = jax.tree.leaves(r)
    assert len(leaves) == 2  # static fields are not leaves
    doubled = jax.jit(lambda t: jax.tree.map(lambda x: 2 * x, t))(r)
    assert doubled.name == "demo" and float(doubled.values[2]) == 4.0
    r.save(tmp_path / "toy.npz")
    back = _Toy.load(tmp_path / "toy.npz")
    np.testing.assert_array_equal(back.values, r.values)
    assert back.name == "demo" and back.provenance["seeds"] == 1
    assert "values=" in repr(r) and "provenance" not in repr(r)
    with pytest.raises(ValueError, match="holds a '_Toy'"):
        TrainResult.load(tmp_path / "toy.npz")


def test_provenance_reads_the_checkout_commit_without_git(tmp_path):
    """The commit is read from .git's files (a loose ref, then packed-refs, then a detached HEAD)."""
    from landscape import _provenance

    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("a" * 40 + "\n")
    assert _provenance._read_head(git) == "a" * 40
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text("# pack-refs with: peeled\n" + "b" * 40 + " refs/heads/main\n")
    assert _provenance._read_head(git) == "b" * 40
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert _provenance._read_head(git) == "c" * 40
    assert _provenance.package_versions()["jax"] == jax.__version__


def test_float64_run_loads_as_float64(tmp_path):
    """load_run keeps the saved dtypes instead of casting to the rebuilt template's float32."""
    with jax.enable_x64(True):
        m = landscape.make_model("mlp", input_shape=(4,), num_outputs=2, hidden=(3,), seed=0)
        m64 = m.replace(params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) / 3, m.params))
        landscape.save_run(tmp_path / "r", m64)
        run = landscape.load_run(tmp_path / "r")
        for a, b in zip(jax.tree.leaves(run.model.params), jax.tree.leaves(m64.params)):
            assert a.dtype == jnp.float64 and np.array_equal(np.asarray(a), np.asarray(b))


def test_save_tree_refuses_colliding_leaf_names(tmp_path):
    from landscape import _serialize

    for tree in ({"a/b": np.ones(1), "a": {"b": np.zeros(1)}}, {0: np.ones(1), "0": np.zeros(1)}):
        with pytest.raises(ValueError, match="two leaves under one name"):
            _serialize.save_tree(tmp_path / "t.npz", tree)
    assert not (tmp_path / "t.npz").exists()


def test_optax_hyperparameters_are_recorded_or_warned(tmp_path):
    """A run trained with an optax object recorded ``{"name": "custom", "repr": ...}`` only
    (issue 11): the learning rate was lost. ``inject_hyperparams`` states are read back (start
    and end values, so a schedule shows), ``optimizer_config=`` is recorded as given, and
    otherwise ``save_run`` says that the hyperparameters are missing."""
    import json
    import warnings

    import optax

    m = landscape.make_model("mlp", input_shape=(4,), num_outputs=3, hidden=(5,), seed=0)
    data = {"x": np.linspace(-1, 1, 40, dtype=np.float32).reshape(10, 4), "y": np.arange(10, dtype=np.int32) % 3}
    kw = dict(num_steps=4, batch_size=5, progress=False)

    sched = optax.linear_schedule(1e-2, 1e-3, 4)
    r = landscape.train(m, data, optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=sched, momentum=0.9),
                        **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        landscape.save_run(tmp_path / "inject", r)
    opt = json.loads((tmp_path / "inject" / "config.json").read_text())["optimizer"]
    assert opt["name"] == "custom"
    assert opt["hyperparameters"] == pytest.approx({"learning_rate": 1e-2, "momentum": 0.9})
    # the values of the last update (step 3 of 0..3)
    assert opt["hyperparameters_final"]["learning_rate"] == pytest.approx(float(sched(3)))

    adam = optax.adam(1e-3)
    cfg = {"name": "adam", "learning_rate": 1e-3}
    r = landscape.train(m, data, optimizer=adam, optimizer_config=cfg, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        landscape.save_run(tmp_path / "config", r)
    assert json.loads((tmp_path / "config" / "config.json").read_text())["optimizer"]["config"] == cfg

    r = landscape.train(m, data, optimizer=adam, **kw)
    with pytest.warns(UserWarning, match=r"landscape.save_run: the run was trained with an optax object whose "
                      r"hyperparameters cannot be read back.*optimizer_config=.*inject_hyperparams"):
        landscape.save_run(tmp_path / "plain", r)

    with pytest.raises(TypeError, match=r"save_run: run_dir must be a path .*got TrainResult \(the arguments "
                       r"are in the other order: save_run\(run_dir, result\)\)"):
        landscape.save_run(r, tmp_path / "swapped")
    with pytest.raises(TypeError, match="optimizer_config must be JSON-serialisable"):
        landscape.train(m, data, optimizer=adam, optimizer_config={"lr": object()}, **kw)
    with pytest.raises(ValueError, match="optimizer_config describes an optax optimizer object"):
        landscape.train(m, data, optimizer="adam", optimizer_config=cfg, **kw)
