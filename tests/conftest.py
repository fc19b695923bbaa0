"""Shared test settings and fixtures.

* strict rank promotion (``jax_numpy_rank_promotion="raise"``) for every test;
* ``key``: a fresh PRNG key;
* session-scoped trained models (``digits_data``, ``trained_mlp``, ...) computed once per session
  and reused by every module (they are small: seconds to train).
"""

from __future__ import annotations

import os

os.environ.setdefault("LANDSCAPE_QUICK", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

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
        num_steps=150,
        batch_size=64,
        seed=0,
        progress=False,
    )


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices {jax.devices()}, numpy {np.__version__}"
