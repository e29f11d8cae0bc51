"""The deliberate public surface."""

from __future__ import annotations

import wr124_session_actor
from wr124_session_actor import SessionStateStatus


class TestExports:
    def test_all_is_sorted_and_complete(self) -> None:
        """``__all__`` is sorted and names every public attribute the package re-exports."""
        names = wr124_session_actor.__all__
        assert names == sorted(names)
        public = {n for n in vars(wr124_session_actor) if not n.startswith("_")}
        modules = {n for n in public if type(getattr(wr124_session_actor, n)).__name__ == "module"}
        assert set(names) == public - modules - {"annotations"}

    def test_exported_names_belong_to_the_package(self) -> None:
        """Every export is defined inside the package (re-exported, not third-party)."""
        for name in wr124_session_actor.__all__:
            assert getattr(wr124_session_actor, name).__module__.startswith("wr124_session_actor")


class TestStatus:
    def test_exactly_the_original_values(self) -> None:
        """The five statuses keep the original module's string values."""
        assert {s.name: s.value for s in SessionStateStatus} == {
            "SUCCESS": "success",
            "FAILED": "failed",
            "DISABLED": "disabled",
            "TIMEOUT": "timeout",
            "NO_CLIENT": "no_client",
        }

    def test_is_a_str(self) -> None:
        """Statuses compare equal to their strings, as the original's ``str`` Enum."""
        success: str = SessionStateStatus.SUCCESS
        assert success == "success"
        assert str(SessionStateStatus.TIMEOUT) == "timeout"
