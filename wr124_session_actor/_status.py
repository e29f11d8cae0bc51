"""The five outcome statuses of the original WR124 module."""

from __future__ import annotations

from enum import Enum

__all__ = ["SessionStateStatus"]


class SessionStateStatus(str, Enum):
    """Outcome of a public operation; every call returns one instead of raising for I/O trouble."""

    SUCCESS = "success"
    FAILED = "failed"
    DISABLED = "disabled"
    TIMEOUT = "timeout"
    NO_CLIENT = "no_client"

    def __str__(self) -> str:
        return self.value
