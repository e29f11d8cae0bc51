"""HTTP transports: aiohttp, httpx and urllib, chosen by what is importable and the running loop."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence

import sniffio

from .._exceptions import NoClientError
from ._base import Params, Response, Transport

__all__ = ["Params", "Response", "Transport", "available_clients", "open_transport", "preload_clients"]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_clients(allowed: Sequence[str], async_library: str) -> list[str]:
    """The allowed client names usable under ``async_library``, in preference order."""
    usable = []
    for name in allowed:
        if name == "aiohttp" and (async_library != "asyncio" or not _importable("aiohttp")):
            continue  # aiohttp runs only on asyncio
        if name == "httpx" and not _importable("httpx"):
            continue
        usable.append(name)
    return usable


def _unusable(name: str, async_library: str) -> str:
    """Why the client ``name`` cannot run here (it is not among :func:`available_clients`)."""
    if name == "aiohttp" and async_library != "asyncio":
        return "aiohttp runs only on asyncio (install httpx for trio: pip install 'wr124-session-actor[httpx]')"
    if name == "httpx":
        return "httpx is not installed (pip install 'wr124-session-actor[httpx]')"
    return f"{name} is not installed"


def preload_clients() -> None:
    """Import the installed client libraries (blocking: call it in a worker thread).

    Importing aiohttp or httpx takes from a tenth of a second to a second; done on the event loop at the
    first request, that would stall every task of the loop for as long.
    """
    for module in ("._aiohttp", "._httpx", "._urllib"):
        try:
            importlib.import_module(module, __name__)
        except ImportError:
            continue


def open_transport(allowed: Sequence[str], *, timeout: float = 10.0, max_connections: int = 100) -> Transport:
    """Create the first usable transport among ``allowed`` for the running async library.

    Raises:
        NoClientError: none of them can run here.
    """
    library = sniffio.current_async_library()
    usable = available_clients(allowed, library)
    if not usable:
        reasons = "; ".join(_unusable(name, library) for name in allowed)
        raise NoClientError(f"no usable HTTP client under {library} among {', '.join(allowed)}: {reasons}")
    if usable[0] == "aiohttp":
        from ._aiohttp import AiohttpTransport

        return AiohttpTransport(max_connections=max_connections)
    if usable[0] == "httpx":
        from ._httpx import HttpxTransport

        return HttpxTransport(max_connections=max_connections)
    from ._urllib import UrllibTransport

    return UrllibTransport(timeout=timeout)
