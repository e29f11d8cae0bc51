"""The benchmarks still run: ``python -m bench --smoke`` (every scenario, tiny sizes). No timing asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["chatty", "keepall", "langgraph", "sessions", "large_states", "cache", "activation", "postgres",
             "growth"]


@pytest.fixture(scope="module")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One ``--smoke --plot`` run of every scenario (PostgreSQL's on the tests' server): its process result
    and the JSON it wrote (charts beside it)."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out), "--plot", str(out.parent / "charts")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "WR124_BENCH_POSTGRES_URL": postgres_url},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text(encoding="utf-8"))


class TestBenchSmoke:
    def test_prints_markdown_tables(self, smoke_run: tuple[subprocess.CompletedProcess[str], Any]) -> None:
        """The report has a table per scenario and the targets table."""
        proc, _ = smoke_run
        assert "| contender |" in proc.stdout
        assert "### Targets" in proc.stdout
        assert "| target | goal |" in proc.stdout
        for title in ("1. Chatty upload", "2. Keep-all", "3. Peer", "4. Many sessions", "5. Large states",
                      "6. Cache", "7. Activation", "8. PostgreSQL", "9. Growth"):
            assert title in proc.stdout

    def test_writes_json_with_every_scenario(self, smoke_run: tuple[subprocess.CompletedProcess[str], Any]) -> None:
        """The JSON names every scenario, with figures summarised as median/min/max per contender."""
        _, data = smoke_run
        assert set(data) == {"meta", "scenarios", "targets"}
        assert data["meta"]["mode"] == "smoke"
        assert list(data["scenarios"]) == SCENARIOS
        for name, scenario in data["scenarios"].items():
            if scenario["skipped"]:
                assert name == "langgraph"  # the optional peer is skipped when not installed
                continue
            assert scenario["contenders"], name
            for contender in scenario["contenders"].values():
                assert contender["figures"], name
                for figure in contender["figures"].values():
                    assert set(figure) == {"median", "min", "max", "runs"}
        assert data["targets"]
        assert all({"scenario", "name", "goal", "measured", "met"} <= set(t) for t in data["targets"])

    def test_chatty_figures_are_counted(self, smoke_run: tuple[subprocess.CompletedProcess[str], Any]) -> None:
        """Every chatty contender stored documents and the server counted its writes (no figure is 0)."""
        _, data = smoke_run
        for contender in data["scenarios"]["chatty"]["contenders"].values():
            figures = contender["figures"]
            assert figures["documents"]["median"] > 0
            assert figures["writes"]["median"] > 0
            assert figures["failures"]["median"] == 0

    def test_unknown_scenario_is_a_usage_error(self) -> None:
        """``--only`` with an unknown name exits with status 2 before running anything."""
        from bench.__main__ import main

        with pytest.raises(SystemExit) as info:
            main(["--only", "nope"])
        assert info.value.code == 2

    def test_plot_without_matplotlib_is_a_usage_error_before_the_run(self, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
        """``--plot`` where matplotlib is not installed exits with status 2 naming the extra, before running
        anything (the whole run went first, then a traceback)."""
        import importlib.util

        from bench.__main__ import main

        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
        with pytest.raises(SystemExit) as info:
            main(["--smoke", "--plot"])
        assert info.value.code == 2
        assert "--plot needs matplotlib: pip install 'wr124-session-actor[plot]'" in capsys.readouterr().err

    def test_plot_writes_a_png_per_scenario(self, smoke_run: tuple[subprocess.CompletedProcess[str], Any]) -> None:
        """``--plot`` writes one PNG chart per scenario that ran."""
        proc, _ = smoke_run
        line = next(line for line in proc.stdout.splitlines() if line.startswith("_Charts: "))
        paths = [Path(p.strip()) for p in line.removeprefix("_Charts: ").rstrip("._").split(",")]
        assert len(paths) >= 5
        for path in paths:
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
