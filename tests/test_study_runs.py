"""What a study does with what it finds on disk: one fingerprint per trained network (``study``
and ``analyse`` load each other's sections), a changed factory retrains instead of failing,
``analyse`` on a bare run saved by ``landscape.save_run`` (no history, no training settings: a
second network cannot be trained, so connect is left out at the start), damaged files, and a
diverged training: one line and exit status 2, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from landscape import cli

FACTORY = '''
from flax import nnx


class Net(nnx.Module):
    def __init__(self, din, width, dout, rngs):
        self.l1 = nnx.Linear(din, width, rngs=rngs)
        self.l2 = nnx.Linear(width, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.{act}(self.l1(x)))


def make_net(scale=1, *, input_shape, num_outputs, seed=0):
    return Net(input_shape[0], {width} * scale, num_outputs, nnx.Rngs(seed))


class DropNet(nnx.Module):
    """With dropout: NNX keeps its random state (typed PRNG keys) in the model's state."""

    def __init__(self, din, dout, rngs):
        self.l1 = nnx.Linear(din, 8, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.l2 = nnx.Linear(8, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.l1(x))))


def make_dropnet(scale=1, *, input_shape, num_outputs, seed=0):
    return DropNet(input_shape[0], num_outputs, nnx.Rngs(seed))
'''

CONFIG = '''
seed = 1
[model]
name = "tnets.models:make_net"
[model.settings]
scale = 1
[data]
name = "digits"
[train]
optimizer = "sgd"
learning_rate = {lr}
epochs = 1
batch_size = 256
sharpness_every = 0
[analyses]
run = ["hessian"]
[hessian]
k = 1
max_hvps = 4
density_probes = 1
density_steps = 4
'''


def _main(argv) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue())


def _project(root: Path, *, act="tanh", width=8, lr=0.1) -> Path:
    (root / "tnets").mkdir(exist_ok=True)
    (root / "tnets" / "__init__.py").write_text("")
    (root / "tnets" / "models.py").write_text(FACTORY.format(act=act, width=width))
    for name in [m for m in sys.modules if m == "tnets" or m.startswith("tnets.")]:
        del sys.modules[name]  # a new process would import the edited factory afresh
    (root / "cfg.toml").write_text(CONFIG.format(lr=lr))
    return root / "cfg.toml"


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = _project(root)
    out = root / "out"
    first = _main(["study", str(cfg), "--out", str(out), "--no-progress"])
    assert first.rc == 0, first.err
    return SimpleNamespace(root=root, cfg=cfg, out=out, first=first,
                           results=json.loads((out / "results.json").read_text()))


def test_the_data_is_audited_before_training(studied):
    audit = studied.results["data"]["audit"]
    assert audit["errors"] == [] and any("constant features" in w for w in audit["warnings"])
    assert "data audit: ok" in studied.first.out
    saved = json.loads((studied.out / "data-audit.json").read_text())
    assert saved["ok"] is True and saved["report"]["train"]["num_examples"] == 1437


def test_analyse_loads_the_study_sections(studied):
    """study and analyse fingerprint the trained network the same way (by value)."""
    r = _main(["analyse", str(studied.out), "--only", "hessian", "--no-progress"])
    assert r.rc == 0, r.err
    res = json.loads((studied.out / "results.json").read_text())
    assert res["sections"]["hessian"]["status"] == "loaded", r.out
    assert (res["sections"]["hessian"]["digest"]
            == studied.results["sections"]["hessian"]["digest"])
    assert res["sections"]["training"]["digest"] == studied.results["sections"]["training"]["digest"]


def test_a_changed_factory_retrains_instead_of_failing(studied, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(studied.root, root)
    # analyse sees the code change too (same shapes, another function): not the old numbers
    cfg = _project(root, act="relu")  # (the copy's study.json names the original project)
    r = _main(["analyse", str(root / "out"), "--config", str(cfg), "--only", "hessian",
               "--no-progress"])
    assert r.rc == 0, r.err
    assert "hessian: its inputs changed" in r.out and "the model's code" in r.out, r.out
    for change in ({"width": 12}, {"act": "relu"}):  # new shapes; same shapes, new function
        cfg = _project(root, **change)
        r = _main(["study", str(cfg), "--out", str(root / "out"), "--only", "training",
                   "--no-progress"])
        assert r.rc == 0, r.err
        assert "training: its inputs changed" in r.out and "the model's code" in r.out, r.out
        res = json.loads((root / "out" / "results.json").read_text())
        assert res["sections"]["training"]["status"] == "computed"
        assert "Traceback" not in r.err


def _cheap(ctx, parts):
    """A stand-in section (the real ones are tested elsewhere): one stored part."""
    import numpy as np

    parts.get("part", lambda: {"a": np.ones(2)})
    parts.section.values = {"top_eigenvalue_trained": 1.0}
    return parts.section


def test_analyse_a_bare_saved_run(tmp_path, monkeypatch):
    import landscape
    from landscape.study import _run

    for name in ("surface", "ntk"):
        monkeypatch.setitem(_run.SECTION_FUNCTIONS, name, _cheap)

    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,), seed=0)
    run = tmp_path / "bare"
    landscape.save_run(run, model, config={"data": {"name": "digits"}})
    argv = ["analyse", str(run), "--quick", "--no-progress"]
    first = _main(argv)
    assert first.rc == 0, first.err
    assert "connect left out: it needs a second network" in first.out
    res = json.loads((run / "results.json").read_text())
    assert list(res["sections"]) == ["training", "hessian", "surface", "ntk"]
    assert res["sections"]["training"]["figures"] == []  # no history: no training figure
    assert "records no training history" in res["sections"]["training"]["text"]
    assert res["config"]["train"]["source"].startswith("the saved run")  # not [train] defaults
    # the second run reads study.json back: still no second network, everything loaded
    again = _main(argv)
    assert again.rc == 0, again.err
    assert "connect left out" in again.out
    res = json.loads((run / "results.json").read_text())
    assert {s["status"] for s in res["sections"].values()} == {"loaded"}  # the run too
    # asked for explicitly: refused at the start, with what to do
    r = _main(["analyse", str(run), "--only", "connect", "--no-progress"])
    assert r.rc == 2 and "--other RUN_DIR" in r.err and "Traceback" not in r.err
    r = _main(["analyse", str(run), "--only", "connect", "--other", str(tmp_path / "nope")])
    assert r.rc == 2 and "not a run directory" in r.err
    # a damaged results.json: the report command says so in one line
    (run / "results.json").write_text('{"sections": [1, 2]')
    r = _main(["report", str(run)])
    assert r.rc == 2 and "damaged" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    # a damaged part of a section is computed again, not a traceback
    part = next((run / "sections" / "hessian").glob("*.npz"))
    part.write_bytes(b"not a zip file")
    r = _main(["analyse", str(run), "--only", "hessian", "--quick", "--no-progress"])
    assert r.rc == 0, r.err
    assert "could not be read back" in r.err and "computing it again" in r.err


def test_a_failing_section_keeps_the_others(tmp_path, monkeypatch):
    from landscape.study import _run

    def broken(ctx, parts):
        raise RuntimeError("simulated failure")

    monkeypatch.setitem(_run.SECTION_FUNCTIONS, "surface", broken)
    cfg = _project(tmp_path)
    text = cfg.read_text().replace('run = ["hessian"]', 'run = ["surface", "hessian"]')
    cfg.write_text(text + "[surface]\npoints_1d = 3\npoints_2d = 0\ninterp_points = 3\n")
    r = _main(["study", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"])
    assert r.rc == 1, (r.out, r.err)
    assert "1 section(s) failed (surface)" in r.err and "simulated failure" in r.err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["sections"]["surface"]["status"] == "failed"
    assert res["sections"]["hessian"]["status"] == "computed"
    assert "RuntimeError: simulated failure" in (tmp_path / "out" / "errors" / "surface.txt").read_text()
    assert "This section failed" in (tmp_path / "out" / "report.html").read_text()


def test_a_model_with_dropout_trains_and_is_fingerprinted(tmp_path):
    cfg = _project(tmp_path)
    cfg.write_text(cfg.read_text().replace("make_net", "make_dropnet"))
    argv = ["study", str(cfg), "--out", str(tmp_path / "out"), "--only", "training",
            "--no-progress"]
    first = _main(argv)
    assert first.rc == 0, first.err
    again = _main(argv)
    assert again.rc == 0 and "(loaded)" in again.out, again.out


def test_damaged_records_and_refused_arguments(studied, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(studied.out, d)
    (d / "sections" / "hessian" / "manifest.json").write_text("garbage")
    r = _main(["analyse", str(d), "--only", "hessian", "--no-progress"])
    assert r.rc == 0, r.err
    assert "hessian: its record" in r.out and "is damaged" in r.out, r.out
    r = _main(["analyse", str(d), "--data", "teacher", "--no-progress"])
    assert r.rc == 2 and "is a study's directory and records its data" in r.err, r.err
    (d / "results.json").write_text("{}")
    r = _main(["report", str(d)])
    assert r.rc == 2 and "damaged" in r.err, r.err


def test_the_printed_config_leaves_the_sizes_to_the_modes(tmp_path, capsys):
    from landscape import study

    assert cli.main(["study", "--print-config"]) == 0
    (tmp_path / "c.toml").write_text(capsys.readouterr().out)
    for mode in ("quick", "default", "full"):
        assert (study.load_config(tmp_path / "c.toml", mode=mode).values
                == study.parse_config("", mode=mode).values), mode


def test_connect_follows_the_training_that_makes_its_second_network(tmp_path, monkeypatch):
    """analyse --config trains the second network with the config's [train]: connect's
    fingerprint holds those settings (a stand-in connect: no training here)."""
    import landscape
    from landscape.study import _run

    monkeypatch.setitem(_run.SECTION_FUNCTIONS, "connect", _cheap)
    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(8,), seed=0)
    landscape.save_run(tmp_path / "run", model, config={"data": {"name": "digits"}})
    text = '[model]\nname = "mlp"\n[model.settings]\nhidden = [8]\n[train]\nlearning_rate = {}\n'
    argv = ["analyse", str(tmp_path / "run"), "--config", str(tmp_path / "c.toml"), "--only",
            "connect", "--no-progress"]
    (tmp_path / "c.toml").write_text(text.format(0.1))
    assert _main(argv).rc == 0
    (tmp_path / "c.toml").write_text(text.format(0.2))
    r = _main(argv)
    assert r.rc == 0, r.err
    assert "connect: its inputs changed" in r.out and "learning_rate: 0.1 -> 0.2" in r.out, r.out


def test_diverged_training_is_one_line_and_exit_2(tmp_path):
    cfg = _project(tmp_path, act="relu", lr=1e30)
    r = _main(["study", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"])
    assert r.rc == 2, (r.out, r.err)
    assert "training diverged at step" in r.err and "learning_rate" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
