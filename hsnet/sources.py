"""The hsnet sources a step runs: a module and every hsnet module it imports, transitively.

Read from the source text (``ast``), not from ``sys.modules``, so the answer is the same whatever
else the process imported: it is what a step's result can depend on. Two things use it: a
checkpoint's ``code_version`` (a killed run resumes after an edit to code it doesn't run, and
trains from the start after an edit to code it does) and the crop record's reuse key; the test of
dvc.yaml holds each stage's deps to it. The caches (crops, decoded tensors, image inspections) are
keyed by the versions of the libraries that make their contents as well (``library_versions``).
"""
from __future__ import annotations

import ast
import csv
import hashlib
import sys
from importlib import metadata
from pathlib import Path, PurePosixPath

PACKAGE = Path(__file__).resolve().parent  # the hsnet package folder that runs


def _module_file(name: str, root: Path) -> Path | None:
    """The file of the dotted hsnet module ``name`` under the package folder ``root``; None if none."""
    path = root.parent.joinpath(*name.split("."))
    for f in (path / "__init__.py", path.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def imports(path: Path, root: Path = PACKAGE) -> set[Path]:
    """The hsnet module files ``path`` imports, anywhere in it (a function's import counts),
    relative or absolute; a package's ``__init__.py`` counts for each module imported from it."""
    package = ".".join(path.relative_to(root.parent).parent.parts)
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == root.name:
                found |= {f for i in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:i]), root))}
    return found


def closure(module: str, root: Path = PACKAGE) -> list[str]:
    """``module`` (dotted, e.g. ``hsnet.train``) and the hsnet modules it imports, transitively: paths
    relative to the folder holding the package (``hsnet/train.py``), sorted."""
    first = _module_file(module, root)
    if first is None:
        raise ValueError(f"no module {module} under {root}")
    seen: set[Path] = set()
    todo = [first]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += sorted(imports(f, root) - seen)
    return sorted(f.relative_to(root.parent).as_posix() for f in seen)


def code_version(module: str, root: Path | None = None) -> str:
    """A version of the code ``module`` runs (``hsnet.train``; in the package folder ``root``, else the
    one that runs): the sha256 of the paths and contents of its ``closure``. The same in a checkout
    and in the image built from it, wherever it lies; an edit to code the module doesn't run
    (``serve.py`` for training) leaves it as it was; bytecode doesn't count."""
    root = Path(root) if root is not None else PACKAGE
    if _module_file(module, root) is None and root.parent.joinpath(*module.split(".")).with_suffix(".pyc").is_file():
        # an install of bytecode alone (compileall -b, sources dropped): no imports to read, so the
        # version is of every file the package holds, which changes with any of them
        files = sorted(f.relative_to(root.parent).as_posix() for f in root.rglob("*")
                       if f.is_file() and "__pycache__" not in f.parts)
    else:
        files = closure(module, root)
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (root.parent / name).read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()[:16]


# Python 3.11's rule, which _provides reads itself; 3.12 changed it (every file counts, not only .py
# files; names with a dot and files gone from the disk are left out): there, the standard call
_READ_ITSELF = sys.version_info[:2] == (3, 11)


def _provides(dist: metadata.Distribution) -> set[str]:
    """The top-level import names ``dist`` provides, as Python 3.11's
    ``importlib.metadata.packages_distributions`` reads them (its top_level.txt, else the first part
    of each ``.py`` file it installed), from the raw text: that call builds a path object for each of
    torch's files and parses every distribution's METADATA, paid by each step that keys a cache
    (the times: docs/performance.md, "The test suite")."""
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return set(declared)
    record = dist.read_text("RECORD")
    files = ([row[0] for row in csv.reader(record.splitlines()) if row] if record is not None
             else map(str, dist.files or ()))  # an egg-info or other layout: the standard reader's file list
    found = set()
    for name in files:
        if name.endswith(".py"):  # most of torch's files are not: no path object made for them
            path = PurePosixPath(name)
            if path.suffix == ".py":
                found.add(path.parts[0] if len(path.parts) > 1 else path.stem)
    return found


def library_versions(modules: tuple[str, ...]) -> dict[str, str]:
    """The installed versions of what provides the top-level imports ``modules`` (``PIL``,
    ``torch``), by distribution: what a cached result depends on besides hsnet's code (a Pillow
    upgrade can decode or resize differently). Asked by import name, not distribution name, so
    that a drop-in build (Pillow-SIMD for Pillow) is seen, and its upgrades too. A module no
    installed distribution lists (an editable install: its record holds a .pth) is looked up as a
    distribution of its own name; one that nothing installed provides is ``{module: "none"}``."""
    providers: dict[str, set[str]] = {module: set() for module in modules}  # {"PIL": {"pillow"}, ...}
    if _READ_ITSELF:
        for dist in metadata.distributions():
            for module in _provides(dist) & providers.keys():
                providers[module].add(dist.metadata["Name"])
    else:
        standard = metadata.packages_distributions()
        for module in modules:
            providers[module].update(standard.get(module, ()))
    found = {}
    for module in modules:
        names = sorted(providers[module])
        if not names:  # an editable install records a .pth, not the module: its name taken as the distribution's
            try:
                found[module] = metadata.version(module)
            except metadata.PackageNotFoundError:
                found[module] = "none"
        for name in names:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:  # removed since the scan
                found[name] = "none"
    return found
