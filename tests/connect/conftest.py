"""Fixtures of the mode-connectivity tests: the trained pair's loss, its alignment and a trained
Bezier curve (session-scoped: computed once, shared by the modules), small data subsets and a
batch-norm pair."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest


@pytest.fixture(scope="session")
def pair_loss(trained_pair):
    """Cross-entropy loss (with accuracy and error) of the 64-32-32-10 MLPs of ``trained_pair``."""
    import landscape

    return landscape.make_loss_fn(trained_pair[0].model)


@pytest.fixture(scope="session")
def pair_params(trained_pair):
    return trained_pair[0].params, trained_pair[1].params


@pytest.fixture(scope="session")
def linear_profile(pair_loss, pair_params, digits_data):
    import landscape.connect as lc

    a, b = pair_params
    return lc.profile(pair_loss, lc.linear_path(a, b), digits_data.train, test_data=digits_data.test)


@pytest.fixture(scope="session")
def weight_alignment(trained_pair, pair_params):
    import jax

    import landscape.connect as lc

    a, b = pair_params
    return lc.align(trained_pair[0].model, a, b, method="weights", key=jax.random.key(0))


@pytest.fixture(scope="session")
def bezier_curve(pair_loss, pair_params, digits_data):
    """A quadratic Bezier curve between the pair: 300 Adam steps (lr 3e-3), 4 t per batch."""
    import landscape.connect as lc

    a, b = pair_params
    return lc.fit_curve(
        pair_loss, a, b, digits_data.train, num_steps=300, optimizer=optax.adam(3e-3),
        batch_size=128, num_ts=4, key=jax.random.key(0), progress=False,
    )


@pytest.fixture(scope="session")
def small_train(digits_data):
    tr = digits_data.train
    return {"x": np.asarray(tr["x"][:256]), "y": np.asarray(tr["y"][:256])}


@pytest.fixture(scope="session")
def bn_trained(digits_data):
    """A 64-32-32-10 MLP with batch norm after each hidden layer, 150 Adam steps on digits."""
    from flax import nnx

    import landscape
    from tests.connect._helpers import BNNet

    model = landscape.from_nnx(BNNet(nnx.Rngs(0), hidden=(32, 32)))
    return landscape.train(model, digits_data.train, optimizer=optax.adam(3e-3), num_steps=150,
                           batch_size=64, seed=0, progress=False)


@pytest.fixture(scope="session")
def bn_pair(bn_trained, digits_data):
    """The trained batch-norm network (A) and a permuted copy of it (B: the same function, far
    away in parameter space), with their states."""
    import landscape
    import landscape.connect as lc

    m = bn_trained.model
    spec = lc.permutation_spec(m, digits_data.train["x"][:2])
    rng = np.random.default_rng(7)
    perms = {g: rng.permutation(n) for g, n in spec.groups.items()}
    pb, sb = lc.permute(spec, m.params, perms, m.state)
    return m, landscape.Model(m.apply_fn, pb, sb, m.spec)
