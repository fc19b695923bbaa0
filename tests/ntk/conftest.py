"""Shared inputs for the ntk tests."""

import numpy as np
import pytest


@pytest.fixture
def vec_inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((9, 5)), rng.standard_normal((4, 5))


@pytest.fixture
def img_inputs():
    rng = np.random.default_rng(1)
    return rng.standard_normal((5, 6, 5, 2)), rng.standard_normal((3, 6, 5, 2))


@pytest.fixture(scope="module")
def vec_inputs_module():
    rng = np.random.default_rng(0)
    return rng.standard_normal((9, 5)), rng.standard_normal((4, 5))
