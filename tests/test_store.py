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
