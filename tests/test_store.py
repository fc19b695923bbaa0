"""The one store of resumable jobs (landscape.Store) and its chunk driver (run_chunks)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import landscape
from landscape import store as st


def test_bind_resume_and_differences(tmp_path):
    s = landscape.Store(tmp_path / "job").bind({"job": "x", "n": 7, "nested": {"a": 1}})
    s.save("a", {"v": np.arange(3)})
    assert s.has("a") and s.entries() == ["a"]
    again = landscape.Store(tmp_path / "job").bind({"job": "x", "n": 7, "nested": {"a": 1}})
    np.testing.assert_array_equal(again.load("a")["v"], np.arange(3))
    with pytest.raises(ValueError, match=r"another job \(differences: n: 7 -> 8; nested.a: 1 -> 2\)"):
        landscape.Store(tmp_path / "job").bind({"job": "x", "n": 8, "nested": {"a": 2}})
    assert s.has("a")  # refused, untouched


def test_overwrite_deletes_only_the_stores_own_entries(tmp_path):
    root = tmp_path / "r"
    s = landscape.Store(root).bind({"job": 1})
    s.save("section", {"v": np.ones(2)})
    s.save_dir("run", lambda d: (d / "f.txt").write_text("x"))
    s.child("train").bind({"split": "train"}).save("chunk-000000", {"v": np.ones(1)})
    (root / "notes.txt").write_text("mine")
    t = landscape.Store(root, overwrite=True).bind({"job": 2})
    assert t.entries() == [] and not (root / "run").exists() and not (root / "train").exists()
    assert (root / "notes.txt").read_text() == "mine"


def test_foreign_directories_are_refused_untouched(tmp_path):
    foreign = tmp_path / "paper"
    foreign.mkdir()
    (foreign / "eigenvalues.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="not empty and was not written by a landscape store"):
        landscape.Store(foreign, overwrite=True).bind({"job": 1})
    assert (foreign / "eigenvalues.npz").read_bytes() == b"x"
    landscape.Store(tmp_path / "empty").bind({"job": 1})  # new or empty: fine
    with pytest.raises(TypeError, match="store must be a path or a landscape.Store"):
        landscape.Store(3)
    with pytest.raises(ValueError, match="entry names are letters"):
        landscape.Store(tmp_path / "e").bind({}).save("../x", {"v": np.ones(1)})


def test_memory_addresses_do_not_break_resuming(tmp_path):
    def f():
        pass

    meta = {"loss": repr(f)}
    assert " at 0x" in meta["loss"]
    landscape.Store(tmp_path / "m").bind(meta)
    other_process = {"loss": re.sub(r"0x[0-9a-fA-F]+", "0x1234abcd", meta["loss"])}
    landscape.Store(tmp_path / "m").bind(other_process)  # the same job: no error
    stored = json.loads((tmp_path / "m" / "manifest.json").read_text())["meta"]
    assert " at 0x" not in stored["loss"]


def test_run_chunks_resumes_and_reports(tmp_path, capsys):
    computed = []

    def compute(ids):
        computed.extend(ids)
        return [{"v": np.full(2, i)} for i in ids]

    s = landscape.Store(tmp_path / "c").bind({"job": "chunks"})
    calls = {"n": 0}

    def interrupting(ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return compute(ids)

    with pytest.raises(KeyboardInterrupt):
        st.run_chunks(interrupting, 5, store=s, desc="job")
    assert "interrupted; 2/5 chunks are saved" in capsys.readouterr().err
    computed.clear()
    out = st.run_chunks(compute, 5, store=s, progress=True, desc="job")
    assert computed == [2, 3, 4] and [int(o["v"][0]) for o in out] == [0, 1, 2, 3, 4]
    assert "job: 2/5 loaded" in capsys.readouterr().err
    # ids in any order, in groups (e.g. one block per device)
    groups = []
    out = st.run_chunks(lambda ids: groups.append(list(ids)) or [{"v": np.ones(1)} for _ in ids],
                        [7, 3, 9], group=2)
    assert groups == [[7, 3], [9]] and len(out) == 3


def test_clear_deletes_only_what_the_manifest_names(tmp_path):
    root = tmp_path / "s"
    s = landscape.Store(root).bind({"job": 1})
    s.save("a", {"v": np.ones(1)})
    np.savez(root / "notes.npz", x=np.ones(1))  # the user's own file, in the store's directory
    (root / "nested").mkdir()
    landscape.Store(root / "nested").bind({"job": "another store"})  # not this store's child
    landscape.Store(root, overwrite=True).bind({"job": 2})
    assert not (root / "a.npz").exists()
    assert (root / "notes.npz").exists() and (root / "nested" / "manifest.json").exists()


def test_stores_tell_architectures_apart(tmp_path):
    """A ReLU and a tanh MLP of one seed have equal parameters; the apply_fn's description
    (a digest of the graph definition) differs, so a store of one refuses the other."""
    import jax

    from landscape import surface

    data = {"x": np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32),
            "y": np.arange(20) % 3}
    relu, tanh = (landscape.make_model("mlp", input_shape=(4,), num_outputs=3, hidden=(5,),
                                       activation=a) for a in ("relu", "tanh"))
    assert landscape.data_hash(relu.params) == landscape.data_hash(tanh.params)
    assert repr(relu.apply_fn) != repr(tanh.apply_fn)
    d = surface.random_direction(jax.random.key(0), relu.params)
    surface.slice_1d(landscape.make_loss_fn(relu), relu.params, data, d, alphas=[0.0, 1.0],
                     store=tmp_path / "s")
    with pytest.raises(ValueError, match="holds results of another job"):
        surface.slice_1d(landscape.make_loss_fn(tanh), tanh.params, data, d, alphas=[0.0, 1.0],
                         store=tmp_path / "s")


@pytest.mark.filterwarnings("ignore:.*quadrature node")  # 5 steps: a store test, not a density
def test_density_store_is_bound_to_the_operator(tmp_path):
    import jax
    import jax.numpy as jnp
    from jax.tree_util import Partial

    from landscape import hessian

    d = {"w": jnp.linspace(1.0, 20.0, 30)}
    like = jax.tree.map(jnp.zeros_like, d)
    kw = dict(like=like, key=jax.random.key(0), num_probes=2, num_steps=5, check=False,
              store=tmp_path / "slq")
    a = hessian.spectral_density(Partial(_diag_mv, d), **kw)
    b = hessian.spectral_density(Partial(_diag_mv, d), **kw)  # resumed: equal
    assert a.top_node == b.top_node
    with pytest.raises(ValueError, match="operator_arrays"):
        hessian.spectral_density(Partial(_diag_mv, jax.tree.map(lambda x: 100 * x, d)), **kw)


def _diag_mv(d, v):
    import jax

    return jax.tree.map(lambda a, x: a * x, d, v)


def test_a_rebound_directory_is_never_mixed(tmp_path):
    """A store whose directory another job re-bound refuses to write; files its manifest does
    not name (another job's, an older layout's) are never loaded as finished."""
    a = landscape.Store(tmp_path / "s").bind({"job": "a"})
    b = landscape.Store(tmp_path / "s", overwrite=True).bind({"job": "b"})
    with pytest.raises(RuntimeError, match="re-bound to another job"):
        a.save("chunk0", {"v": np.full(2, 111.0)})
    assert not b.has("chunk0") and b.entries() == []
    # a file with an entry's name that the manifest does not list is not a finished entry
    np.savez(tmp_path / "s" / f"{st.chunk_name(1)}.npz", v=np.ones(1))
    assert not b.has(st.chunk_name(1))
    out = st.run_chunks(lambda ids: [{"v": np.full(1, 5.0 + i)} for i in ids], 2, store=b)
    assert [float(x["v"][0]) for x in out] == [5.0, 6.0]


def test_clear_keeps_user_files_in_sub_stores_and_look_alike_hidden_files(tmp_path):
    root = landscape.Store(tmp_path / "r").bind({"job": "r"})
    sub = root.child("train").bind({"job": "sub"})
    sub.save("c0", {"v": np.ones(1)})
    (tmp_path / "r" / "train" / "notes.txt").write_text("mine")
    root.save("report", {"v": np.ones(1)})
    (tmp_path / "r" / ".report.json.swp").write_text("editor")  # not a temporary file of ours
    (tmp_path / "r" / ".report.npz.abcd1234.tmp").write_text("")  # an interrupted write of ours
    landscape.Store(tmp_path / "r", overwrite=True).bind({"job": "other"})
    left = sorted(p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*"))
    # the sub-store keeps its (emptied) manifest beside the user's file: still a store's
    # directory, so the next job binds it instead of refusing a "foreign" directory
    assert left == [".report.json.swp", "manifest.json", "train", "train/manifest.json", "train/notes.txt"]
    assert json.loads((tmp_path / "r" / "train" / "manifest.json").read_text())["entries"] == []
    root2 = landscape.Store(tmp_path / "r", overwrite=True).bind({"job": "third"})
    root2.child("train").bind({"job": "sub2"}).save("c0", {"v": np.zeros(1)})


def test_closures_are_told_apart_by_what_they_close_over(tmp_path):
    """Two closures of one factory have the same name; a store must not give one's results
    to the other."""
    import jax.numpy as jnp

    from landscape import surface

    def make(scale):
        def loss_fn(p, b):
            return scale * jnp.mean((b["x"] @ p["w"]) ** 2)

        return loss_fn

    assert st.stable_text(make(1.0)) == st.stable_text(make(1.0))
    assert st.stable_text(make(1.0)) != st.stable_text(make(100.0))
    params, d = {"w": jnp.ones(2)}, {"w": jnp.array([1.0, 0.0])}
    data = {"x": np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]}
    surface.slice_1d(make(1.0), params, data, d, alphas=np.linspace(-1, 1, 3), store=tmp_path / "s")
    with pytest.raises(ValueError, match="holds results of another job"):
        surface.slice_1d(make(100.0), params, data, d, alphas=np.linspace(-1, 1, 3), store=tmp_path / "s")


def test_function_descriptions_are_the_same_in_every_process_and_cheap():
    """Set constants print in hash-seed order; the description sorts them. Recursive and
    shared references are described once (no recursion error, no exponential blow-up)."""
    import functools
    import os
    import subprocess
    import sys

    code = (
        "from landscape import store\n"
        "def loss_fn(p, b):\n    return sum(1 for k in b if k in {'x', 'inputs', 'images'})\n"
        "print(store.stable_text(loss_fn))"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout
        for seed in (1, 2)  # these two seeds print the set in different orders
    }
    assert len(outs) == 1, outs

    def f(x):
        return table["f"](x)

    table = {"f": f}
    g = functools.partial(f, 1)
    assert "code:" in st.stable_text(f) and "code:" in st.stable_text(g)

    def compose(a, b):
        return lambda x: a(b(x))

    h = lambda x: x  # noqa: E731
    for _ in range(40):
        h = compose(h, h)
    assert "code:" in st.stable_text(h)  # 2**40 paths, each function described once
