"""The inputs of ``landscape study``, checked before anything is trained: ``.npz`` arrays,
optimiser settings, the schema's bounds, model and loader settings (with their file and line),
paths relative to the config, ``--quick`` never making work larger, broken TOML. Every bad
input is one :class:`landscape.study.ConfigError` (exit status 2 on the command line), never a
traceback or a silent wrong result. Config and resolve functions are called directly; the
command line runs in-process, once, on a config that fails before training."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from landscape import cli, study
from landscape.study import _resolve
from landscape.study._config import SCHEMA

ERR = study.ConfigError


def _cfg(tmp_path: Path, text: str, name: str = "c.toml", **kw) -> study.StudyConfig:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return study.load_config(path, **kw)


# -- .npz data -------------------------------------------------------------------------------
NPZ = (
    '[data]\nname = "npz"\ntrain = "tr.npz"\ntest = "te.npz"\nx = "inputs"\ny = "labels"\n'
    'task = "{task}"\n[train]\nbatch_size = 4\n'
)


def _arrays(n=12, d=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.normal(size=(n, d)).astype("f4"), "labels": np.arange(n) % classes}


def _npz(tmp_path, train=None, test=None, task="classification"):
    np.savez(tmp_path / "tr.npz", **(train if train is not None else _arrays()))
    np.savez(tmp_path / "te.npz", **(test if test is not None else _arrays(n=6, seed=1)))
    return _cfg(tmp_path, NPZ.format(task=task))


def _with(**changes):
    a = _arrays()
    a.update(changes)
    return a


NaN_x = _arrays()["inputs"].copy()
NaN_x[4, 1] = np.nan
BAD_NPZ = {  # case -> (train arrays, task, pattern of the message)
    "first axes differ": (
        _with(labels=np.arange(11) % 3),
        "classification",
        r"line 3: data.train: .*tr.npz: inputs has 12 examples but labels has "
        r"11; their first axes must match",
    ),
    "negative label": (
        _with(labels=np.array([0, 1, 2, -1] * 3)),
        "classification",
        r"the classification labels 'labels' must be integers 0..C-1 \(C classes\); "
        r"example 3 has -1\. Renumber the classes from 0\.",
    ),
    "fractional label": (
        _with(labels=np.array([0, 1, 2.5] * 4)),
        "classification",
        r"must be integers 0..C-1; example 2 has 2.5 \(for float targets set "
        r"task = \"regression\"\)",
    ),
    "string labels": (
        _with(labels=np.array(["a", "b", "c"] * 4)),
        "classification",
        r"must be integers 0..C-1; got dtype <U1",
    ),
    "one-hot labels": (
        _with(labels=np.eye(3)[np.arange(12) % 3]),
        "classification",
        r"must have shape \(N,\) .*got \(12, 3\) \(one-hot labels",
    ),
    "a single class": (
        _with(labels=np.zeros(12, int)),
        "classification",
        r"line 6: data.y: every label is 0: classification needs at least two",
    ),
    "sparse label numbers": (
        _with(labels=np.array([0, 1, 5000] * 4)),
        "classification",
        r"run up to 5000 but take only 4 distinct values",
    ),
    "NaN input": (_with(inputs=NaN_x), "classification", r"inputs holds NaN or Inf \(example 4\)"),
    "Inf target": (
        _with(labels=np.array([0.5, np.inf, 1.0] * 4)),
        "regression",
        r"labels holds NaN or Inf \(example 1\)",
    ),
    "empty split": (
        {"inputs": np.zeros((0, 3), "f4"), "labels": np.zeros(0, int)},
        "classification",
        r"the train split is empty \(inputs has 0 examples\)",
    ),
    "no feature axis": (
        _with(inputs=np.zeros(12, "f4")),
        "classification",
        r"inputs must have shape \(N, ...\) .*got shape \(12,\)",
    ),
    "missing array": (
        {"x": np.zeros((12, 3)), "labels": np.zeros(12, int)},
        "classification",
        r"line 5: data.x: .*tr.npz has no array 'inputs'; it has labels, x\.",
    ),
    "object array": (
        _with(labels=np.array([{}, 1, 2] * 4, dtype=object)),
        "classification",
        r"the array 'labels' cannot be read without pickle",
    ),
}


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_bad_npz_arrays_are_one_message(tmp_path, case):
    train, task, pattern = BAD_NPZ[case]
    if case == "object array":  # savez pickles it; np.load(allow_pickle=False) refuses
        np.savez(tmp_path / "tr.npz", inputs=train["inputs"], labels=train["labels"])
        np.savez(tmp_path / "te.npz", **_arrays(n=6))
        cfg = _cfg(tmp_path, NPZ.format(task=task))
    else:  # the test split's labels are 0..2 except for a single class
        test = _with(labels=np.zeros(12, int)) if case == "a single class" else None
        cfg = _npz(tmp_path, train=train, test=test, task=task)
    with pytest.raises(ERR, match=pattern):
        _resolve.load_data(cfg)


def test_npz_files_missing_corrupt_or_not_npz(tmp_path):
    cfg = _cfg(tmp_path, NPZ.format(task="classification"))
    with pytest.raises(
        ERR,
        match=rf"line 3: data.train: no such file {re.escape(str(tmp_path))}"
        r".tr.npz \(a relative path is read from the config's",
    ):
        _resolve.load_data(cfg)
    (tmp_path / "tr.npz").write_bytes(b"not a zip file")
    with pytest.raises(
        ERR,
        match=r"line 3: data.train: .*tr.npz is not a readable .npz file "
        r"\(.*\); write it with numpy.savez\(path, x=inputs",
    ):
        _resolve.load_data(cfg)
    np.save(tmp_path / "tr.npy", np.zeros((4, 3)))
    (tmp_path / "tr.npy").replace(tmp_path / "tr.npz")
    with pytest.raises(ERR, match=r"holds one unnamed array \(a .npy file\)"):
        _resolve.load_data(cfg)
    (tmp_path / "tr.npz").unlink()
    (tmp_path / "tr.npz").mkdir()
    with pytest.raises(ERR, match=r"tr.npz is not a file"):
        _resolve.load_data(cfg)


def test_npz_split_consistency_and_accepted_forms(tmp_path):
    # the test inputs' shape must match the training inputs'
    with pytest.raises(
        ERR,
        match=r"line 4: data.test: .*te.npz: inputs has examples of shape "
        r"\(4,\), the training inputs \(3,\)",
    ):
        _resolve.load_data(_npz(tmp_path, test=_arrays(n=6, d=4)))
    # whole-number float labels and (N, 1) labels are classes; int inputs become float32
    tr = {"inputs": np.arange(36).reshape(12, 3), "labels": (np.arange(12) % 3.0)[:, None]}
    ds = _resolve.load_data(_npz(tmp_path, train=tr))
    assert ds.train["x"].dtype == np.float32 and ds.train["y"].dtype == np.int32
    assert ds.train["y"].shape == (12,) and ds.num_outputs == 3
    # regression targets (N,) become (N, 1); the recorded paths are absolute
    tr = _with(labels=np.linspace(0, 1, 12))
    ds = _resolve.load_data(
        _npz(tmp_path, train=tr, test=_with(labels=np.zeros(12)), task="regression")
    )
    assert ds.train["y"].shape == (12, 1) and ds.num_outputs == 1
    assert ds.spec["train"] == str((tmp_path / "tr.npz").resolve())


FACTORY = """
from flax import nnx


def two_outputs(*, input_shape, num_outputs, seed=0, width=4):
    return nnx.Linear(input_shape[0], 2, rngs=nnx.Rngs(seed))


def wide(*, input_shape, num_outputs, seed=0):
    return nnx.Linear(input_shape[0], num_outputs + 2, rngs=nnx.Rngs(seed))


def picky(*, input_shape, num_outputs, depth, seed=0, width=4, scale=1.0, name="net"):
    if width > 100:
        raise ValueError(f"width must be at most 100; got {width}")
    return nnx.Linear(input_shape[0], num_outputs, rngs=nnx.Rngs(seed))
"""


@pytest.fixture
def factory_dir(tmp_path):
    (tmp_path / "userfac.py").write_text(FACTORY)
    return tmp_path


def test_labels_out_of_range_of_the_models_outputs(factory_dir):
    text = NPZ.format(task="classification") + '[model]\nname = "userfac:two_outputs"\n'
    np.savez(factory_dir / "tr.npz", **_arrays())
    np.savez(factory_dir / "te.npz", **_arrays(n=6))
    cfg = _cfg(factory_dir, text)
    data = _resolve.load_data(cfg)
    with pytest.raises(
        ERR,
        match=r"line 11: model.name: .* gives outputs of shape \(2, 2\) on 2 "
        r"examples; the labels run from 0 to 2, so it needs \(2, 3\)",
    ):
        _resolve.build_model(cfg, data, seed=0)
    # more outputs than classes: unused classes, accepted
    cfg = _cfg(factory_dir, text.replace("two_outputs", "wide"))
    _resolve.build_model(cfg, data, seed=0)


def test_a_bad_npz_stops_the_command_before_training(tmp_path):
    """The one command-line run: exit status 2, one line naming the file and line, and nothing
    trained (no section was started)."""
    np.savez(tmp_path / "tr.npz", **_with(labels=np.array([0, 1, -2] * 4)))
    np.savez(tmp_path / "te.npz", **_arrays(n=6))
    (tmp_path / "c.toml").write_text(NPZ.format(task="classification"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(
            ["study", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--no-progress"]
        )
    assert rc == 2, (out.getvalue(), err.getvalue())
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.getvalue()
    assert f"{tmp_path / 'c.toml'}, line 3: data.train" in lines[0]
    assert "example 2 has -2" in lines[0]
    assert "[training]" not in out.getvalue()
    assert not (tmp_path / "run" / "sections").exists()


# -- optimiser and schedule settings --------------------------------------------------------
def _data(n=100):
    x = np.zeros((n, 2), np.float32)
    return SimpleNamespace(
        train={"x": x, "y": np.zeros(n, np.int32)},
        test={"x": x[:4]},
        task="classification",
        input_shape=(2,),
    )


BAD_TRAIN = {
    "a string momentum": (
        'optimizer = "momentum"\noptimizer_settings = { momentum = "0.9" }',
        r"line 3: train.optimizer_settings.momentum must be a number; got "
        r"'0.9' \(str\)",
    ),
    "a list": (
        "optimizer_settings = { b1 = [0.9] }",
        r"train.optimizer_settings.b1 must be a number \(default 0.9\); got \[0.9\]",
    ),
    "a boolean as a number": (
        "optimizer_settings = { eps = true }",
        r"optimizer_settings.eps must be a number",
    ),
    "a number as a boolean": (
        "optimizer_settings = { nesterov = 1 }",
        r"optimizer_settings.nesterov must be true or false",
    ),
    "unknown for adam": (
        "optimizer_settings = { beta1 = 0.9 }",
        r"line 2: train.optimizer_settings.beta1: unknown setting of optimizer "
        r"'adam' \(optax.adam\); accepted: b1, b2, eps, eps_root, mu_dtype, "
        r"nesterov\.",
    ),
    "unknown for sgd": (
        'optimizer = "sgd"\noptimizer_settings = { b1 = 0.9 }',
        r"unknown setting of optimizer 'sgd' \(optax.sgd\); accepted: momentum, "
        r"nesterov, accumulator_dtype\.",
    ),
    "set by the optimizer": (
        'optimizer = "nesterov"\noptimizer_settings = { nesterov = false }',
        r"optimizer_settings.nesterov is set by optimizer = 'nesterov'",
    ),
    "the learning rate": (
        "optimizer_settings = { learning_rate = 0.1 }",
        r"set train.learning_rate \(and train.schedule\) instead",
    ),
    "a decay rate of 1": ("optimizer_settings = { b2 = 1.0 }", r"b2 must be in \[0, 1\); got 1.0"),
    "a negative eps": ("optimizer_settings = { eps = -1e-8 }", r"eps must be >= 0"),
    "a dtype typo": (
        'optimizer_settings = { mu_dtype = "flaot16" }',
        r"mu_dtype must be a floating dtype name",
    ),
    "a pytree": (
        'optimizer = "adamw"\noptimizer_settings = { mask = "x" }',
        r"optax.adamw's mask cannot be set from a config",
    ),
    "a string learning rate": (
        'learning_rate = "0.1"',
        r"line 2: train.learning_rate must be a number; got '0.1'",
    ),
    "a zero learning rate": ("learning_rate = 0", r"train.learning_rate must be > 0; got 0.0"),
    "a negative learning rate": ("learning_rate = -0.1", r"must be > 0; got -0.1"),
    "an infinite learning rate": ("learning_rate = inf", r"must be a finite number; got inf"),
    "a warm-up beyond training": (
        "epochs = 2\nbatch_size = 50\nwarmup_steps = 4",
        r"train.warmup_steps = 4 is not fewer than the 4 training steps",
    ),
    "a batch beyond the data": ("batch_size = 101", r"batch_size = 101 exceeds the 100 training"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_training_settings(tmp_path, case):
    body, pattern = BAD_TRAIN[case]
    with pytest.raises(ERR, match=pattern):
        _resolve.train_kwargs(_cfg(tmp_path, f"[train]\n{body}\n"), _data())


def test_good_optimizer_settings_and_a_warmup_of_a_constant_rate(tmp_path):
    import jax.numpy as jnp

    text = (
        '[train]\noptimizer = "sgd"\nlearning_rate = 0.5\nwarmup_steps = 10\n'
        "[train.optimizer_settings]\nmomentum = 0.0\n"
    )
    kw = _resolve.train_kwargs(_cfg(tmp_path, text), _data())
    assert kw["optimizer_config"]["momentum"] == 0.0 and kw["num_steps"] == 20 * (100 // 64)
    # the warm-up applies to the constant schedule too (it was silently ignored): the rate at
    # step s is 0.5 * s / 10, so the plain SGD update of a unit gradient is -0.05 * s (exact in
    # float32 up to rounding: 1e-7)
    opt = kw["optimizer"]
    p = {"w": jnp.zeros(())}
    state = opt.init(p)
    for s in range(3):
        upd, state = opt.update({"w": jnp.ones(())}, state, p)
        assert abs(float(upd["w"]) + 0.05 * s) < 1e-7, (s, float(upd["w"]))
    _resolve.train_kwargs(
        _cfg(
            tmp_path,
            '[train]\noptimizer = "adam"\n'
            "optimizer_settings = { b1 = 0.8, eps = 1, "
            'mu_dtype = "bfloat16", nesterov = true }\n',
        ),
        _data(),
    )


def test_checks_with_the_data_before_training(tmp_path):
    data = _data()
    with pytest.raises(ERR, match=r"line 2: train.optimizer_settings.b3: unknown setting"):
        _resolve.check_with_data(
            _cfg(tmp_path, "[train]\noptimizer_settings = { b3 = 1 }\n"), data
        )
    # the skips section trains on the study's data where it is images, else on the digits
    img = SimpleNamespace(**{**vars(data), "input_shape": (2, 2, 1)})
    text = '[analyses]\nrun = ["skips"]\n[train]\nbatch_size = 10\n[skips]\nbatch_size = {}\n'
    with pytest.raises(
        ERR,
        match=r"line 6: skips.batch_size = 101 exceeds the 100 training "
        r"examples of the skips section",
    ):
        _resolve.check_with_data(_cfg(tmp_path, text.format(101)), img)
    with pytest.raises(ERR, match=r"skips.batch_size = 5000 exceeds the 1437 training"):
        _resolve.check_with_data(_cfg(tmp_path, text.format(5000)), data)
    _resolve.check_with_data(_cfg(tmp_path, text.format(100)), img)


# -- the schema's bounds --------------------------------------------------------------------
def _numeric_fields():
    for table, fields in SCHEMA.items():
        for key, f in fields.items():
            if f.type in (int, float) and (f.minimum is not None or f.above is not None):
                yield table, key, f


@pytest.mark.parametrize("table,key", [(t, k) for t, k, _ in _numeric_fields()])
def test_every_numeric_bound_is_enforced_and_shown(tmp_path, table, key):
    f = SCHEMA[table][key]
    head = f"[{table}]\n" if table else ""
    if f.above is not None:
        bad, good = f.above, f.above + 0.5
    else:
        bad, good = f.minimum - 1, f.minimum
    if bad == f.off:  # the off value is allowed: one further below is not
        bad -= 1
    text = f"{head}{key} = {f.type(bad)!r}\n"
    with pytest.raises(
        ERR,
        match=rf"line {2 if table else 1}: {re.escape(table + '.' if table else '')}"
        rf"{key} must be {re.escape(f.allowed())}; got",
    ):
        _cfg(tmp_path, text)
    assert _cfg(tmp_path, f"{head}{key} = {f.type(good)!r}\n").values[table or key] is not None
    if f.off is not None:
        _cfg(tmp_path, f"{head}{key} = {f.off!r}\n")
    if f.type is float:
        for v in ("nan", "inf", "-inf"):
            with pytest.raises(ERR, match="must be a finite number"):
                _cfg(tmp_path, f"{head}{key} = {v}\n")
    assert f"Allowed: {f.allowed()}." in " ".join(
        line.lstrip("# ") for line in study.default_config_text().splitlines()
    )


def test_the_bounds_the_review_named(tmp_path):
    for text, pattern in (
        ("[surface]\nspan = 0\n", r"surface.span must be > 0; got 0.0"),
        ("[surface]\nspan = -1\n", r"surface.span must be > 0"),
        ("[skips]\nspan = 0.0\n", r"skips.span must be > 0"),
        ("[surface]\npoints_2d = 1\n", r"points_2d must be 0 \(off\) or >= 3; got 1"),
        ("[hessian]\ndensity_probes = 0\n", r"density_probes must be >= 1"),
        ("[hessian]\nk = 0\n", r"hessian.k must be >= 1; got 0"),
        (
            "[ntk]\nwidths = [64]\n",
            r"ntk.widths must be \[\] \(skip\) or a list of at least "
            r"2 distinct positive integers; got \[64\]",
        ),
        ("[ntk]\nwidths = [64, 64]\n", r"at least 2 distinct"),
        ("[ntk]\nwidths = [0, 64]\n", r"at least 2 distinct positive"),
        ("[skips]\nwidths = []\n", r"skips.widths must be a non-empty list of positive"),
        ("[skips]\nwidths = [16, -32]\n", r"skips.widths must be a non-empty list"),
        ("[skips]\nwidths = [16.0]\n", r"skips.widths must be a non-empty list"),
        ("[train]\nepochs = 1.5\n", r"train.epochs must be an integer; got 1.5"),
        ("seed = -1\n", r"line 1: seed must be >= 0"),
    ):
        with pytest.raises(ERR, match=pattern):
            _cfg(tmp_path, text)
    assert _cfg(tmp_path, "[ntk]\nwidths = []\n")["ntk"]["widths"] == []


# -- [model.settings] and [data.settings]: the key's own line -------------------------------
MODEL = '[model]\nname = "mlp"\n\n[model.settings]\nhidden = [8]\n{line}\n'


@pytest.mark.parametrize(
    "line,pattern",
    [
        (
            "hiden = [8]",
            r"line 6: model.settings.hiden: unknown setting of the 'mlp' model "
            r"\(landscape.models.MLP\); accepted: hidden, activation, init",
        ),
        (
            "use_bias = 1",
            r"line 6: model.settings.use_bias must be true or false \(default True\); "
            r"got 1 \(int\)",
        ),
        (
            'activation = "relux"',
            r"line 6: model.settings.activation: .*unknown activation "
            r"'relux'; choose from",
        ),
        (
            "init = 3",
            r"line 6: model.settings.init must be a string \(a name of landscape.models' "
            r"initialisers\); got 3 \(int\)",
        ),
        ('sigma_b2 = "0.1"', r"line 6: model.settings.sigma_b2 must be a number \(default 0.0\)"),
        (
            'param_dtype = "float63"',
            r"line 6: model.settings.param_dtype must be a floating dtype",
        ),
        ("seed = 1", r"line 6: model.settings.seed is set by the study \(the top-level seed"),
    ],
)
def test_model_settings_errors_name_the_line(tmp_path, line, pattern):
    cfg = _cfg(tmp_path, MODEL.format(line=line))
    data = _resolve.load_data(cfg)
    with pytest.raises(ERR, match=pattern):
        _resolve.build_model(cfg, data, seed=0)


def test_settings_lines_of_inline_tables_lists_and_loaders(tmp_path):
    cfg = _cfg(tmp_path, '[model]\nname = "mlp"\nsettings = { hidden = [8, 0] }\n')
    with pytest.raises(
        ERR,
        match=r"line 3: model.settings.hidden must be a list of positive "
        r"integers \(\[\] for none\); got \[8, 0\]",
    ):
        _resolve.build_model(cfg, _resolve.load_data(cfg), seed=0)
    cfg = _cfg(
        tmp_path,
        '[model]\nname = "cnn"\n[model.settings]\nchannels = []\n[data.settings]\nflat = false\n',
    )
    with pytest.raises(ERR, match=r"line 4: model.settings.channels must be a non-empty list"):
        _resolve.build_model(cfg, _resolve.load_data(cfg), seed=0)
    for text, pattern in (
        (
            '[data.settings]\nflat = "no"\n',
            r"line 2: data.settings.flat must be true or false \(default True\); got 'no'",
        ),
        (
            "[data.settings]\n\nflatt = false\n",
            r"line 3: data.settings.flatt: unknown setting of landscape.data.digits; accepted: "
            r"flat, test_fraction, seed, standardize, dtype\.",
        ),
        (
            '[data]\nname = "teacher"\n[data.settings]\ninput_dim = 4\nnum_train = -5\n',
            r"line 5: data.settings.num_train: .*num_train must be positive; got -5",
        ),
    ):
        with pytest.raises(ERR, match=pattern):
            _resolve.load_data(_cfg(tmp_path, text))


def test_factory_settings_errors_name_the_line(factory_dir):
    text = '[model]\nname = "userfac:picky"\n[model.settings]\ndepth = 2\n{line}\n'
    data = _resolve.load_data(_cfg(factory_dir, ""))
    for line, pattern in (
        (
            "widht = 3",
            r"line 5: model.settings.widht: unknown setting of the factory "
            r"userfac:picky; accepted: depth, width, scale, name\.",
        ),
        ('width = "4"', r"line 5: model.settings.width must be an integer \(default 4\)"),
        ('scale = "big"', r"line 5: model.settings.scale must be a number"),
        (
            "width = 500",
            r"line 5: model.settings.width: the factory userfac:picky.* raised "
            r"ValueError: width must be at most 100",
        ),
    ):
        cfg = _cfg(factory_dir, text.format(line=line))
        with pytest.raises(ERR, match=pattern):
            _resolve.build_model(cfg, data, seed=0)
    cfg = _cfg(factory_dir, '[model]\nname = "userfac:picky"\n')
    with pytest.raises(
        ERR,
        match=r"model.settings: the factory userfac:picky needs depth "
        r"\(arguments without a default\)",
    ):
        _resolve.build_model(cfg, data, seed=0)


# -- relative paths -------------------------------------------------------------------------
def test_relative_paths_resolve_against_the_config_and_are_recorded_absolute(
    tmp_path, monkeypatch
):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "cfgs").mkdir()
    (proj / "cfgs" / "userfac.py").write_text(FACTORY)
    np.savez(proj / "data" / "tr.npz", **_arrays())
    np.savez(proj / "data" / "te.npz", **_arrays(n=6))
    text = (
        '[model]\nname = "userfac:wide"\n[data]\nname = "npz"\ntrain = "../data/tr.npz"\n'
        'test = "../data/te.npz"\nx = "inputs"\ny = "labels"\n[train]\nbatch_size = 4\n'
        '[connect]\nother = "../runs/other"\n'
    )
    (proj / "cfgs" / "c.toml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # run from another directory, by a relative config path
    cfg = study.load_config(Path("..") / "proj" / "cfgs" / "c.toml")
    root = proj.resolve()
    assert cfg.base == root / "cfgs"
    assert cfg["data"]["train"] == str(root / "data" / "tr.npz")
    assert cfg["connect"]["other"] == str(root / "runs" / "other")
    rec = cfg.to_json()
    assert rec["data"]["test"] == str(root / "data" / "te.npz")
    assert rec["_source"] == str(root / "cfgs" / "c.toml") and rec["_base"] == str(root / "cfgs")
    data = _resolve.load_data(cfg)
    assert data.spec["train"] == str(root / "data" / "tr.npz")
    _resolve.build_model(cfg, data, seed=0)  # the factory module beside the config
    # a config written back from the record (landscape analyse) means the same files
    again = study.parse_config(
        f'[data]\nname = "npz"\ntrain = "{rec["data"]["train"]}"\ntest = "{rec["data"]["test"]}"\n',
        base=tmp_path,
    )
    assert again["data"]["train"] == cfg["data"]["train"]
    # a parsed text's relative paths resolve against base (default: the working directory)
    t = study.parse_config('[data]\nname = "npz"\ntrain = "a.npz"\ntest = "b.npz"\n')
    assert t["data"]["train"] == str(elsewhere.resolve() / "a.npz")


# -- --quick makes work smaller, never larger -----------------------------------------------
def _measurements(steps: int, every: int) -> int:
    return 0 if not every else 1 + steps // every  # step 0, then every `every` steps


def test_quick_never_gives_more_sharpness_measurements():
    """The old rule, min(sharpness_every, 5), measured 5 times as often as the file asked when
    its training was already one epoch long. Now: for every interval and epoch count, the
    measurements under --quick (1 epoch) are at most those without it, for any number of steps
    per epoch."""
    for epochs in (1, 2, 3, 7, 20):
        for every in range(0, 60):
            text = f"[train]\nepochs = {epochs}\nsharpness_every = {every}\n"
            q = study.parse_config(text, mode="quick")["train"]
            assert q["epochs"] == 1 and (q["sharpness_every"] == 0) == (every == 0)
            assert q["sharpness_every"] <= max(every, 5)  # capped at 5 unless that is more
            for per_epoch in (1, 4, 22, 23, 64, 440):
                assert _measurements(per_epoch, q["sharpness_every"]) <= _measurements(
                    epochs * per_epoch, every
                ), (epochs, every, per_epoch)
    one = study.parse_config("[train]\nepochs = 1\nsharpness_every = 25\n", mode="quick")
    assert one["train"]["sharpness_every"] == 25  # was min(25, 5) = 5: 5 times as many
    # the demo (20 epochs, every 25 steps): quick's cap of 5 is 1 + 22 // 5 = 5 measurements on
    # the digits' 22 steps per epoch, fewer than the 1 + 440 // 25 = 18 of the default run
    assert study.demo("quick")["train"]["sharpness_every"] == 5
    assert (
        "(--quick 5, or more steps apart: never more measurements than without --quick.)"
        in " ".join(line.lstrip("# ") for line in study.default_config_text().splitlines())
    )


def test_quick_never_makes_any_size_larger(tmp_path):
    """Every size the file sets, at, below and above its quick value: --quick gives at most
    the file's work (sizes no larger, lists a subset of the file's)."""
    for table, fields in SCHEMA.items():
        for key, f in fields.items():
            if f.quick is None or f.quick_rule != "at_most":  # sharpness_every: above
                continue
            if isinstance(f.quick, list) and f.item_choices is not None:  # names (controls)
                tries = [list(f.item_choices), list(f.quick)]
            elif isinstance(f.quick, list):
                tries = [[8, 16], [8, 16, 32, 64, 99] if f.below == 100 else [8, 16, 32, 64, 128],
                         list(f.quick)]
            else:
                lo = f.minimum if f.minimum is not None else 1
                tries = sorted({max(lo, f.quick - 1), f.quick, f.quick + 7, lo})
            for v in tries:
                text = f"[{table}]\n{key} = {v!r}\n"
                q = study.parse_config(text, mode="quick")[table][key]
                if isinstance(v, list):
                    assert set(q) <= set(v) and len(q) <= len(f.quick), (table, key, v, q)
                else:
                    assert q <= v and q <= f.quick, (table, key, v, q)
    q = study.parse_config("[ntk]\nwidths = [8, 16, 32, 64]\n", mode="quick")
    assert q["ntk"]["widths"] == [8, 64]  # was quick's [16, 1024]: a width 16 times the file's


# -- broken files ---------------------------------------------------------------------------
def test_broken_toml_and_unreadable_files(tmp_path):
    (tmp_path / "c.toml").write_text('title = "x"\n[train]\nepochs = 2\nbatch_size = = 3\n')
    with pytest.raises(ERR) as e:
        study.load_config(tmp_path / "c.toml")
    msg = str(e.value)
    assert re.match(
        rf"{re.escape(str(tmp_path / 'c.toml'))}, line 4, column 14: not valid TOML: "
        r"Invalid value; fix the syntax there",
        msg,
    ), msg
    (tmp_path / "c.toml").write_bytes(b'title = "\xff\xfe"\n')
    with pytest.raises(ERR, match=r"c.toml: not a text file in UTF-8 \(byte 9"):
        study.load_config(tmp_path / "c.toml")
    with pytest.raises(ERR, match=r"no such config file"):
        study.load_config(tmp_path / "none.toml")
    with pytest.raises(ERR, match=r"config, line 1, column 7: not valid TOML"):
        study.parse_config("[train\n")
    with pytest.raises(ERR, match=r"line 2: train.optimizer_settings.t is a TOML date"):
        study.parse_config("[train]\noptimizer_settings = { t = 1979-05-27 }\n")
    assert math.isclose(study.parse_config("[surface]\nspan = 2\n")["surface"]["span"], 2.0)
