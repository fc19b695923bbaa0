"""landscape.diagnostics.audit_data: planted problems at known indices, exact robust z-scores,
clean digits, the JSON and text forms, bad inputs."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from landscape.diagnostics import AuditResult, audit_data
from landscape.diagnostics._audit import MAD_SCALE


def _planted(digits_data, dtype=np.float32):
    """Digits' training inputs with every kind of problem at known places."""
    x = np.array(digits_data.train["x"], dtype)
    y = np.array(digits_data.train["y"])
    x[3, 5] = np.nan
    x[100, :] = np.nan
    x[250, 7] = np.inf
    x[500, 10] = -np.inf
    x[:, 20] = 0.25  # a constant feature
    x[777, 42] = 1e3  # an extreme value in a feature with MAD > 0
    x[900, 7] = -1e3  # and in a sparse one (MAD = 0: most of pixel 7 is at its median)
    y[5], y[6] = 10, -1  # outside [0, 10)
    return x, y


def test_clean_digits_audit_ok(digits_data):
    res = audit_data(digits_data)
    assert res.ok and not res.errors
    assert res.splits == ("train", "test")
    # the only findings on the clean digits are constant pixels (border pixels: warnings)
    assert res.warnings and all("constant feature" in w for w in res.warnings)
    train = res.report["train"]
    assert train["num_examples"] == 1437 and res.report["test"]["num_examples"] == 360
    assert list(train["fields"]["x"]["constant_feature_indices"]) == [0, 24, 32, 39]
    # the largest robust |z| of the clean digits (a pixel mostly at 16 with MAD 1: a 0 is 10.1
    # robust sigmas away) is well under the default threshold of 20
    assert 10.0 < train["fields"]["x"]["max_abs_z"] < 11.0
    lab = train["labels"]
    assert lab["num_classes"] == 10 and sum(lab["counts"]) == 1437 and not lab["missing_classes"]
    assert lab["imbalance_ratio"] == max(lab["counts"]) / min(lab["counts"])
    assert res.examples(split="train").size == 0
    assert res.one_line().startswith("data audit: ok")
    json.dumps(res.to_dict(), allow_nan=False)


def test_planted_problems_at_their_indices(digits_data):
    x, y = _planted(digits_data)
    res = audit_data({"x": x, "y": y}, num_classes=10)
    assert not res.ok
    np.testing.assert_array_equal(res.examples("nan"), [3, 100])
    np.testing.assert_array_equal(res.examples("inf"), [250, 500])
    np.testing.assert_array_equal(res.examples("outlier"), [777, 900])
    np.testing.assert_array_equal(res.examples("label_out_of_range"), [5, 6])
    np.testing.assert_array_equal(res.examples(), [3, 5, 6, 100, 250, 500, 777, 900])
    np.testing.assert_array_equal(res.examples("nan", field="y"), [])
    fx = res.report["data"]["fields"]["x"]
    assert (fx["nan_values"], fx["inf_values"]) == (1 + 63, 2)  # x[100, 20] is the constant
    assert 20 in fx["constant_feature_indices"]
    assert {(w["example"], w["feature"]) for w in fx["worst"]} == {(777, 42), (900, 7)}
    # the robust z of the planted value, recomputed: (x - median) / (1.4826 MAD) over the
    # finite values of its feature
    col = x[:, 42].astype(np.float64)
    col = col[np.isfinite(col)]
    med = np.median(col)
    z = abs(1e3 - med) / (MAD_SCALE * np.median(np.abs(col - med)))
    got = next(w["z"] for w in fx["worst"] if w["feature"] == 42)
    np.testing.assert_allclose(got, z, rtol=1e-12)
    text = str(res)
    for words in (
        "NaN in 2 examples",
        "Inf in 2 examples",
        "extreme values",
        "labels outside [0, 10)",
        "examples 5, 6",
        "constant feature",
    ):
        assert words in text, words
    assert "problems" in res.one_line()


def test_float32_and_float64_inputs_agree(digits_data):
    a = audit_data(dict(zip("xy", _planted(digits_data, np.float32), strict=True)), num_classes=10)
    b = audit_data(dict(zip("xy", _planted(digits_data, np.float64), strict=True)), num_classes=10)
    for kind in ("nan", "inf", "outlier", "label_out_of_range"):
        np.testing.assert_array_equal(a.examples(kind), b.examples(kind))


def test_sparse_feature_rule():
    """MAD = 0 (most values at the median): the scale is 1.4826 times the median of the nonzero
    deviations; a legitimately rare value is not an outlier, a planted one is."""
    rng = np.random.default_rng(0)
    n = 400
    x = np.zeros((n, 2))
    active = rng.choice(n, 40, replace=False)
    x[active, 0] = rng.normal(5.0, 1.0, 40)
    x[:, 1] = rng.normal(size=n)
    res = audit_data({"x": x})
    assert res.ok and res.report["data"]["fields"]["x"]["zero_mad_features"] == 1
    x[active[0], 0] = 300.0
    res = audit_data({"x": x})
    np.testing.assert_array_equal(res.examples("outlier"), [active[0]])
    dev = np.abs(x[:, 0])
    scale = MAD_SCALE * np.median(dev[dev > 0])
    np.testing.assert_allclose(
        res.report["data"]["fields"]["x"]["worst"][0]["z"], 300.0 / scale, rtol=1e-12
    )
    # the threshold is a setting: at |z| > 1e4 the planted value passes
    assert audit_data({"x": x}, z_threshold=1e4).ok


def test_label_balance_and_invalid_labels():
    y = np.array([0] * 100 + [1] * 100 + [2] * 5, np.int32)
    x = np.arange(len(y), dtype=np.float32)[:, None]
    res = audit_data((x, y), num_classes=4)
    assert res.ok  # imbalance and a missing class are warnings
    lab = res.report["data"]["labels"]
    assert list(lab["counts"]) == [100, 100, 5, 0] and lab["imbalance_ratio"] == 20.0
    assert list(lab["missing_classes"]) == [3]
    assert any("class imbalance 20" in w for w in res.warnings)
    assert any("classes never occur" in w for w in res.warnings)
    assert audit_data((x, y), num_classes=3, imbalance_threshold=50).warnings == ()
    # float labels: a fractional one is not an integer, a NaN one is non-finite
    yf = y.astype(np.float32)
    yf[7], yf[8] = 2.5, np.nan
    res = audit_data({"x": x, "y": yf}, task="classification")
    np.testing.assert_array_equal(res.examples("label_non_integer"), [7])
    np.testing.assert_array_equal(res.examples("nan", field="y"), [8])
    # one-hot labels: a row with a negative entry or a sum other than 1 is invalid
    oh = np.eye(3, dtype=np.float32)[y]
    oh[11] = [0.5, 0.6, 0.0]
    oh[12, 0] = -1.0
    res = audit_data({"x": x, "y": oh}, task="classification")
    np.testing.assert_array_equal(res.examples("label_invalid"), [11, 12])
    # regression targets are scored as features
    t = np.linspace(0, 1, len(y))[:, None]
    t[9] = 1e6
    res = audit_data({"x": x, "y": t})
    assert res.report["data"]["task"] == "regression"
    np.testing.assert_array_equal(res.examples("outlier", field="y"), [9])


def test_duplicates_and_conflicting_labels():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = rng.integers(0, 3, 60).astype(np.int32)
    x[10] = x[20] = x[3]
    y[10] = y[3]
    y[20] = (y[3] + 1) % 3
    x[50] = x[40]
    y[50] = y[40]
    res = audit_data({"x": x, "y": y}, duplicates=True)
    assert res.ok  # duplicates are warnings
    np.testing.assert_array_equal(res.examples("duplicate"), [10, 20, 50])
    np.testing.assert_array_equal(res.examples("label_conflict"), [3, 10, 20])
    assert res.report["data"]["duplicates"]["duplicate_groups"] == 2
    assert "duplicates" not in audit_data({"x": x, "y": y}).report["data"]


def test_blocks_device_arrays_and_round_trip(digits_data, tmp_path):
    """A tiny memory budget (3 features per block) and device arrays give the same result."""
    x, y = _planted(digits_data)
    whole = audit_data({"x": x, "y": y}, num_classes=10, duplicates=True)
    n = len(y)
    small = audit_data(
        (jnp.asarray(x), jnp.asarray(y)), num_classes=10, duplicates=True, memory_budget=3 * 24 * n
    )
    a, b = whole.to_dict(), small.to_dict()
    a["settings"].pop("memory_budget"), b["settings"].pop("memory_budget")
    assert a == b
    path = whole.save(tmp_path / "audit.npz")
    back = AuditResult.load(path)
    assert back.ok == whole.ok and back.errors == whole.errors
    np.testing.assert_array_equal(back.examples("outlier"), whole.examples("outlier"))


def test_bad_inputs(digits_data):
    name = "landscape.diagnostics.audit_data"
    with pytest.raises(TypeError, match=f"{name}: data must be a landscape.Dataset"):
        audit_data(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="same number of examples"):
        audit_data({"x": np.zeros((3, 2)), "y": np.zeros(4)})
    with pytest.raises(ValueError, match="empty"):
        audit_data({"x": np.zeros((0, 2))})
    with pytest.raises(TypeError, match="nested fields"):
        audit_data({"x": {"a": np.zeros((3, 2))}})
    for kw, err, words in (
        ({"z_threshold": 0}, ValueError, "z_threshold must be > 0"),
        ({"z_threshold": np.nan}, ValueError, "z_threshold must be finite"),
        ({"imbalance_threshold": 0.5}, ValueError, "imbalance_threshold must be >= 1"),
        ({"num_classes": 0}, ValueError, "num_classes must be > 0"),
        ({"task": "ranking"}, ValueError, "task must be one of"),
        ({"duplicates": 1}, TypeError, "duplicates must be a bool"),
        ({"memory_budget": -1}, ValueError, "memory_budget must be > 0"),
        ({"target_key": 3}, TypeError, "target_key must be a str"),
    ):
        with pytest.raises(err, match=words):
            audit_data(digits_data, **kw)
    res = audit_data(digits_data)
    with pytest.raises(ValueError, match="split is required"):
        res.examples("nan")
    with pytest.raises(ValueError, match="kind must be one of"):
        res.examples("nans", split="train")
