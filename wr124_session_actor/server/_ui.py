"""``GET /ui``: the browser view of sessions and their states (static files shipped in the package).

The page is plain HTML, CSS and JavaScript in the ``ui`` folder beside this module: no build step,
nothing fetched from elsewhere, so it works offline. It only reads, through the JSON API
(``/{project}/sessions`` and ``/{project}/json-documents``). The files are read once, in a worker
thread, when the application starts.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

import anyio.to_thread
from aiohttp import web

__all__ = ["ASSETS", "UI_PATH", "install_ui"]

#: Where the page is served; its assets are at ``UI_PATH/<name>``.
UI_PATH: Final = "/ui"
#: The page itself.
INDEX: Final = "index.html"
#: The assets the page loads, by name, with their content types.
ASSETS: Final = {"app.css": "text/css", "app.js": "text/javascript"}

_FILES: Final = web.AppKey("ui_files", dict[str, bytes])


def _read_files() -> dict[str, bytes]:
    folder = resources.files(__package__ or "wr124_session_actor.server") / "ui"
    return {name: (folder / name).read_bytes() for name in (INDEX, *ASSETS)}


async def _load(app: web.Application) -> None:
    app[_FILES] = await anyio.to_thread.run_sync(_read_files)


def _response(request: web.Request, name: str, content_type: str) -> web.Response:
    return web.Response(
        body=request.app[_FILES][name], content_type=content_type, charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def _index(request: web.Request) -> web.Response:
    return _response(request, INDEX, "text/html")


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text=f"no asset {name[:80]!r} (there are: {', '.join(ASSETS)})")
    return _response(request, name, content_type)


def install_ui(app: web.Application) -> None:
    """Serve the page at ``GET /ui`` and its assets at ``GET /ui/{asset}``."""
    app.on_startup.append(_load)
    app.router.add_get(UI_PATH, _index, name="ui", allow_head=False)
    app.router.add_get(UI_PATH + "/{asset}", _asset, name="ui_asset", allow_head=False)
