"""A progress bar for the command line's long work: ``rich`` on a terminal, nothing otherwise.

``rich`` is the optional ``cli`` extra: the library never needs it, and without it (or when stderr
is not a terminal: pipes, CI logs, the tests) the commands print exactly what they always did.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress"]


def _nothing(advance: float = 1, description: str | None = None) -> None:
    return None


@contextmanager
def progress(total: float, description: str) -> Iterator[Callable[..., None]]:
    """Show a bar on stderr while the block runs; yield ``advance(steps=1, description=None)``.

    Args:
        total: the steps the work takes.
        description: what is being done (the bar's label).
    """
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        yield _nothing
        return
    console = Console(stderr=True)
    if not console.is_terminal or not sys.stderr.isatty():
        yield _nothing
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(steps: float = 1, description: str | None = None) -> None:
            if description is None:
                bar.advance(task, steps)
            else:
                bar.update(task, advance=steps, description=description)

        yield advance
