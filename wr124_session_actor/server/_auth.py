"""Bearer keys: one check for the API key and the metrics key."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

__all__ = ["bearer_key", "bearer_matches"]


def bearer_key(key: str | None) -> bytes:
    """The key to expect, as compared (empty: none): without whitespace at its ends, which no header value
    keeps (a key set with a trailing blank made every call 401).

    Raises:
        ValueError: ``key`` is only blanks: it would require no key at all.
    """
    if key and not key.strip():
        raise ValueError("the key is only blanks: it would require no key at all")
    return (key or "").strip().encode("utf-8")


def bearer_matches(headers: Mapping[str, str], expected: bytes) -> bool:
    """Whether ``headers`` carry ``Authorization: Bearer <expected>`` (compared in constant time)."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    given = token.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, expected)
