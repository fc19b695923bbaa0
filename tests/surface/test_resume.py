"""Resumable grids: interrupt a run after some chunks, restart, check nothing finished is
recomputed and the result equals an uninterrupted run; settings stored with the chunks."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import landscape
from landscape import grid
from landscape.surface import SliceResult, random_directions, slice_2d
from tests.surface.conftest import tiny_mlp


def test_interrupted_grid_resumes_without_recomputing(tmp_path, small_digits, monkeypatch):
    train, test = small_digits
    m = tiny_mlp(jnp.float32)
    loss_fn = landscape.make_loss_fn(m)
    d1, d2 = random_directions(jax.random.key(0), m.params, 2)
    kw = dict(
        alphas=np.linspace(-1, 1, 5), betas=np.linspace(-1, 1, 5), test_data=test,
        settings=landscape.GridSettings(chunk_size=4),
    )  # 25 points: 7 chunks per split
    full = slice_2d(loss_fn, m.params, train, (d1, d2), **kw)

    run = tmp_path / "run"
    real_save = landscape.Store.save
    saved = []

    def save_then_interrupt(self, name, value, **kw):
        real_save(self, name, value, **kw)
        saved.append(name)
        if len(saved) == 3:
            raise KeyboardInterrupt  # the user stops the job after 3 finished chunks

    monkeypatch.setattr(landscape.Store, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        slice_2d(loss_fn, m.params, train, (d1, d2), store=run, **kw)
    monkeypatch.setattr(landscape.Store, "save", real_save)
    assert sorted(p.name for p in (run / "train").glob("chunk-*.npz")) == [
        "chunk-000000.npz",
        "chunk-000001.npz",
        "chunk-000002.npz",
    ]
    assert not (run / "result.npz").exists()

    # the settings are stored with the chunks
    manifest = json.loads((run / "train" / "manifest.json").read_text())["meta"]
    assert manifest["directions"][0]["key_data"] == list(d1.spec["key_data"])
    assert manifest["directions"][0]["norm"] == "filter"
    assert manifest["directions"][1]["bias_bn"] == "zero"
    assert manifest["data_hash"] == landscape.data_hash(train)
    assert manifest["settings"]["bn"] == "fixed" and manifest["chunk_size"] == 4
    assert manifest["split"] == "train" and manifest["job"] == "landscape.surface.slice_2d"

    calls = []
    real_jit = grid._points_jit

    def counting(*args, **kwargs):
        calls.append(1)
        return real_jit(*args, **kwargs)

    monkeypatch.setattr(grid, "_points_jit", counting)
    resumed = slice_2d(loss_fn, m.params, train, (d1, d2), store=run, **kw)
    assert len(calls) == (7 - 3) + 7  # train: 4 chunks left; test: all 7
    for split in ("train", "test"):
        for k in full.train:
            np.testing.assert_array_equal(getattr(resumed, split)[k], getattr(full, split)[k])
    saved_result = landscape.Store(run).load("result", SliceResult)
    np.testing.assert_array_equal(saved_result.loss, full.loss)

    calls.clear()  # a finished run is read back, nothing recomputed
    again = slice_2d(loss_fn, m.params, train, (d1, d2), store=run, **kw)
    assert not calls
    np.testing.assert_array_equal(again.test["accuracy"], full.test["accuracy"])

    # other settings in the same directory: refused, naming the difference
    with pytest.raises(ValueError, match="holds results of another job"):
        slice_2d(
            loss_fn,
            m.params,
            train,
            (d1, d2),
            store=run,
            **{**kw, "alphas": np.linspace(-2, 2, 5)},
        )
    e1, _ = random_directions(jax.random.key(9), m.params, 2)
    with pytest.raises(ValueError, match="directions"):
        slice_2d(loss_fn, m.params, train, (e1, d2), store=run, **kw)
