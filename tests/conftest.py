"""Shared test settings and fixtures.

* strict rank promotion (``jax_numpy_rank_promotion="raise"``) for every test;
* one persistent XLA compilation cache for the whole run, shared by this process, pytest-xdist
  workers, the subprocesses of the multi-device tests and the notebook kernels (through the
  environment, set before JAX is imported): a program compiled by one of them is loaded, not
  compiled again, by the others. It starts empty in every run (as CI's does) and is removed at
  the end, so timings are those of a fresh machine; ``LANDSCAPE_TEST_CACHE=<dir>`` keeps one
  across runs instead;
* ``key``: a fresh PRNG key;
* session-scoped trained models (``digits_data``, ``trained_mlp``, ...) computed once per session
  and reused by every module (they are small: seconds to train).
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("LANDSCAPE_QUICK", "1")

_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
_OWN_CACHE = "LANDSCAPE_TEST_CACHE" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
_CACHE = os.environ.get("LANDSCAPE_TEST_CACHE") or os.path.join(
    tempfile.gettempdir(), f"landscape-test-xla-{_RUN}"
)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
# cache every program (JAX's default skips those that compile in under a second: most of ours)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# XLA:CPU compiles the suite's ~3500 small programs at LLVM optimisation level 1 without the
# expensive passes, and emits fusions with the classic elemental emitters instead of the newer
# fusion emitters: backend compilation is about half of the suite's CPU time, level 1 cuts it by
# ~15% and the classic emitters by a further ~40% (measured 2026-12-04, alternated runs of four
# modules: backend compile 55 s -> 32 s, wall 84 s -> 59 s), without slowing execution (level 0
# compiles faster still but runs convolutions 3.5x slower). The HLO passes are unchanged, so the
# programs compute the same thing; benchmarks never use these flags.
_FLAGS = ("--xla_backend_optimization_level=1", "--xla_llvm_disable_expensive_passes=true",
          "--xla_cpu_use_fusion_emitters=false")
_xla = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in _FLAGS if f.split("=")[0] not in _xla] + ([_xla] if _xla else [])
)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# also through the config, in case a plugin imported JAX before this file set the environment
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

try:  # deterministic hypothesis profile (as in JAX's own tests)
    from hypothesis import settings

    settings.register_profile(
        "landscape", derandomize=True, deadline=None, database=None, max_examples=25
    )
    settings.load_profile("landscape")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def four_devices():
    """A long-lived interpreter with 4 virtual CPU devices for the multi-device checks
    (``tests._util.DeviceWorker``): one per pytest worker, not one per test."""
    from tests._util import DeviceWorker

    worker = DeviceWorker(4)
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def digits_data():
    import landscape

    return landscape.load_data("digits")


@pytest.fixture(scope="session")
def digits_images():
    import landscape

    return landscape.load_data("digits", flat=False)


@pytest.fixture(scope="session")
def trained_mlp(digits_data):
    """ReLU MLP 64-32-32-10 trained on digits for 300 Adam steps (float32).

    Returns the ``TrainResult``; ``.model`` is the trained triple.
    """
    import optax

    import landscape

    model = landscape.make_model("mlp", input_shape=(64,), num_outputs=10, hidden=(32, 32), seed=0)
    return landscape.train(
        model,
        digits_data.train,
        test_data=digits_data.test,
        optimizer=optax.adam(3e-3),
        optimizer_config={"name": "adam", "learning_rate": 3e-3},
        num_steps=300,
        batch_size=64,
        seed=0,
        progress=False,
    )


@pytest.fixture(scope="session")
def trained_pair(digits_data):
    """Two MLPs 64-32-32-10 trained from different seeds on digits (for mode connectivity)."""
    import optax

    import landscape

    out = []
    for seed in (1, 2):
        model = landscape.make_model(
            "mlp", input_shape=(64,), num_outputs=10, hidden=(32, 32), seed=seed
        )
        out.append(
            landscape.train(
                model,
                digits_data.train,
                test_data=digits_data.test,
                optimizer=optax.adam(3e-3),
                optimizer_config={"name": "adam", "learning_rate": 3e-3},
                num_steps=300,
                batch_size=64,
                seed=seed,
                progress=False,
            )
        )
    return tuple(out)


@pytest.fixture(scope="session")
def trained_resnet(digits_images):
    """Small ResNet (widths 8, 16; batch norm; skips) trained on digits images, 150 steps."""
    import optax

    import landscape

    model = landscape.make_model(
        "resnet", input_shape=(8, 8, 1), num_outputs=10, widths=(8, 16), seed=0
    )
    return landscape.train(
        model,
        digits_images.train,
        test_data=digits_images.test,
        optimizer=optax.adam(3e-3),
        optimizer_config={"name": "adam", "learning_rate": 3e-3},
        num_steps=150,
        batch_size=64,
        seed=0,
        progress=False,
    )


def pytest_report_header(config):
    return (f"jax {jax.__version__}, devices {jax.devices()}, numpy {np.__version__}, "
            f"compilation cache {os.environ['JAX_COMPILATION_CACHE_DIR']}")


def pytest_sessionfinish(session, exitstatus):
    # the controller (or a plain run) removes the run's cache; xdist workers leave it
    if _OWN_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(_CACHE, ignore_errors=True)


# The longest modules (measured: a notebook kernel, the demo, subprocesses) are collected
# first, so pytest-xdist hands them out at the start and the workers finish together instead
# of one of them running the longest notebook alone at the end.
_FIRST = (
    "tests/hessian/test_notebook.py",
    "tests/test_cli.py",
    "tests/surface/test_notebook.py",
    "tests/test_multidevice.py",
    "tests/ntk/test_notebook.py",
    "tests/hessian/test_analysis.py",
    "tests/connect/test_notebook.py",
    "tests/test_engine.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(_FIRST)}

    def key(item):
        path = os.path.relpath(str(item.path), str(config.rootpath)).replace(os.sep, "/")
        return rank.get(path, len(_FIRST))

    items.sort(key=key)  # stable: the order within and after the listed modules is kept
