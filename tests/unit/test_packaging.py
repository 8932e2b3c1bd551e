"""What ``pip install .`` ships: every package of the tree, and the contracts in ``schemas/`` as package
data (``pipeline.schema.definitions``), so that a non-editable install and the container image find
them. The install itself (a fresh venv, ``imtel worker --help``) is checked by hand in the closing note
of the session that made the package non-editable; this test keeps the declaration true."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_of_the_tree_is_declared() -> None:
    tree = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pipeline").rglob("__init__.py")}
    assert set(CONFIG["packages"]) == tree | {"pipeline.schema.definitions"}


def test_the_contracts_ship_as_package_data() -> None:
    assert CONFIG["package-dir"] == {"pipeline.schema.definitions": "schemas"}
    patterns = CONFIG["package-data"]["pipeline.schema.definitions"]
    shipped = {p for pattern in patterns for p in (ROOT / "schemas").glob(pattern)}
    needed = {p for p in (ROOT / "schemas").rglob("*") if p.is_file()}
    assert needed <= shipped, f"not shipped: {sorted(str(p.relative_to(ROOT)) for p in needed - shipped)}"
