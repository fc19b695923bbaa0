"""``landscape study`` on a researcher's own model: a factory in a package of theirs, a TOML
config, two analyses; interrupted (a real SIGINT in a subprocess, then the test-only switch
after the first analysis), resumed without recomputing what was finished, and a changed setting
recomputing only its section. Bad configs: one clear message, exit status 2, no traceback."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from landscape import cli, study
from tests._util import REPO

FACTORY = '''
from flax import nnx


class Net(nnx.Module):
    """A researcher's own two-layer tanh network."""

    def __init__(self, din, width, dout, rngs):
        self.l1 = nnx.Linear(din, width, rngs=rngs)
        self.l2 = nnx.Linear(width, dout, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.tanh(self.l1(x)))


def make_net(width=16, *, input_shape, num_outputs, seed=0):
    return Net(input_shape[0], width, num_outputs, nnx.Rngs(seed))


def not_a_model(**kwargs):
    return "a string"
'''

CONFIG = '''
title = "my tanh net"
seed = 3

[model]
name = "mynets.models:make_net"
[model.settings]
width = 16

[data]
name = "digits"

[train]
optimizer = "momentum"
learning_rate = 0.05
optimizer_settings = {{ momentum = 0.9 }}
epochs = 2
batch_size = 128

[analyses]
run = ["hessian", "surface"]

[hessian]
k = 2
max_hvps = 6
density_probes = 2
density_steps = 10

[surface]
points_1d = {points_1d}
points_2d = 0
interp_points = 5
'''


def _write_config(root: Path, **kw) -> Path:
    kw.setdefault("points_1d", 5)
    (root / "cfg.toml").write_text(CONFIG.format(**kw))
    return root / "cfg.toml"


def _files(d: Path) -> dict:
    """Every file under ``d`` with its modification time and content hash."""
    return {p.relative_to(d).as_posix(): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*")) if p.is_file()}


def _main(argv) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return SimpleNamespace(rc=rc, out=out.getvalue(), err=err.getvalue())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A researcher's project: a package ``mynets`` beside the config (not installed, not on
    sys.path: the config's directory is searched)."""
    root = tmp_path_factory.mktemp("project")
    (root / "mynets").mkdir()
    (root / "mynets" / "__init__.py").write_text("")
    (root / "mynets" / "models.py").write_text(FACTORY)
    return root


@pytest.fixture(scope="module")
def own_study(project):
    """The study run four times into one directory: stopped by a real SIGINT after training
    (a subprocess), stopped by the test-only switch after the Hessian section, completed, and
    run again with a changed surface setting."""
    cfg = _write_config(project)
    out = project / "run"
    argv = ["study", str(cfg), "--out", str(out), "--no-progress"]
    # 1. a real Ctrl-C once training is saved (the Hessian section is compiling)
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape", *argv], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if ignored else None)
    lines, sent = [], False
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("  training "):
            proc.send_signal(signal.SIGINT)
            sent = True
            break
    rest, err = proc.communicate(timeout=180)
    sigint = SimpleNamespace(rc=proc.returncode, sent=sent, out="".join(lines) + rest, err=err)
    # 2. the test-only switch: Ctrl-C right after the Hessian section is saved
    os.environ[study.INTERRUPT_ENV] = "hessian"
    try:
        switched = _main(argv)
    finally:
        del os.environ[study.INTERRUPT_ENV]
    after_hessian = _files(out / "sections" / "hessian")
    # 3. resumed to the end
    resumed = _main(argv)
    results = json.loads((out / "results.json").read_text())
    hessian_files = _files(out / "sections" / "hessian")
    surface_files = _files(out / "sections" / "surface")
    figures = _mtimes(out / "figures")
    # 4. a changed setting of the second section
    _write_config(project, points_1d=7)
    changed = _main(argv)
    return SimpleNamespace(out=out, argv=argv, sigint=sigint, switched=switched,
                           after_hessian=after_hessian, resumed=resumed, results=results,
                           hessian_files=hessian_files, surface_files=surface_files,
                           figures=figures, changed_figures=_mtimes(out / "figures"),
                           changed=changed, changed_results=json.loads((out / "results.json").read_text()))


def _mtimes(d):
    return {p.name: p.stat().st_mtime_ns for p in d.iterdir() if not p.name.startswith(".")}


def test_a_real_ctrl_c_exits_130_with_one_line(own_study):
    r = own_study.sigint
    assert r.sent, r.out + r.err
    assert r.rc == cli.INTERRUPTED, r.err
    assert "Traceback" not in r.err, r.err
    lines = [ln for ln in r.err.splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and r.err.rstrip().endswith(lines[0]), r.err
    assert "saved training in" in lines[0] and "resume with: python -m landscape study" in lines[0]


def test_interrupted_study_resumes_without_recomputing(own_study):
    s = own_study.switched
    assert s.rc == cli.INTERRUPTED and "saved training, hessian in" in s.err, s.err
    assert "(loaded)" in s.out.split("[training]")[1].split("\n[")[0]  # the SIGINT run's training
    r = own_study.resumed
    assert r.rc == 0, r.err
    sections = own_study.results["sections"]
    assert sections["training"]["status"] == "loaded"
    assert sections["hessian"]["status"] == "loaded"
    assert sections["surface"]["status"] == "computed"
    # the finished section's files are untouched by the resumed run
    assert own_study.hessian_files == own_study.after_hessian
    assert "hessian" in r.out and "checks" in r.out and "report" in r.out


def test_a_changed_setting_recomputes_only_its_section(own_study):
    c = own_study.changed
    assert c.rc == 0, c.err
    assert "surface: its inputs changed" in c.out and "points_1d" in c.out
    assert "hessian: its inputs changed" not in c.out
    sections = own_study.changed_results["sections"]
    assert sections["training"]["status"] == "loaded" and sections["hessian"]["status"] == "loaded"
    assert sections["surface"]["status"] == "computed"
    assert sections["surface"]["values"]["slice_points"] == 7
    assert _files(own_study.out / "sections" / "hessian") == own_study.hessian_files
    # the loaded sections' figures are not drawn again; the recomputed section's are
    before, after = own_study.figures, own_study.changed_figures
    assert set(before) == set(after)
    for name in before:
        redrawn = name.startswith("surface-")
        assert (after[name] != before[name]) == redrawn, (name, before[name], after[name])


def test_figures_are_drawn_again_only_when_their_inputs_code_or_files_change(tmp_path):
    """A saved figure is kept only when every part of its section was loaded from a store with
    the same digest (or its explicit inputs are the same), the code is the same and its files
    are all there; anything else draws it again."""
    from landscape.study import _run

    fig, ax = _run._figure((2.0, 1.5))
    ax[0, 0].plot([0, 1], [1, 0])
    drawn = []
    savefig = fig.savefig
    fig.savefig = lambda path, **kw: (drawn.append(Path(path).suffix), savefig(path, **kw))

    def save(digest, loaded, total=2, svg=True, **kw):
        drawn.clear()
        sec = _run.Section(parts_loaded=loaded, parts_total=total)
        with _run.figure_scope(sec, digest):
            entry = _run._fig_save(fig, tmp_path, "f", svg=svg, **kw)
        assert (tmp_path / entry["file"]).is_file() and (tmp_path / entry["svg"]).is_file()
        return sorted(drawn)

    assert save("d1", 0) == [".png", ".svg"]  # computed: drawn, key recorded
    assert save("d1", 2) == []  # all parts loaded, same digest: kept
    assert save("d1", 1) == [".png", ".svg"]  # resumed: a part was recomputed
    assert save("d2", 2) == [".png", ".svg"]  # another store digest
    assert save("d2", 2) == []
    assert save("d2", 0, total=0) == [".png", ".svg"]  # a section without parts: always
    save("d2", 0)
    (tmp_path / "figures" / "f.svg").unlink()
    assert save("d2", 2) == [".png", ".svg"]  # a missing file
    saved = list(_run._SOURCES_FINGERPRINT)
    _run._SOURCES_FINGERPRINT[:] = ["other code"]
    try:
        assert save("d2", 2) == [".png", ".svg"]  # other code (or matplotlib's version)
    finally:
        _run._SOURCES_FINGERPRINT[:] = saved
    assert save("d2", 2) == [".png", ".svg"]  # back to this code: the key is the other's now
    import matplotlib

    with matplotlib.rc_context({"lines.linewidth": 3.0}):  # a style, in the same process
        assert save("d2", 2) == [".png", ".svg"]
    assert save("d2", 2) == [".png", ".svg"]
    assert save("d2", 2) == []
    # explicit inputs (the training figure's history hash) reuse whenever they are the same
    assert save("d2", 0, inputs="h1") == [".png", ".svg"]
    assert save("d2", 0, inputs="h1") == []
    assert save("d2", 0, inputs="h2") == [".png", ".svg"]
    assert save("d2", 2, inputs="h2") == [] and save("d2", 2, inputs=None) == [".png", ".svg"]
    # the sharpness figure's inputs: the history and the learning rate, beyond the digest
    h = {"step": [0, 5], "sharpness": [1.0, 2.0]}
    t = {"optimizer": "sgd", "learning_rate": 0.1}
    key = _run.sharpness_figure_inputs
    assert key(h, t) == key(dict(h), dict(t)) != key({**h, "step": [0, 2]}, t)
    assert key(h, t) != key(h, {**t, "learning_rate": 0.2})
    assert key({**h, "note": ["text"]}, t) is None
    # outside a section, without inputs: always drawn, and no key is left behind
    drawn.clear()
    _run._fig_save(fig, tmp_path, "f", svg=True)
    assert sorted(drawn) == [".png", ".svg"] and not (tmp_path / "figures" / ".f.key").exists()


def test_own_model_results_and_provenance(own_study):
    r = own_study.results
    assert r["title"] == "my tanh net"
    assert r["model"]["kind"] == "factory" and r["model"]["name"] == "mynets.models:make_net"
    assert r["config"]["train"]["optimizer_settings"] == {"momentum": 0.9}
    prov = r["provenance"]
    assert {"packages", "git_commit", "devices", "time"} <= set(prov)
    assert prov["packages"]["jax"]
    h = r["sections"]["hessian"]
    assert len(h["values"]["top_eigenvalues"]) == 2 and h["values"]["top_eigenvalues"][0] > 0
    names = [c["name"] for c in h["checks"]]
    assert "SLQ trace vs trace estimate" in names and "top Gauss node vs top eigenvalue" in names
    assert all(c["passed"] is not False for c in h["checks"]), h["checks"]
    s = r["sections"]["surface"]
    check = next(c for c in s["checks"] if c["name"].startswith("slice centre"))
    assert check["passed"], check
    # the trained run is a run directory: load_run with the factory's model as the template
    import landscape

    sys.path.insert(0, str(own_study.out.parent))
    try:
        from mynets.models import make_net

        tmpl = landscape.from_nnx(make_net(16, input_shape=(64,), num_outputs=10, seed=3))
        run = landscape.load_run(own_study.out / "sections" / "training" / "run", model=tmpl)
    finally:
        sys.path.remove(str(own_study.out.parent))
    opt = run.config["optimizer"]["config"]  # the optax object's description, recorded
    assert opt["name"] == "momentum" and opt["momentum"] == 0.9 and opt["learning_rate"] == 0.05


def test_report_command_rerenders_without_recomputing(own_study):
    before = _files(own_study.out / "sections")
    results = (own_study.out / "results.json").read_bytes()
    r = _main(["report", str(own_study.out)])
    assert r.rc == 0 and "report.html" in r.out
    assert _files(own_study.out / "sections") == before
    assert (own_study.out / "results.json").read_bytes() == results


# -- bad configs ---------------------------------------------------------------------------------
BAD = {
    "unknown top-level key": ("seeed = 1\n", r"line 1: seeed: unknown key"),
    "unknown key in a table": ("[train]\nepochs = 1\nlearning_rat = 0.1\n",
                               r"line 3: train.learning_rat: unknown key; allowed in \[train\]: "
                               r"optimizer, learning_rate"),
    "wrong type": ("[train]\nepochs = \"ten\"\n", r"line 2: train.epochs must be an integer"),
    "unknown model": ("[model]\nname = \"transformr\"\n", r"model.name must be one of 'mlp'"),
    "unknown data": ("[data]\nname = \"cifar10\"\n", r"data.name must be one of 'digits'"),
    "unknown analysis": ("[analyses]\nrun = [\"hessain\"]\n", r"unknown entry 'hessain'"),
    "unimportable factory": ("[model]\nname = \"nopkg.models:make\"\n",
                             r"cannot import 'nopkg.models'"),
    "not a model": ("[model]\nname = \"mynets.models:not_a_model\"\n",
                    r"returned str; it must return a Flax NNX module"),
    "bad model settings": ("[model.settings]\nhiden = [8]\n", r"model.settings"),
    "not TOML": ("[train\nepochs = 1\n", r"not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_is_one_message_and_exit_2(project, case, tmp_path):
    text, pattern = BAD[case]
    cfg = project / f"bad-{case.replace(' ', '-')}.toml"
    cfg.write_text(text)
    r = _main(["study", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.rc == 2, (r.out, r.err)
    assert "Traceback" not in r.err
    import re

    assert re.search(pattern, r.err), r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert str(cfg) in r.err or case == "not TOML"


def test_bad_config_exit_status_from_the_program(project, tmp_path):
    cfg = project / "bad-program.toml"
    cfg.write_text("[hessian]\nk = 0\n")
    p = subprocess.run([sys.executable, "-m", "landscape", "study", str(cfg), "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "line 2: hessian.k must be >= 1; got 0" in p.stderr


def test_print_config_is_the_schema_and_parses(capsys):
    assert cli.main(["study", "--print-config"]) == 0
    text = capsys.readouterr().out
    cfg = study.parse_config(text)
    for table, fields in study.SCHEMA.items():
        for key, f in fields.items():
            assert f"{key} = " in text
            value = cfg.values[key] if not table else cfg.values[table][key]
            assert value == f.default, (table, key)
    assert cli.main(["demo", "--config"]) == 0
    demo = study.parse_config(capsys.readouterr().out)
    assert demo.sections == list(study.SECTIONS)


def test_npz_data_and_its_errors(tmp_path):
    import numpy as np

    from landscape.study import _resolve

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tr.npz", inputs=rng.normal(size=(40, 5)).astype("f4"),
             labels=rng.integers(0, 3, 40))
    np.savez(tmp_path / "te.npz", inputs=rng.normal(size=(10, 5)).astype("f4"),
             labels=rng.integers(0, 3, 10))
    good = '[data]\nname = "npz"\ntrain = "tr.npz"\ntest = "te.npz"\nx = "inputs"\ny = "labels"\n'
    (tmp_path / "c.toml").write_text(good)
    ds = _resolve.load_data(study.load_config(tmp_path / "c.toml"))
    assert ds.input_shape == (5,) and ds.num_outputs == 3 and len(ds.train["x"]) == 40
    (tmp_path / "c.toml").write_text(good.replace('y = "labels"', 'y = "targets"'))
    with pytest.raises(study.ConfigError, match=r"line 6: data.y: .*tr.npz has no array 'targets'; it has inputs, labels"):
        _resolve.load_data(study.load_config(tmp_path / "c.toml"))
    (tmp_path / "c.toml").write_text('[data]\nname = "npz"\ntrain = "tr.npz"\n')
    with pytest.raises(study.ConfigError, match="needs test"):
        study.load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('[data]\nname = "digits"\ntrain = "tr.npz"\n')
    with pytest.raises(study.ConfigError, match="applies to data.name = \"npz\" only"):
        study.load_config(tmp_path / "c.toml")


def test_quick_and_full_sizes():
    text = "[hessian]\nk = 3\n[surface]\npoints_2d = 0\n"
    q = study.parse_config(text, mode="quick")
    assert q["hessian"]["k"] == 2 and q["surface"]["points_2d"] == 0  # shrunk; off stays off
    assert q["train"]["epochs"] == 1 and q["train"]["sharpness_every"] == 0
    f = study.parse_config(text, mode="full")
    assert f["hessian"]["k"] == 3 and f["hessian"]["density_steps"] == 100  # the file's k kept


def test_roughness_measures():
    import numpy as np

    a = np.linspace(-1, 1, 21)
    bowl = 1 + a[:, None] ** 2 + a[None, :] ** 2
    r = study.surface_roughness(bowl)
    assert r["nonconvex_fraction"] == 0 and r["local_minima"] == 1
    rough = bowl + 0.5 * np.cos(12 * a[:, None]) * np.cos(12 * a[None, :])
    r = study.surface_roughness(rough)
    assert r["nonconvex_fraction"] > 0.3 and r["local_minima"] > 4


def test_chromium_renders_a_report(own_study, tmp_path):
    """The report in a real headless browser (Debian's chromium), when one is installed."""
    import shutil

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser installed (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    p = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                        f"--screenshot={shot}", "--window-size=1000,2000",
                        (own_study.out / "report.html").as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (own_study.out / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "my tanh net" in dom and "Consistency checks" in dom

