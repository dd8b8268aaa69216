"""Where the pages live: `static/` at the top of the source tree, installed as package data `callboard.static`.

The folder stays where a reader looks for it (no build step), and setuptools maps it into the `callboard`
package at install time (`[tool.setuptools.package-dir]` in pyproject.toml), so a venv never gets a
top-level package named `static` that could clash with another distribution of that name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# A file every build of the pages has: proves a folder named static/ is ours, not another project's.
_MARKER = "wallboard.html"


def static_dir() -> Path:
    """The pages' folder as a real directory (aiohttp's static route serves from a directory).

    The source tree's folder comes first: in a checkout run with PYTHONPATH (or an editable install)
    that is the code being run, while an installed `callboard.static` may belong to another checkout.
    """
    source = Path(__file__).resolve().parent.parent / "static"
    if (source / _MARKER).is_file():
        return source
    installed = Path(str(resources.files("callboard.static")))
    if not (installed / _MARKER).is_file():
        raise FileNotFoundError(f"callboard's pages are missing: no {_MARKER} in {source} or {installed}")
    return installed


def read_page(name: str) -> str:
    """One page's HTML, read fresh each time (pages are small; an upgrade shows without a restart)."""
    return (static_dir() / name).read_text(encoding="utf-8")
