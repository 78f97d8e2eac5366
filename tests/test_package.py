"""The installable distribution: what a plain (not editable) install carries.

A Ray cluster's nodes, a GPU box or a user's `pip install chimera-provenance` run from the wheel, not from
this tree, so every file the packages read at run time (the marks model, the web page) must be in it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_every_file_the_packages_read(tmp_path):
    data = sorted(p.relative_to(ROOT).as_posix() for pkg in ("generator", "detector", "index", "service")
                  for p in (ROOT / pkg).rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)
    assert "detector/marks_model.json" in data and "service/static/index.html" in data
    tree = tmp_path / "tree"  # built from a copy: a build/ folder left in this one would hide what is missing
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for pkg in ("generator", "detector", "index", "service"):
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("chimera_provenance-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [d for d in data if d not in names] == []
    assert any(n.endswith("entry_points.txt") for n in names)  # the `chimera` console script
