"""JAX's persistent compilation cache is on by default (``landscape._cache``), in the per-user
cache location, without overriding the user's settings; one switch turns it off."""

from __future__ import annotations

import json

from tests._util import run_python

CODE = r"""
import json, os, sys
os.chdir(sys.argv[1] if len(sys.argv) > 1 else {cwd!r})
for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
          "JAX_COMPILATION_CACHE_MAX_SIZE", "LANDSCAPE_COMPILATION_CACHE", "LANDSCAPE_CACHE_DIR"):
    os.environ.pop(k, None)
os.environ["XDG_CACHE_HOME"] = {xdg!r}
import jax, jax.numpy as jnp
(jnp.ones(2) + 1).block_until_ready()  # JAX decides at its first compile whether to use a cache
import landscape  # the cache is on all the same
from landscape import _cache
out = {{"default": landscape.compilation_cache_status()}}
jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(3)).block_until_ready()  # a 10 ms program
d = out["default"]["dir"]
out["entries"] = len(os.listdir(d)) if os.path.isdir(d) else -1
out["cwd_files"] = sorted(os.listdir("."))
# the user's own setting wins and nothing else is touched
jax.config.update("jax_compilation_cache_dir", None)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_compilation_cache_dir", "/elsewhere/mine")
out["user"] = (_cache.enable(), landscape.compilation_cache_status())
# the switch
jax.config.update("jax_compilation_cache_dir", None)
os.environ["LANDSCAPE_COMPILATION_CACHE"] = "0"
out["off"] = (_cache.enable(), jax.config.jax_compilation_cache_dir, landscape.compilation_cache_status())
os.environ["LANDSCAPE_COMPILATION_CACHE"] = {chosen!r}
out["chosen"] = _cache.enable()
jax.config.update("jax_compilation_cache_dir", None)
os.environ["LANDSCAPE_COMPILATION_CACHE"] = "/proc/landscape-cannot-write-here"
out["unwritable"] = (_cache.enable(), landscape.compilation_cache_status()["source"])
print("RESULT", json.dumps(out))
"""


def test_cache_on_by_default_in_the_user_cache_dir(tmp_path):
    cwd, xdg, chosen = tmp_path / "work", tmp_path / "xdg", tmp_path / "chosen"
    cwd.mkdir()
    stdout = run_python(CODE.format(cwd=str(cwd), xdg=str(xdg), chosen=str(chosen)))
    out = json.loads(stdout.split("RESULT ", 1)[1])
    d = out["default"]
    assert d["dir"] == str(xdg / "landscape-ntk" / "jax") and d["source"] == "landscape default"
    assert d["min_compile_time_secs"] == 0.0
    assert out["entries"] >= 1, "the compiled program was not written to the cache"
    assert out["cwd_files"] == [], "nothing may be written into the working directory"
    got, status = out["user"]
    assert got == "/elsewhere/mine" and status["dir"] == "/elsewhere/mine"
    assert status["source"].startswith("set by the user") and status["min_compile_time_secs"] == 1.0
    got, config_dir, status = out["off"]
    assert got is None and config_dir is None and status["source"] == "off (LANDSCAPE_COMPILATION_CACHE=0)"
    assert out["chosen"] == str(chosen) and chosen.is_dir()
    got, source = out["unwritable"]
    assert got is None and source.startswith("off (cannot use the cache directory")


SAME = r"""
import json, os
import jax, numpy as np
from jax import monitoring
hits = [0]
monitoring.register_event_listener(lambda event, **kw: hits.__setitem__(0, hits[0] + (event == "/jax/compilation_cache/cache_hits")))
import landscape
from landscape import hessian
rng = np.random.default_rng(0)
data = {"x": rng.normal(size=(40, 8)).astype(np.float32), "y": rng.integers(0, 3, 40).astype(np.int32)}
m = landscape.make_model("mlp", input_shape=(8,), num_outputs=3, hidden=(6,), seed=0)
loss = landscape.make_loss_fn(m)
e = hessian.eigenvalues(loss, m.params, data, k=2, key=jax.random.key(0))
t = hessian.trace(loss, m.params, data, key=jax.random.key(0))
print("RESULT", json.dumps({"values": np.asarray(e.values).tolist(), "trace": float(t.estimate), "hits": hits[0],
                            "status": landscape.compilation_cache_status()["source"]}))
"""


def test_results_identical_with_and_without_the_cache(tmp_path):
    """Off, on with an empty cache (programs written), on again (programs read): bitwise the
    same eigenvalues and trace."""
    runs = {}
    for name, env in (("off", {"LANDSCAPE_COMPILATION_CACHE": "0"}),
                      ("cold", {"LANDSCAPE_COMPILATION_CACHE": str(tmp_path / "c")}),
                      ("warm", {"LANDSCAPE_COMPILATION_CACHE": str(tmp_path / "c")})):
        env = {**env, "JAX_COMPILATION_CACHE_DIR": ""}
        runs[name] = json.loads(run_python(SAME, env=env).split("RESULT ", 1)[1])
    assert runs["off"]["status"].startswith("off") and runs["off"]["hits"] == 0
    assert runs["warm"]["hits"] > 0, runs["warm"]
    for name in ("cold", "warm"):
        assert runs[name]["values"] == runs["off"]["values"] and runs[name]["trace"] == runs["off"]["trace"], name
