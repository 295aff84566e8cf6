"""Each example runs by itself, exits 0 and prints its transcript."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(("script", "expected"), [
    ("chat.py", "chat over: 6 lines, each heard by 2 participants over direct streams; "
                "0 chat bytes relayed"),
    ("echo_actor.py", "RemoteError ZeroDivisionError"),
    ("worker_pool.py", "(checked)"),
])
def test_example_runs(script: str, expected: str) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True,
                          text=True, timeout=45, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert expected in proc.stdout, proc.stdout + proc.stderr
