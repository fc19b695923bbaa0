"""Equal results on 1 and 4 virtual CPU devices: a batch-norm network's profile with
re-estimated statistics (points sharded, re-estimation data replicated), its barrier, and curve
training (values of t sharded); all 4-device checks in ONE subprocess."""

from __future__ import annotations

import json

import numpy as np


def test_one_and_four_devices_agree(four_devices):
    import jax

    from tests.connect._helpers import workload

    assert jax.device_count() == 1
    one = workload()
    out = four_devices.run(
        """
        import json, jax
        assert jax.device_count() == 4
        from tests.connect._helpers import workload
        print("RESULT" + json.dumps(workload()))
        """
    )
    four = json.loads(out.split("RESULT", 1)[1])
    assert set(one) == set(four)
    for k in one:
        a, b = np.asarray(one[k]), np.asarray(four[k])
        if k.startswith("curve"):
            # 8 SGD steps whose mean over t is reduced across devices: float32 rounding of the
            # reduction order, accumulated over the steps (1e-4)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=k)
        else:
            # the same exact data means in another summation order (float32, 1e-5)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=k)
