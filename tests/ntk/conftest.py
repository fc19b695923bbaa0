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


@pytest.fixture
def interrupt_after():
    """``interrupt_after(monkeypatch, calls)``: the compiled wave of the block driver raises
    ``KeyboardInterrupt`` once it has run ``calls`` times (one block per call on one device);
    returns the list of calls made."""
    from ntk import _blocks

    def patch(mp, calls):
        real = _blocks._wave
        made = []

        def wave(*args, **kwargs):
            if len(made) >= calls:
                raise KeyboardInterrupt
            made.append(1)
            return real(*args, **kwargs)

        mp.setattr(_blocks, "_wave", wave)
        return made

    return patch
