"""Every third-party module the hsnet package imports belongs to a distribution pyproject.toml
names (in `dependencies` or an extra): a module that is only there because something else pulls it
in (requests through mlflow) disappears when that something changes its own requirements."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_level_modules(package: Path) -> dict[str, str]:
    """{top-level module: first file importing it} for absolute imports anywhere in the package
    (module level and inside functions: lazily imported modules are dependencies too)."""
    found: dict[str, str] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        optional = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try) and _catches_import_error(node)
                    for statement in node.body for inner in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue  # `try: import x / except ImportError:` has a way without it
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _catches_import_error(node: ast.Try) -> bool:
    names = set()
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {t.id for t in types if isinstance(t, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    # PEP 508 name (normalised per PEP 503), before any extra, version or marker
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", r).group(0)).lower() for r in requirements}


def test_every_imported_distribution_is_declared():
    declared = _declared_distributions()
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, where in _imported_top_level_modules(ROOT / "hsnet").items():
        if module == "hsnet" or module in sys.stdlib_module_names or module == "__future__":
            continue
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [])}
        if not dists:
            continue  # not installed in this venv (e.g. kserve, only in the serving overlay): its extra names it
        if not dists & declared:
            undeclared[module] = (where, sorted(dists))
    assert not undeclared, f"imported by hsnet but not named in pyproject.toml: {undeclared}"
