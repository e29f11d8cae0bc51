"""The package stays ``mypy --strict`` and ``ruff`` clean (run as tests so CI enforces it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


class TestQuality:
    def test_mypy_strict(self) -> None:
        """``mypy --strict`` finds nothing in the package."""
        result = run(sys.executable, "-m", "mypy", "--strict", "wr124_session_actor")
        assert result.returncode == 0, result.stdout + result.stderr

    def test_ruff(self) -> None:
        """``ruff check`` finds nothing in the package, tests, examples and bench."""
        ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
        paths = [p for p in ("wr124_session_actor", "tests", "examples", "bench") if (ROOT / p).is_dir()]
        result = run(ruff, "check", *paths)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_ships_py_typed(self) -> None:
        """The package ships the py.typed marker."""
        assert (ROOT / "wr124_session_actor" / "py.typed").is_file()
