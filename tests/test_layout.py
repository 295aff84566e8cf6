"""The package keeps its shape: protocol logic in sans-I/O modules, no import
cycle, no module too large to read (issue 10; `python tools/layout.py`
prints the figures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "layout.py"


def test_layout_targets_hold() -> None:
    out = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "import cycles: none" in out.stdout


def test_the_check_catches_a_cycle_and_io_in_a_core(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\nfrom . import c\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .a import x\n")
    (pkg / "c.py").write_text("import asyncio\n" + "x = 1\n" * 50)
    out = subprocess.run([sys.executable, str(TOOL), "--check", str(pkg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "import cycles: pkg.a <-> pkg.b" in out.stdout
    # a.py (2 lines) imports no I/O itself but c.py does; b.py (3) is pure: of 56
    assert "directly): 8.9%" in out.stdout and "transitively): 5.4%" in out.stdout
