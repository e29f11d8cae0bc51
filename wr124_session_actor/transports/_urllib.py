"""The urllib transport: the stdlib client, run in a worker thread so it never blocks the loop."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

import anyio.lowlevel
import anyio.to_thread

from .._exceptions import StoreTimeout, StoreUnavailable
from ._base import Params, Response, detached, utf8_values

__all__ = ["UrllibTransport"]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Answers a redirect as it is (an ``HTTPError`` with its status) instead of following it."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class UrllibTransport:
    """HTTP with ``urllib.request`` in worker threads; the fallback when no async client is usable.

    Args:
        timeout: the socket timeout of each request, so an abandoned thread ends by itself.
    """

    name = "urllib"

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        # No proxies from the environment: the store is addressed directly, as with the async clients; and
        # a redirect is answered as it is, as by them (the store follows it).
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())

    def _send(self, method: str, url: str, headers: Mapping[str, str], content: bytes | None) -> Response:
        request = urllib.request.Request(url, data=content, method=method)
        for name, value in utf8_values(headers):
            request.add_header(name, value)  # type: ignore[arg-type]  # http.client sends bytes as they are
        try:
            with self._opener.open(request, timeout=self._timeout) as resp:
                return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())
        except TimeoutError as exc:
            raise StoreTimeout(f"{method} {url}: timed out") from detached(exc)
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise StoreTimeout(f"{method} {url}: timed out") from detached(exc)
            raise StoreUnavailable(f"{method} {url}: {exc.reason}") from detached(exc)
        except (OSError, http.client.HTTPException) as exc:
            raise StoreUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from detached(exc)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Params = (),
        content: bytes | None = None,
    ) -> Response:
        """Send one request in a worker thread (abandoned, not waited for, if the caller is cancelled)."""
        if params:
            url = f"{url}?{urllib.parse.urlencode(list(params))}"
        return await anyio.to_thread.run_sync(
            self._send, method, url, headers, content, abandon_on_cancel=True
        )

    async def aclose(self) -> None:
        """Nothing is pooled; present for the interface."""
        await anyio.lowlevel.checkpoint()
