"""ntk sits on landscape's foundation alone: what it imports, and what importing it loads."""

import ast
from pathlib import Path

from tests._util import REPO, run_python

NTK = REPO / "ntk"
# the analyses (and the layers above them): ntk never imports them
ANALYSES = {"hessian", "surface", "connect", "diagnostics", "plot", "report", "cli"}


def test_importing_ntk_loads_no_analysis():
    """In a fresh interpreter: the foundation module ``engine`` and then ``ntk`` load no
    analysis of ``landscape`` (and no matplotlib); the analyses still load on first use."""
    code = f"""
    import sys

    ANALYSES = {sorted(ANALYSES)!r}

    def loaded():
        return sorted(m for m in sys.modules
                      if m.split(".")[:2] in (["landscape", a] for a in ANALYSES))

    from landscape import engine
    assert not loaded(), ("from landscape import engine", loaded())
    import ntk
    assert not loaded(), ("import ntk", loaded())
    assert "matplotlib" not in sys.modules
    import landscape
    landscape.hessian  # lazy (PEP 562): loads now
    assert "landscape.hessian" in sys.modules
    print("ok")
    """
    assert run_python(code).strip().endswith("ok")


def _landscape_imports(path: Path):
    """``(line, imported module, names)`` of every import of ``landscape`` in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "landscape":
                    yield node.lineno, alias.name, ()
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "landscape"
        ):
            yield node.lineno, node.module, tuple(a.name for a in node.names)


def test_ntk_imports_only_public_foundation_names():
    """An AST scan of ntk/*.py: no ``import landscape`` (the package handle would reach the
    analyses lazily), no private ``landscape._*`` module or name, no analysis."""
    problems, seen = [], 0
    files = sorted(NTK.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        for line, module, names in _landscape_imports(path):
            seen += 1
            where = f"{path.relative_to(REPO)}:{line}"
            parts = module.split(".")
            if not names:
                problems.append(f"{where}: import {module} (use `from landscape import <module>`)")
                continue
            targets = parts[1:] + (list(names) if len(parts) == 1 else [])
            private = [p for p in parts[1:] if p.startswith("_")]
            private += [f"{module}.{n}" for n in names if n.startswith("_")]
            problems += [f"{where}: private {p} (from {module} import ...)" for p in private]
            for part in targets:
                if part in ANALYSES:
                    problems.append(f"{where}: analysis landscape.{part}")
    assert seen >= 10, "the scan found almost no landscape imports: is it reading ntk?"
    assert not problems, "\n".join(problems)


def test_ntk_modules_import_one_way():
    """The modules of ntk import each other (and landscape) at the top only, without a cycle
    (the layer descriptions and architectures below the analytic and empirical drivers)."""
    graph, deferred = {}, []
    for path in sorted(NTK.glob("*.py")):
        name = path.stem
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ntk"):
                mods = [node.module] if node.module != "ntk" else [f"ntk.{a.name}" for a in node.names]
                deps |= {m.split(".")[1] for m in mods if "." in m}
        graph[name] = deps
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    mods = (
                        [a.name for a in sub.names] if isinstance(sub, ast.Import)
                        else [sub.module or ""] if isinstance(sub, ast.ImportFrom) else []
                    )
                    if any(m.split(".")[0] in ("ntk", "landscape") for m in mods):
                        deferred.append(f"ntk/{path.name}:{sub.lineno} in {node.name}()")
    assert not deferred, "function-level imports of ntk or landscape: " + ", ".join(deferred)
    assert "_analytic" not in graph["_arch"] and "_arch" in graph["_analytic"]
    done, visiting = set(), []

    def visit(m):
        assert m not in visiting, "import cycle: " + " -> ".join([*visiting, m])
        if m in done:
            return
        visiting.append(m)
        for d in graph.get(m, ()):
            visit(d)
        visiting.pop()
        done.add(m)

    for m in graph:
        visit(m)
