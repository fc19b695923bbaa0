"""Embedded data sets (nothing is downloaded at run time) and a registry by name.

* ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1797 examples, 10 classes), as
  flat 64-vectors or 8x8x1 images (NHWC), with a fixed stratified train/test split and inputs
  standardised with the training set's per-pixel mean and standard deviation.
* ``"mnist1d"``: MNIST-1D (Greydanus 2020) generated locally by the ``mnist1d`` package's own
  generator with a fixed seed (never its download path), cached as ``.npz`` in the user cache
  directory.
* ``"teacher"``: a synthetic task labelled by a random teacher network, any size (regression or
  classification).
* ``"modular"``: modular arithmetic ``a op b = c (mod p)`` as token sequences ``[a, op, b, =]``
  labelled ``c`` (Power et al. 2022's grokking task), every pair split by a seed.
* ``"sort"``: random token sequences labelled per token by their sorted sequence (labels of
  shape ``(n, T)``, for per-token outputs).

Digits and MNIST-1D need nothing new to be patch sequences: ``make_model("transformer",
patch=...)`` cuts the images ``(8, 8, 1)`` (``flat=False``) or the signals ``(40,)`` into
patches itself.

A data set is a dict of arrays with a leading example axis: ``{"x": inputs, "y": targets}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from landscape import _provenance, _serialize
from landscape import validate as _validate

__all__ = ["Dataset", "load_data", "data_names", "register_data", "cache_dir"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of dict data sets plus what analyses need to know about them.

    Attributes:
      name: registry name.
      train, test: ``{"x": float array (n, ...), "y": int labels (n,) or float targets (n, k)}``.
      task: ``"classification"`` or ``"regression"``.
      num_outputs: number of classes (classification) or target dimension (regression).
      input_shape: shape of one input (without the example axis).
      spec: the loader's name and arguments (enough to regenerate it exactly).
      vocab_size: the number of token ids of integer token inputs (``make_model("transformer",
        vocab_size=...)``); ``None`` for floating inputs.
    """

    name: str
    train: dict
    test: dict
    task: str
    num_outputs: int
    input_shape: tuple
    spec: dict
    vocab_size: int | None = None

    @property
    def num_classes(self) -> int | None:
        return self.num_outputs if self.task == "classification" else None

    @property
    def hash(self) -> str:
        """Hash of train and test arrays (for provenance)."""
        return _provenance.data_hash({"train": self.train, "test": self.test})

    def __repr__(self):
        return (
            f"Dataset({self.name}: train {self.train['x'].shape}, test {self.test['x'].shape}, "
            f"{self.task}, num_outputs={self.num_outputs})"
        )


_REGISTRY: dict[str, Callable[..., Dataset]] = {}


def register_data(name: str, loader: Callable[..., Dataset]) -> None:
    """Register ``loader(**kwargs) -> Dataset`` under ``name``."""
    _REGISTRY[name] = loader


def data_names() -> list[str]:
    return sorted(_REGISTRY)


@_validate.public("landscape.load_data")
def load_data(name: str, **kwargs) -> Dataset:
    """Load a registered data set by name (``"digits"``, ``"mnist1d"``, ``"teacher"``,
    ``"modular"``, ``"sort"``).

    Raises:
      ValueError: unknown name (the message lists the registered names).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"landscape.load_data: unknown data set {name!r}; registered: {', '.join(data_names())}."
        )
    return _REGISTRY[name](**kwargs)


def cache_dir() -> Path:
    """The toolkit's per-user cache (the embedded data sets' arrays; compiled programs under
    ``jax/``): ``$LANDSCAPE_CACHE_DIR``, else the platform's location:
    ``$XDG_CACHE_HOME/landscape-ntk`` or ``~/.cache/landscape-ntk`` on Linux,
    ``~/Library/Caches/landscape-ntk`` on macOS, ``%LOCALAPPDATA%\\landscape-ntk\\cache`` on
    Windows. Raises ``RuntimeError`` when there is no home directory to put it in."""
    import sys

    env = os.environ.get("LANDSCAPE_CACHE_DIR")
    if env:
        return Path(env)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "landscape-ntk"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "landscape-ntk" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landscape-ntk"


def _standardise(train_x, test_x):
    mu = train_x.mean(axis=0)
    sd = train_x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (train_x - mu) / sd, (test_x - mu) / sd


def _float(dtype):
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"landscape.load_data: dtype must be a floating dtype; got {dtype!r}.")
    return dt


def _cached_arrays(name: str, key: dict, build: Callable[[], dict], *, cache: bool = True,
                   valid: Callable[[dict], bool] = lambda a: True) -> dict:
    """Arrays cached as ``.npz`` (no pickle) under :func:`cache_dir`, named by a digest of
    ``key``; a missing, unreadable or invalid file is rebuilt with ``build()`` (and saved when
    ``cache``; a read-only cache directory only costs the rebuild)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{digest}.npz"
    if cache:
        with contextlib.suppress(Exception):  # corrupt or foreign file: rebuilt below
            arrays = _serialize.load_tree(path)
            if valid(arrays):
                return arrays
    arrays = build()
    if cache:
        with contextlib.suppress(OSError):
            _serialize.save_tree(path, arrays, meta=key)
    return arrays


# --------------------------------------------------------------------------------------------
def _digits_split(test_fraction: float, seed: int) -> dict:
    """The raw digits (pixel values 0-16) and scikit-learn's stratified split of their indices.

    Cached as ``.npz`` under :func:`cache_dir`, keyed by the split and scikit-learn's version:
    importing scikit-learn costs about a second per process, more than the rest of a data load.
    A missing or unreadable cache is rebuilt from scikit-learn.
    """
    from importlib import metadata

    try:
        version = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        version = "unknown"
    key = dict(test_fraction=test_fraction, seed=seed, sklearn=version, v=1)

    def build():
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        y = d.target.astype(np.int32)
        tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y,
                                  random_state=seed)
        return {"x": d.data.astype(np.uint8), "y": y, "train": np.sort(tr), "test": np.sort(te)}

    return _cached_arrays(
        "digits", key, build,
        valid=lambda a: set(a) == {"x", "y", "train", "test"} and a["x"].shape == (1797, 64),
    )


# --------------------------------------------------------------------------------------------
def digits(
    *,
    flat: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    dtype: Any = np.float32,
) -> Dataset:
    """scikit-learn's 8x8 digits: 1797 examples, 10 classes, bundled with scikit-learn.

    Args:
      flat: 64-vectors (``True``) or 8x8x1 NHWC images.
      test_fraction: fraction held out, split stratified by class with ``random_state=seed``
        (defaults give 1437 train / 360 test examples).
      standardize: subtract the training mean and divide by the training standard deviation,
        per pixel (constant pixels are left centred).
      dtype: floating dtype of the inputs (float64 needs ``jax_enable_x64`` to stay float64).
    """
    dt = _float(dtype)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"landscape.load_data('digits'): test_fraction must be in (0, 1); got {test_fraction}."
        )
    raw = _digits_split(float(test_fraction), int(seed))
    x = raw["x"].astype(np.float64)
    y = raw["y"].astype(np.int32)
    tr, te = raw["train"], raw["test"]
    xtr, xte = x[tr], x[te]
    if standardize:
        xtr, xte = _standardise(xtr, xte)
    shape = (64,) if flat else (8, 8, 1)
    xtr = xtr.reshape((-1,) + shape).astype(dt)
    xte = xte.reshape((-1,) + shape).astype(dt)
    spec = dict(
        name="digits",
        flat=flat,
        test_fraction=test_fraction,
        seed=seed,
        standardize=standardize,
        dtype=str(dt),
    )
    return Dataset(
        "digits", {"x": xtr, "y": y[tr]}, {"x": xte, "y": y[te]}, "classification", 10, shape, spec
    )


# --------------------------------------------------------------------------------------------
def mnist1d(
    *,
    num_samples: int = 5000,
    train_split: float = 0.8,
    seed: int = 42,
    dtype: Any = np.float32,
    cache: bool = True,
) -> Dataset:
    """MNIST-1D generated offline with the ``mnist1d`` package's ``make_dataset``.

    The generator is called with the package's default arguments except ``num_samples``,
    ``train_split`` and ``seed`` (defaults: the package's own, giving 4000 train / 1000 test
    sequences of length 40). Its download path is never used. The generator reseeds Python's
    and NumPy's global random state; both are restored afterwards. The result is cached as
    ``.npz`` (no pickle) under :func:`cache_dir`.
    """
    dt = _float(dtype)
    key = dict(num_samples=int(num_samples), train_split=float(train_split), seed=int(seed), v=1)
    arrays = _cached_arrays(
        "mnist1d", key, lambda: _generate_mnist1d(num_samples, train_split, seed), cache=cache
    )
    spec = dict(
        name="mnist1d", num_samples=num_samples, train_split=train_split, seed=seed, dtype=str(dt)
    )
    train = {"x": arrays["x"].astype(dt), "y": arrays["y"].astype(np.int32)}
    test = {"x": arrays["x_test"].astype(dt), "y": arrays["y_test"].astype(np.int32)}
    return Dataset("mnist1d", train, test, "classification", 10, (train["x"].shape[1],), spec)


def _generate_mnist1d(num_samples, train_split, seed) -> dict:
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        from mnist1d.data import get_dataset_args, make_dataset  # imports matplotlib: keep lazy

        args = get_dataset_args()
        args.num_samples = int(num_samples)
        args.train_split = float(train_split)
        args.seed = int(seed)
        ds = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(ds[k]) for k in ("x", "y", "x_test", "y_test")}


# --------------------------------------------------------------------------------------------
def teacher(
    *,
    num_train: int = 1024,
    num_test: int = 256,
    input_dim: int = 16,
    hidden: int = 64,
    depth: int = 2,
    num_outputs: int = 1,
    task: str = "regression",
    noise: float = 0.0,
    seed: int = 0,
    dtype: Any = np.float32,
) -> Dataset:
    """A synthetic task from a random teacher network (tanh MLP, LeCun-normal weights).

    Inputs are standard normal in ``input_dim`` dimensions. For ``task="regression"`` targets
    are the teacher's ``num_outputs`` outputs plus Gaussian ``noise``; for
    ``"classification"`` labels are the arg-max of ``num_outputs`` (>= 2) teacher logits
    (noise added to the logits before the arg-max).
    """
    if task not in ("regression", "classification"):
        raise ValueError(
            f"landscape.load_data('teacher'): task must be 'regression' or 'classification'; got {task!r}."
        )
    for nm, v in (
        ("num_train", num_train),
        ("num_test", num_test),
        ("input_dim", input_dim),
        ("hidden", hidden),
        ("num_outputs", num_outputs),
    ):
        if int(v) <= 0:
            raise ValueError(f"landscape.load_data('teacher'): {nm} must be positive; got {v}.")
    if task == "classification" and num_outputs < 2:
        raise ValueError("landscape.load_data('teacher'): classification needs num_outputs >= 2.")
    dt = _float(dtype)
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    x = rng.standard_normal((n, input_dim))
    h = x
    widths = [input_dim] + [hidden] * depth
    for i in range(depth):
        w = rng.standard_normal((widths[i], widths[i + 1])) / np.sqrt(widths[i])
        h = np.tanh(h @ w)
    w = rng.standard_normal((widths[-1], num_outputs)) / np.sqrt(widths[-1])
    f = h @ w
    if noise:
        f = f + noise * rng.standard_normal(f.shape)
    y = f.astype(dt) if task == "regression" else np.argmax(f, axis=1).astype(np.int32)
    x = x.astype(dt)
    spec = dict(
        name="teacher",
        num_train=num_train,
        num_test=num_test,
        input_dim=input_dim,
        hidden=hidden,
        depth=depth,
        num_outputs=num_outputs,
        task=task,
        noise=noise,
        seed=seed,
        dtype=str(dt),
    )
    return Dataset(
        "teacher",
        {"x": x[:num_train], "y": y[:num_train]},
        {"x": x[num_train:], "y": y[num_train:]},
        task,
        num_outputs,
        (input_dim,),
        spec,
    )


# --------------------------------------------------------------------------------------------
_MOD_OPS = {
    "+": lambda a, b, p: (a + b) % p,
    "-": lambda a, b, p: (a - b) % p,
    "*": lambda a, b, p: (a * b) % p,
    "/": lambda a, b, p: (a * pow(int(b), p - 2, p)) % p,
}


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % q for q in range(2, int(p**0.5) + 1))


def _check_count(where: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _check_fraction(where: str, name: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not (0.0 < float(value) < 1.0)
    ):
        raise ValueError(f"{where}: {name} must be in (0, 1); got {value!r}.")
    return float(value)


def modular(*, p: int = 97, op: str = "+", train_fraction: float = 0.5, seed: int = 0) -> Dataset:
    """Modular arithmetic as token sequences (Power et al. 2022, the grokking task).

    Every equation ``a op b = c (mod p)`` with ``a, b`` in ``[0, p)`` (``b != 0`` for ``"/"``,
    the product with ``b``'s inverse) is the sequence ``[a, op, b, =]`` of token ids, numbers
    ``0..p-1``, ``op`` = ``p``, ``=`` = ``p + 1`` (``vocab_size = p + 2``), labelled ``c``
    (``p`` classes): the label belongs to the last position (``make_model("transformer",
    vocab_size=p + 2, pool="last", causal=True)``, or ``pool="mean"``). The equations are
    shuffled by ``seed`` and the first ``round(train_fraction * n)`` are the training set.

    Args:
      p: the modulus (``>= 2``; prime for ``"/"``).
      op: ``"+"``, ``"-"``, ``"*"`` or ``"/"``.
      train_fraction: fraction of all equations in the training set, in ``(0, 1)``.
      seed: the split's seed (NumPy ``default_rng``).

    Returns:
      A :class:`Dataset` with ``x`` int32 ``(n, 4)``, ``y`` int32 ``(n,)``, ``num_outputs =
      p``, ``vocab_size = p + 2``.

    References:
      Power, Burda, Edwards, Babuschkin and Misra (2022), Grokking: generalization beyond
      overfitting on small algorithmic datasets.
    """
    where = "landscape.load_data('modular')"
    p = _check_count(where, "p", p, 2)
    if op not in _MOD_OPS:
        raise ValueError(f"{where}: op must be one of {sorted(_MOD_OPS)}; got {op!r}.")
    if op == "/" and not _is_prime(p):
        raise ValueError(f"{where}: op='/' needs a prime p (every b != 0 invertible); got p={p}.")
    frac = _check_fraction(where, "train_fraction", train_fraction)
    a, b = (g.ravel() for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij"))
    if op == "/":
        a, b = a[b != 0], b[b != 0]
    c = np.array([_MOD_OPS[op](int(i), int(j), p) for i, j in zip(a, b)], np.int64)
    x = np.stack([a, np.full_like(a, p), b, np.full_like(a, p + 1)], axis=1).astype(np.int32)
    y = c.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train = min(max(int(round(frac * len(y))), 1), len(y) - 1)
    tr, te = order[:n_train], order[n_train:]
    spec = dict(name="modular", p=p, op=op, train_fraction=frac, seed=seed)
    return Dataset(
        "modular",
        {"x": x[tr], "y": y[tr]},
        {"x": x[te], "y": y[te]},
        "classification",
        p,
        (4,),
        spec,
        vocab_size=p + 2,
    )


def sort(
    *,
    length: int = 8,
    vocab_size: int = 10,
    num_train: int = 1024,
    num_test: int = 256,
    seed: int = 0,
) -> Dataset:
    """Sorting: random token sequences labelled per position by the sorted sequence.

    ``x`` are ``length`` tokens drawn uniformly from ``[0, vocab_size)`` (NumPy
    ``default_rng(seed)``), ``y = sort(x)`` along the sequence: integer labels of shape
    ``(n, length)``, one class per token id, for per-token outputs
    (``make_model("transformer", vocab_size=vocab_size, pool="none")``, whose outputs are
    ``(n, length, vocab_size)``; :func:`landscape.make_loss_fn`'s cross-entropy then averages
    over examples and positions). Every position must see the whole sequence: use the
    bidirectional (non-causal) encoder.

    Returns:
      A :class:`Dataset` with ``x`` int32 ``(n, length)``, ``y`` int32 ``(n, length)``,
      ``num_outputs = vocab_size = vocab_size``.
    """
    where = "landscape.load_data('sort')"
    length = _check_count(where, "length", length, 1)
    vocab_size = _check_count(where, "vocab_size", vocab_size, 2)
    num_train = _check_count(where, "num_train", num_train, 1)
    num_test = _check_count(where, "num_test", num_test, 1)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab_size, (num_train + num_test, length)).astype(np.int32)
    y = np.sort(x, axis=1).astype(np.int32)
    spec = dict(
        name="sort",
        length=length,
        vocab_size=vocab_size,
        num_train=num_train,
        num_test=num_test,
        seed=seed,
    )
    return Dataset(
        "sort",
        {"x": x[:num_train], "y": y[:num_train]},
        {"x": x[num_train:], "y": y[num_train:]},
        "classification",
        vocab_size,
        (length,),
        spec,
        vocab_size=vocab_size,
    )


register_data("digits", digits)
register_data("mnist1d", mnist1d)
register_data("teacher", teacher)
register_data("modular", modular)
register_data("sort", sort)
