"""static/ ships as package data of callboard (callboard.static), and every file in it is shipped.

An install (`pip install .`) copies only the files that `[tool.setuptools.package-data]` names: a page's new
file of a kind the patterns miss would work from a checkout and 404 once installed. This catches that.
"""

from __future__ import annotations

import tomllib
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
