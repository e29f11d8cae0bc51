"""Fixtures of the fault-injection suite (the parent ``tests/conftest.py`` ones apply too)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect garbage as each fault test ends.

    Faults leave half-closed connections and abandoned tasks behind; an unclosed one is reported as a
    ResourceWarning whenever the garbage collector happens to run. Collecting here reports it against
    the test that left it, not a later test that happened to trigger the collection.
    """
    yield
    gc.collect()
