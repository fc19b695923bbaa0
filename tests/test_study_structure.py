"""The study's structure section (issue 15's report section): the class structure of the trained
network's Gauss-Newton matrix, lottery tickets against their controls and instability to SGD
noise, on a tiny MLP; the numbers it reports agree with the other sections and with direct calls
of the library, a rerun loads it, and bad settings are one message naming the key."""

from __future__ import annotations

import contextlib
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest

from landscape import cli

CONFIG = """
seed = 2
[model]
name = "mlp"
[model.settings]
hidden = [16]
[data]
name = "digits"
[train]
optimizer = "sgd"
learning_rate = 0.2
epochs = 1
batch_size = 128
weight_decay = 0.01
[analyses]
run = ["structure"]
[structure]
class_examples = 64
rounds = 1
rate = 0.3
spawn_percent = [0, 50]
points = 3
{extra}
"""


def _main(argv) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue())


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    root = tmp_path_factory.mktemp("structure")
    (root / "cfg.toml").write_text(CONFIG.format(extra=""))
    out = root / "run"
    first = _main(["study", str(root / "cfg.toml"), "--out", str(out), "--no-progress"])
    assert first.rc == 0, first.out + first.err
    results = json.loads((out / "results.json").read_text())
    again = _main(["study", str(root / "cfg.toml"), "--out", str(out), "--no-progress"])
    return SimpleNamespace(
        root=root,
        out=out,
        first=first,
        again=again,
        results=results,
        again_results=json.loads((out / "results.json").read_text()),
    )


def test_structure_section_numbers(structured):
    """Every part ran, its checks passed, and its numbers hold together: the dense round 0 of
    the pruning is the study's own training (same initialisation, seed and settings: the same
    test accuracy to the last digit), the sparsity is 1 - (1 - rate)^r, the tables match the
    values, and the class-mean part has rank C and C - 1 centred."""
    sec = structured.results["sections"]["structure"]
    v = sec["values"]
    assert sec["status"] == "computed" and all(c["passed"] is True for c in sec["checks"]), sec
    assert {c["name"] for c in sec["checks"]} == {"class-mean ranks", "pruned fraction"}
    trained = structured.results["sections"]["training"]["values"]
    assert v["ticket_dense"] == pytest.approx(trained["test_accuracy"], abs=1e-4)
    assert v["sparsity"] == pytest.approx([0.0, 0.3], abs=2e-3)
    assert (v["num_classes"], v["class_rank"], v["class_rank_centred"]) == (10, 10, 9)
    assert 0 < v["cross_rank"] <= 90 and v["class_examples"] == 64
    assert len(v["ggn_top"]) == v["class_k"] == 15
    assert v["num_outliers"] == sum(x > v["bulk_edge"] for x in v["ggn_top"])
    # the weight decay lifts the bulk edge (review: the centred rank came out C in float32)
    assert "weight decay" in v["bulk_edge_kind"]
    att = [v[f"attribution_{p}"] for p in ("class", "cross", "within", "penalty")]
    assert all(0 <= a <= 1 for a in att) and sum(att) == pytest.approx(1, abs=1e-3)
    tickets, ins = sec["tables"][1], sec["tables"][2]
    assert tickets["columns"] == ["round", "sparsity", "ticket", "random_mask", "reinit"]
    assert [r[1] for r in tickets["rows"]] == v["sparsity"]
    assert (tickets["rows"][0][2], tickets["rows"][-1][2]) == (v["ticket_dense"], v["ticket_last"])
    assert tickets["rows"][-1][3:] == [v["random_mask_last"], v["reinit_last"]]
    steps = structured.results["sections"]["training"]["values"]["steps"]
    assert v["spawn_steps"] == [0, steps // 2] and v["structure_steps"] == steps
    assert [r[1] for r in ins["rows"]] == v["barrier_dense"]
    assert [r[2] for r in ins["rows"]] == v["barrier_ticket"]
    assert v["barrier_max"] == max(v["barrier_dense"] + v["barrier_ticket"])
    assert all(b >= 0 for b in v["barrier_dense"] + v["barrier_ticket"])
    for fig in sec["figures"]:
        assert (structured.out / fig["file"]).stat().st_size > 10_000, fig
    html = (structured.out / "report.html").read_text()
    assert 'id="structure"' in html and "Global structure" in html
    assert "{" not in sec["text"].format(**v)  # every placeholder of the text has its value


def test_structure_matches_direct_calls(structured):
    """The class decomposition equals a direct call on the saved trained network (same key: the
    study's documented key 40)."""
    import jax

    import landscape
    from landscape import hessian
    from landscape.study._run import balanced_subset, study_key

    v = structured.results["sections"]["structure"]["values"]
    ds = landscape.load_data("digits")
    run = landscape.load_run(
        structured.out / "sections" / "training" / "run",
        model=landscape.make_model(
            "mlp", input_shape=ds.input_shape, num_outputs=10, hidden=(16,), seed=2
        ),
    )
    idx = balanced_subset(ds.train["y"], 64)
    counts = np.bincount(np.asarray(ds.train["y"])[idx], minlength=10)
    assert counts.max() - counts.min() <= 1  # balanced over the classes
    sub = jax.tree.map(lambda a: a[idx], ds.train)
    dec = hessian.class_decomposition(
        landscape.make_loss_fn(run.model, weight_decay=0.01),
        run.model.params,
        sub,
        key=study_key(2, 40),
        batch_size=64,
    )
    np.testing.assert_allclose(v["ggn_top"], np.asarray(dec.values), rtol=1e-5)
    assert v["num_outliers"] == dec.num_outliers and v["cross_rank"] == dec.cross_rank


def test_balanced_subset_of_sorted_labels():
    """Labels sorted by class (a user's .npz file): the subset still has every class."""
    from landscape.study._run import balanced_subset

    y = np.repeat(np.arange(4), [5, 3, 7, 1])
    idx = balanced_subset(y, 9)
    assert sorted(np.bincount(y[idx]).tolist()) == [1, 2, 3, 3]
    assert np.all(np.diff(idx) > 0) and len(set(idx.tolist())) == 9
    assert balanced_subset(y, 100).tolist() == list(range(16))


def test_structure_rerun_loads_and_bad_settings(structured, tmp_path):
    again = structured.again_results["sections"]["structure"]
    assert structured.again.rc == 0 and again["status"] == "loaded", structured.again.out
    assert again["values"] == structured.results["sections"]["structure"]["values"]
    for old, new, words in (
        ("rate = 0.3", "rate = 1.0", ["structure.rate", "< 1"]),
        ("[0, 50]", "[0, 0]", ["spawn_percent", "distinct"]),
        ("[0, 50]", "[100]", ["spawn_percent", "below 100"]),
        ("{extra}", "rewind_percent = -1", ["rewind_percent", ">= 0"]),
        ("{extra}", "controls = ['none']", ["controls", "random_mask, reinit"]),
    ):
        (tmp_path / "bad.toml").write_text(CONFIG.replace(old, new).replace("{extra}", ""))
        extra = new
        r = _main(
            ["study", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "o"), "--no-progress"]
        )
        assert r.rc == 2 and "Traceback" not in r.err, (extra, r.err)
        assert all(w in r.err for w in words), (extra, r.err)


def test_study_accepts_a_transformer():
    """``model.name = "transformer"`` (issue 16): parsed, its settings checked against the
    model's signature, built on patches of the digits images (traced, not run: the build and
    the forward pass under ``jax.eval_shape``, so nothing is compiled)."""
    import jax

    import landscape
    from landscape import study
    from landscape.study import _resolve

    text = (
        '[model]\nname = "transformer"\n[model.settings]\nwidth = 8\ndepth = 1\nheads = 2\n'
        'patch = 4\n[data]\nname = "digits"\n[data.settings]\nflat = false\n'
    )
    cfg = study.parse_config(text)
    data = landscape.load_data("digits", flat=False)
    built = {}

    def build(x):
        model, built["desc"] = _resolve.build_model(cfg, data, seed=0)
        built["spec"] = model.spec
        return model.apply_fn(model.params, model.state, x)[0]

    out = jax.eval_shape(build, data.train["x"][:3])
    assert built["desc"]["name"] == "transformer" and built["spec"]["kwargs"]["patch"] == 4
    assert out.shape == (3, 10)
    bad = study.parse_config(text.replace("heads = 2", "num_heads = 2"))
    with pytest.raises(study.ConfigError, match="num_heads"):
        _resolve.build_model(bad, data, seed=0)
