"""One store for every resumable job, and the chunk driver that fills it.

A :class:`Store` is a directory that holds the finished parts of long jobs: the chunks of a grid
of loss values, the blocks of a kernel matrix, the probes of a spectral density, the state of a
curve being trained, the sections of a report. Everything it writes is atomic (a temporary file
in the same directory, then ``os.replace``), so an interrupted job never leaves a half-written
entry: an entry that exists is finished.

A store is *bound* to a description of what is computed (:meth:`Store.bind`: the function, its
settings, hashes of its inputs, how the work is split into chunks). Reopening it for the same
job resumes; reopening it for another job raises a ``ValueError`` that lists the differences,
unless the store was opened with ``overwrite=True``, in which case its own entries are deleted
(never anything it did not write). A directory that is not empty and was not written by a store
is refused, untouched.

:func:`run_chunks` is the chunk driver every chunked analysis uses (grid evaluation, kernel
blocks, density probes): it loads the chunks a store already holds, computes the others in
groups (one group per compiled call, e.g. one block per device), saves each as it finishes,
shows progress (``"131/229 loaded, 0/98 computed"``) and, on Ctrl-C, says what was saved.

Every resumable public function takes ``store=``: a path (a new :class:`Store`) or a
:class:`Store` (to set ``overwrite=True``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from landscape import _provenance, _serialize
from landscape import validate as _validate

PyTree = Any

__all__ = ["Store", "as_store", "progress_bar", "run_chunks"]

STORE_VERSION = 2  # 2: the manifest lists every entry (a store only reads and deletes those)
"""Bumped when the layout of stored entries changes; stores of another version are refused."""

MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_text(obj) -> str:
    """``repr``-like text of a static description that is the same in every process (memory
    addresses such as ``<function f at 0x7f..>`` removed); texts over 2000 characters keep
    their first 1000 and a digest of the whole, so long descriptions never collide.

    Python functions inside ``obj`` (as leaves, in ``functools.partial`` objects, or in a
    pytree definition such as ``jax.tree_util.Partial``'s) are described by their code, their
    defaults and the values they close over, not by their name alone: two closures
    ``make(1.0)`` and ``make(100.0)`` differ. Module globals a function reads are not part of
    the description.
    """
    text = _ADDRESS.sub("", repr(obj))
    fns: list = []
    _functions_in(obj, fns, set())
    if fns:
        memo: dict = {}
        h = hashlib.sha256()
        for f in fns:
            h.update(_function_digest(f, memo).encode())
        text += f" code:{h.hexdigest()[:16]}"
    if len(text) <= 2000:
        return text
    return text[:1000] + " ...sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _functions_in(obj, out: list, seen: set, depth: int = 0) -> None:
    if depth > 8 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, types.FunctionType):
        out.append(obj)
    elif isinstance(obj, types.MethodType):
        _functions_in(obj.__func__, out, seen, depth + 1)
    elif isinstance(obj, functools.partial):
        for x in (obj.func, *obj.args, *obj.keywords.values()):
            _functions_in(x, out, seen, depth + 1)
    elif isinstance(obj, (tuple, list, set, frozenset)):
        for x in obj:
            _functions_in(x, out, seen, depth + 1)
    elif isinstance(obj, dict):
        for x in obj.values():
            _functions_in(x, out, seen, depth + 1)
    elif type(obj).__name__ == "PyTreeDef":
        with contextlib.suppress(Exception):  # the node's static data, then its children
            node = obj.node_data()
            if node is not None:
                _functions_in(node[1], out, seen, depth + 1)
            for c in obj.children():
                _functions_in(c, out, seen, depth + 1)


def _value_text(v, memo: dict, depth: int = 0) -> str:
    """Text of a constant, default or closed-over value that is the same in every process:
    sets in sorted order (their iteration order follows the per-process string hash seed),
    arrays by a digest of their bytes, functions by :func:`_function_digest`."""
    if depth > 8:
        return "<deep>"
    if isinstance(v, types.FunctionType):
        return _function_digest(v, memo)
    if isinstance(v, types.CodeType):
        return _code_text(v, memo, depth + 1)
    if isinstance(v, types.MethodType):
        return f"method({_function_digest(v.__func__, memo)}, {type(v.__self__).__qualname__})"
    if isinstance(v, functools.partial):
        return (f"partial({_value_text(v.func, memo, depth + 1)}, "
                f"{_value_text(v.args, memo, depth + 1)}, {_value_text(v.keywords, memo, depth + 1)})")
    if isinstance(v, (tuple, list)):
        inner = ", ".join(_value_text(x, memo, depth + 1) for x in v)
        return f"{type(v).__name__}({inner})"
    if isinstance(v, (set, frozenset)):
        return f"{type(v).__name__}({sorted(_value_text(x, memo, depth + 1) for x in v)})"
    if isinstance(v, dict):
        items = sorted((_value_text(k, memo, depth + 1), _value_text(x, memo, depth + 1)) for k, x in v.items())
        return f"dict({items})"
    if hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, type):
        with contextlib.suppress(Exception):
            return f"array:{_provenance.data_hash(v)}"  # shape, dtype and bytes
    return _ADDRESS.sub("", repr(v))


def _code_text(code, memo: dict, depth: int = 0) -> str:
    consts = [_value_text(c, memo, depth + 1) for c in code.co_consts]
    return f"{code.co_code.hex()}|{code.co_names}|{code.co_varnames}|{consts}"


def _function_digest(f, memo: dict) -> str:
    """``module.qualname:digest`` of a function's code, defaults and closed-over values (each
    function described once per call: shared and recursive references cost nothing more)."""
    key = id(f)
    if key in memo:
        return memo[key]
    memo[key] = f"<recursive {f.__qualname__}>"
    cells = []
    for c in f.__closure__ or ():
        try:
            cells.append(_value_text(c.cell_contents, memo))
        except ValueError:  # an empty cell
            cells.append("<empty>")
    body = (f"{_code_text(f.__code__, memo)}|{_value_text(f.__defaults__ or (), memo)}|"
            f"{_value_text(f.__kwdefaults__ or {}, memo)}|{cells}")
    memo[key] = f"{f.__module__}.{f.__qualname__}:{hashlib.sha256(body.encode()).hexdigest()[:16]}"
    return memo[key]


def _strip_addresses(obj):
    if isinstance(obj, str):
        return _ADDRESS.sub("", obj)
    if isinstance(obj, dict):
        return {k: _strip_addresses(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_addresses(v) for v in obj]
    return obj


def _digest(meta) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b), key=str):
        x, y = a.get(k), b.get(k)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            out.extend(_diff(x, y, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}: {x!r} -> {y!r}")
    return out


def describe_differences(old: dict, new: dict, limit: int = 600) -> str:
    """``key: old -> new`` for every differing (nested) key, shortened to ``limit`` characters."""
    text = "; ".join(_diff(old, new)) or "none"
    return text if len(text) <= limit else text[:limit] + "..."


class Store:
    """A directory of finished results of resumable jobs (atomic entries, bound to the job).

    Args:
      path: the directory (created when the store is bound).
      overwrite: when the directory holds another job's entries, delete them (only the
        store's own: ``.npz`` entries, the directories it wrote and its sub-stores) instead of
        raising.

    Example:
      >>> store = landscape.Store("runs/plane")          # or store="runs/plane"
      >>> res = landscape.surface.slice_2d(loss_fn, params, data, dirs, store=store)
      >>> # interrupted? call again with the same arguments: finished chunks are loaded
    """

    @_validate.public("landscape.Store")
    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"{_validate.where()}: store must be a path or a landscape.Store; got "
                f"{type(path).__name__}."
            )
        if not isinstance(overwrite, bool):
            raise TypeError(f"{_validate.where()}: overwrite must be a bool; got {overwrite!r}.")
        self.path = Path(path)
        self.overwrite = overwrite
        self.meta: dict | None = None
        self._digest: str | None = None
        self._own: dict = {"entries": [], "dirs": [], "children": []}

    def __repr__(self):
        state = "unbound" if self.meta is None else f"bound to {self.meta.get('job', '?')}"
        return f"Store({str(self.path)!r}, {state}, entries={len(self.entries())})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- binding -------------------------------------------------------------------------------
    @_validate.public("landscape.Store.bind")
    def bind(self, meta: dict) -> Store:
        """Bind the store to the job described by ``meta`` (JSON-able; conventionally with a
        ``"job"`` key naming the public function). Returns ``self``.

        Raises:
          ValueError: the directory holds another job's entries (the message lists the
            differences) and ``overwrite`` is False, or it is a non-empty directory that no
            store wrote.
        """
        meta = _strip_addresses(_serialize.to_jsonable({"store_version": STORE_VERSION, **meta}))
        digest = _digest(meta)
        manifest = self.path / MANIFEST
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{_validate.where()}: store {self.path} exists and is not a directory.")
        own: dict = {"entries": [], "dirs": [], "children": []}
        if manifest.exists():
            old = _serialize.load_json(manifest)
            if old.get("digest") != digest:
                if not self.overwrite:
                    raise ValueError(
                        f"{_validate.where()}: the store {self.path} holds results of another job "
                        f"(differences: {describe_differences(old.get('meta', {}), meta)}); use "
                        "another directory, or landscape.Store(path, overwrite=True) to replace "
                        "them."
                    )
                self.clear()
            else:
                own = {k: list(old.get(k, [])) for k in own}
        elif self.path.exists() and any(self.path.iterdir()):
            raise ValueError(
                f"{_validate.where()}: {self.path} is not empty and was not written by a "
                "landscape store (no manifest.json); choose a new or empty directory. Nothing "
                "was deleted."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"digest": digest, "meta": meta, **own}
        # a resumed job leaves its store's files untouched: the manifest is rewritten only when
        # it changes
        if not manifest.exists() or _serialize.load_json(manifest) != _serialize.to_jsonable(record):
            _serialize.save_json(manifest, record)
        self.meta, self._digest, self._own = meta, digest, own
        return self

    def _record(self, kind: str, name: str) -> None:
        """Note ``name`` in the manifest (before it is written: a store only ever reads and
        deletes what its manifest names). Refuses when another job has re-bound the directory
        since this store was bound (its entries would be mixed with that job's)."""
        manifest = self.path / MANIFEST
        info = _serialize.load_json(manifest) if manifest.exists() else {}
        if info.get("digest") != self._digest:
            raise RuntimeError(
                f"landscape.Store: {self.path} was re-bound to another job (or its manifest "
                "removed) after this store was bound; nothing was written. Bind a store to one "
                "job at a time."
            )
        names = info.setdefault(kind, [])
        if name not in names:
            names.append(name)
            _serialize.save_json(manifest, info)
        if name not in self._own[kind]:
            self._own[kind].append(name)

    def child(self, name: str) -> Store:
        """A sub-store in ``path/name`` (bind it separately), with the same ``overwrite``."""
        _check_name(name)
        if self.meta is not None:
            self._record("children", name)
        return Store(self.path / name, overwrite=self.overwrite)

    # -- entries -------------------------------------------------------------------------------
    def _entry(self, name: str) -> Path:
        return self.path / f"{_check_name(name)}.npz"

    def _require_bound(self):
        if self.meta is None:
            raise RuntimeError("landscape.Store: bind(meta) the store before using its entries.")

    def has(self, name: str) -> bool:
        """Whether a finished entry ``name`` of this job exists (a file the manifest does not
        name, e.g. left by an older layout, is not one)."""
        return name in self._own["entries"] and self._entry(name).exists()

    def save(self, name: str, value: PyTree, *, meta: dict | None = None) -> Path:
        """Atomically write a pytree of arrays, or a :class:`landscape.Result`, as ``name``."""
        self._require_bound()
        path = self._entry(name)
        self._record("entries", name)
        if hasattr(value, "save") and hasattr(type(value), "load"):
            return value.save(path)
        return _serialize.save_tree(path, _serialize.to_host(value), meta=meta)

    def load(self, name: str, cls=None):
        """The entry ``name``: a pytree, or an instance of the :class:`landscape.Result` class
        ``cls`` it was saved from."""
        if cls is not None:
            return cls.load(self._entry(name))
        return _serialize.load_tree(self._entry(name))

    def load_with_meta(self, name: str):
        """``(tree, meta)`` of an entry saved with ``meta=``."""
        return _serialize.load_tree(self._entry(name), with_meta=True)

    def entries(self) -> list[str]:
        """Names of the finished ``.npz`` entries."""
        if not self.path.is_dir():
            return []
        return sorted(p.stem for p in self.path.glob("*.npz") if not p.name.startswith("."))

    def save_dir(self, name: str, write: Callable[[Path], Any]) -> Path:
        """Atomically create the directory entry ``name``: ``write(tmp_dir)`` fills a temporary
        directory, which is then renamed (e.g. a run saved with :func:`landscape.save_run`)."""
        self._require_bound()
        final = self.path / _check_name(name)
        self._record("dirs", name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.path))
        try:
            write(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def has_dir(self, name: str) -> bool:
        return name in self._own["dirs"] and (self.path / _check_name(name)).is_dir()

    def clear(self) -> None:
        """Delete the store's own entries: the ``.npz`` entries, directories and sub-stores its
        manifest names, and its temporary files; nothing else is touched."""
        manifest = self.path / MANIFEST
        if not manifest.exists():
            return
        info = _serialize.load_json(manifest)
        entries, dirs = info.get("entries", []), info.get("dirs", [])
        for name in entries:
            (self.path / f"{name}.npz").unlink(missing_ok=True)
        for name in dirs:  # directory entries: written whole by save_dir (atomic rename)
            if (self.path / name).is_dir():
                shutil.rmtree(self.path / name)
        for name in info.get("children", []):  # sub-stores: their own entries only
            sub = self.path / name
            if (sub / MANIFEST).exists():
                Store(sub).clear()
                if [q.name for q in sub.iterdir()] == [MANIFEST]:  # nothing else left in it
                    (sub / MANIFEST).unlink()
                    sub.rmdir()
                # else its emptied manifest stays: the directory is still a store's
        # interrupted atomic writes of the store's own entries, by their exact temporary names
        temp = [re.compile(rf"\.{re.escape(n)}\.npz\.[^/]+\.tmp") for n in entries]
        temp += [re.compile(rf"\.{re.escape(n)}\.[A-Za-z0-9_]{{8}}") for n in dirs]
        for p in self.path.iterdir():
            if p.name.startswith(".") and any(r.fullmatch(p.name) for r in temp):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        for k in ("entries", "dirs", "children"):
            info[k] = []
        _serialize.save_json(manifest, info)
        if self._digest is not None and info.get("digest") == self._digest:
            self._own = {"entries": [], "dirs": [], "children": []}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"landscape.Store: entry names are letters, digits, '_', '.', '-' (not starting with "
            f"'.' or '-'); got {name!r}."
        )
    return name


def as_store(store, meta: dict | None = None) -> Store | None:
    """``store=`` argument of a public function: ``None``, a path or a :class:`Store`; bound to
    ``meta`` when given."""
    if store is None:
        return None
    if not isinstance(store, Store):
        store = Store(store)
    if meta is not None:
        store.bind(meta)
    return store


# ---------------------------------------------------------------------------------------------
# Progress and the chunk driver
# ---------------------------------------------------------------------------------------------
def progress_bar(total: int, *, desc: str, unit: str = "chunk", loaded: int = 0, enabled: bool = True):
    """A tqdm bar over the ``total`` chunks still to compute, or ``None`` when disabled or
    nothing is left; with ``loaded`` chunks restored from a store the bar says so
    (``"slice_2d (train): 131/229 loaded, 0/98 computed"``)."""
    if not enabled or total <= 0:
        return None
    from tqdm.auto import tqdm

    if loaded:
        fmt = (
            f"{{desc}}: {loaded}/{loaded + total} loaded, {{n_fmt}}/{{total_fmt}} computed "
            "[{elapsed}<{remaining}]"
        )
        return tqdm(total=total, desc=desc, unit=unit, bar_format=fmt)
    return tqdm(total=total, desc=desc, unit=unit)


def chunk_name(i: int) -> str:
    return f"chunk-{i:06d}"


# whether run_chunks prints its own line when interrupted (a caller that says what was saved
# itself, like ``landscape study``, turns it off with quiet_interrupts())
_INTERRUPT_NOTES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "landscape_store_interrupt_notes", default=True)


@contextlib.contextmanager
def quiet_interrupts():
    """Inside this block :func:`run_chunks` does not print its "interrupted; k/n chunks are
    saved" line on Ctrl-C (the caller reports what was saved); the chunks are saved as always."""
    token = _INTERRUPT_NOTES.set(False)
    try:
        yield
    finally:
        _INTERRUPT_NOTES.reset(token)


def run_chunks(
    compute: Callable[[Sequence[int]], Sequence[PyTree]],
    chunks: int | Sequence[int],
    *,
    store: Store | None = None,
    group: int = 1,
    progress: bool = False,
    desc: str = "chunks",
    unit: str = "chunk",
) -> list[PyTree]:
    """Compute chunks, resuming from ``store``.

    Args:
      compute: ``compute(ids) -> outputs`` for up to ``group`` chunk ids at once (one compiled
        call, e.g. one kernel block per device); outputs are host pytrees.
      chunks: how many chunks (ids ``0 .. chunks - 1``), or the chunk ids in the order to
        compute them (each id names one store entry).
      store: a bound :class:`Store`: chunks it holds are loaded, new ones saved as they finish.
      group: chunks per call of ``compute``.
      progress: show a progress bar over the chunks to compute.
      desc, unit: the bar's label and unit.

    Returns:
      The outputs, in the order of the ids.

    On ``KeyboardInterrupt`` the chunks finished so far are already saved; a message says how
    many and where, and the interrupt propagates.
    """
    ids_all = list(range(chunks)) if isinstance(chunks, int) else [int(i) for i in chunks]
    num_chunks = len(ids_all)
    results: dict[int, Any] = {}
    todo = []
    for i in ids_all:
        if store is not None and store.has(chunk_name(i)):
            results[i] = store.load(chunk_name(i))
        else:
            todo.append(i)
    if progress and not todo and num_chunks:
        print(f"{desc}: {num_chunks}/{num_chunks} loaded from {store.path}, nothing to compute",
              file=sys.stderr)
    bar = progress_bar(len(todo), desc=desc, unit=unit, loaded=num_chunks - len(todo), enabled=progress)
    done = 0
    try:
        for k in range(0, len(todo), group):
            ids = todo[k : k + group]
            outs = compute(ids)
            for i, out in zip(ids, outs):
                results[i] = out
                if store is not None:
                    store.save(chunk_name(i), out)
                done += 1
            if bar is not None:
                bar.update(len(ids))
    except KeyboardInterrupt:
        if store is not None and _INTERRUPT_NOTES.get():
            saved = num_chunks - len(todo) + done
            print(
                f"\n{desc}: interrupted; {saved}/{num_chunks} chunks are saved in {store.path}. "
                "Call again with the same arguments and store to resume.",
                file=sys.stderr,
            )
        raise
    finally:
        if bar is not None:
            bar.close()
    return [results[i] for i in ids_all]
