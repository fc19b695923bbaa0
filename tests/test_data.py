"""Embedded data: digits, MNIST-1D (offline generator, cached, RNG state restored), teacher."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest

import landscape
from landscape import data as data_mod
from tests._util import run_python


def test_digits_split_and_standardisation():
    ds = landscape.load_data("digits")
    assert ds.train["x"].shape == (1437, 64) and ds.test["x"].shape == (360, 64)
    assert ds.train["x"].dtype == np.float32 and ds.train["y"].dtype == np.int32
    # stratified: every class's share within 1 example of proportional
    for c in range(10):
        n_tr, n_te = (ds.train["y"] == c).sum(), (ds.test["y"] == c).sum()
        assert abs(n_te - 0.2 * (n_tr + n_te)) <= 1.0
    # standardised with training statistics
    assert np.abs(ds.train["x"].mean(0)).max() < 1e-5
    sd = ds.train["x"].std(0)
    assert np.all((np.abs(sd - 1) < 1e-4) | (sd == 0))
    # fixed split: same result twice, and the images view holds the same numbers
    again = landscape.load_data("digits", flat=False)
    assert again.train["x"].shape == (1437, 8, 8, 1)
    np.testing.assert_array_equal(again.train["x"].reshape(1437, 64), ds.train["x"])
    assert ds.hash == landscape.load_data("digits").hash



def test_digits_cache_equals_scikit_learn(tmp_path, monkeypatch):
    """The cached split is scikit-learn's (built fresh, then read back), and a corrupt cache
    file is rebuilt, not trusted."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    monkeypatch.setenv("LANDSCAPE_CACHE_DIR", str(tmp_path))
    fresh = landscape.load_data("digits", seed=3, standardize=False)
    (cached,) = tmp_path.glob("digits-*.npz")
    again = landscape.load_data("digits", seed=3, standardize=False)
    d = load_digits()
    tr, te = train_test_split(np.arange(1797), test_size=0.2, stratify=d.target, random_state=3)
    for ds in (fresh, again):
        np.testing.assert_array_equal(ds.train["x"], d.data[np.sort(tr)].astype(np.float32))
        np.testing.assert_array_equal(ds.test["y"], d.target[np.sort(te)])
    cached.write_bytes(b"not an npz")
    rebuilt = landscape.load_data("digits", seed=3, standardize=False)
    np.testing.assert_array_equal(rebuilt.train["x"], fresh.train["x"])
    assert landscape.load_data("digits", seed=3).hash != fresh.hash  # standardised differs

def test_mnist1d_offline_cached_and_restores_global_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_CACHE_DIR", str(tmp_path))
    random.seed(123)
    np.random.seed(456)
    py_expected = random.random()
    np_expected = np.random.rand()
    random.seed(123)
    np.random.seed(456)
    ds = landscape.load_data("mnist1d", num_samples=500)
    # the generator reseeds the global RNGs; they must be restored
    assert random.random() == py_expected
    assert np.random.rand() == np_expected
    assert ds.train["x"].shape == (400, 40) and ds.test["x"].shape == (100, 40)
    assert set(np.unique(ds.train["y"])) <= set(range(10))
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    with np.load(cached[0], allow_pickle=False) as z:  # npz without pickle
        assert "x" in z.files
    again = landscape.load_data("mnist1d", num_samples=500)
    np.testing.assert_array_equal(again.train["x"], ds.train["x"])


def test_importing_landscape_does_not_import_matplotlib_or_mnist1d():
    out = run_python(
        "import sys, landscape, ntk, landscape.engine, landscape.train\n"
        "print('matplotlib' in sys.modules, 'mnist1d' in sys.modules)"
    )
    assert out.strip() == "False False"


def test_teacher_tasks():
    reg = landscape.load_data("teacher", num_train=50, num_test=10, input_dim=4, num_outputs=2)
    assert reg.task == "regression" and reg.train["y"].shape == (50, 2)
    cls = landscape.load_data(
        "teacher", num_train=200, num_test=10, task="classification", num_outputs=3
    )
    assert cls.train["y"].dtype == np.int32 and len(np.unique(cls.train["y"])) == 3
    same = landscape.load_data(
        "teacher", num_train=200, num_test=10, task="classification", num_outputs=3
    )
    np.testing.assert_array_equal(same.train["x"], cls.train["x"])
    with pytest.raises(ValueError, match="num_outputs >= 2"):
        landscape.load_data("teacher", task="classification", num_outputs=1)


def test_unknown_name_lists_registry():
    with pytest.raises(ValueError, match="digits, mnist1d, modular, sort, teacher"):
        landscape.load_data("cifar10")
    assert data_mod.data_names() == ["digits", "mnist1d", "modular", "sort", "teacher"]
    assert "sklearn" in sys.modules  # digits comes from scikit-learn's bundled files
