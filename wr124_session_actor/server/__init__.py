"""The reference json-documents server: aiohttp.web over the sqlite engine.

``create_app`` builds the application, ``run_server`` serves it until interrupted (the CLI's
``serve``), and ``ServerThread`` runs it in a background thread for tests and examples.
"""

from ._app import ServerLimits as ServerLimits
from ._app import create_app as create_app
from ._thread import ServerThread as ServerThread
from ._thread import run_server as run_server

__all__ = ["ServerLimits", "ServerThread", "create_app", "run_server"]
