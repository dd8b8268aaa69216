"""What a fresh install gets: static/ as package data of callboard (callboard.static), every file in it, and
every third-party module the service imports as a declared dependency.

An install (`pip install .`) copies only the files that `[tool.setuptools.package-data]` names: a page's new
file of a kind the patterns miss would work from a checkout and 404 once installed. This catches that.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from callboard.assets import read_page, static_dir

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_under_static_is_package_data_of_callboard_static() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = project["tool"]["setuptools"]
    assert "static" not in setuptools["packages"], "no top-level package named static"
    assert setuptools["package-dir"]["callboard.static"] == "static"
    patterns = setuptools["package-data"]["callboard.static"]
    static = ROOT / "static"
    shipped = {p for pattern in patterns for p in static.glob(pattern) if p.is_file()}
    files = {p for p in static.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"}
    assert files - shipped == set(), f"add patterns to [tool.setuptools.package-data]: {sorted(files - shipped)}"


def test_the_pages_are_found_from_a_checkout() -> None:
    assert static_dir() == ROOT / "static"
    assert "wallboard.js" in read_page("wallboard.html") and "i18n.js" in read_page("agent.html")


# -- dependencies: a package only installed by hand on a developer's machine would pass every other test here
# and fail the newcomer's first `callboard demo`.
# Imported only when asked for, inside `try: ... except ImportError` (CALLBOARD_EVENT_LOOP=uvloop).
OPTIONAL = {"uvloop"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _canonical(re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0])


def _closure(names: set[str]) -> set[str]:
    """The declared distributions and everything they require, as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_requirement_name(r) for r in requires if "extra ==" not in r)
    return seen


def _service_imports() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    found: set[str] = set()
    for package in packages - {"callboard"} | {"callboard"}:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    local = packages | {"static", "bench", "tests"}
    return {m for m in found if m not in sys.stdlib_module_names and m not in local}


def test_every_third_party_import_of_the_service_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    allowed = _closure({_requirement_name(r) for r in project["project"]["dependencies"]})
    owners = metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_service_imports() - OPTIONAL):
        dists = {_canonical(d) for d in owners.get(module, [])}
        if not dists & allowed:
            undeclared[module] = sorted(dists) or ["(not installed)"]
    assert undeclared == {}, f"imported by the service but not in [project] dependencies: {undeclared}"
