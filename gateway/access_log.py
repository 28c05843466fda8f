"""The access log, without the secrets that Subsonic and Jellyfin put in URLs.

Subsonic clients send the password (``p``), or a token and its salt (``t``, ``s``),
or an API key in the query string of every request; Jellyfin clients often send
``api_key``. aiohttp's default access log prints the whole request line, so a
server at INFO level would write every user's credentials to its log. This logger
prints the same facts with those values replaced by ``***``.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

# Query keys whose values are credentials (compared without regard to case).
SECRET_KEYS = frozenset({
    "p", "t", "s", "apikey", "api_key", "token", "password", "pw", "x-emby-token",
    "x-mediabrowser-token", "access_token",
})


def redacted_target(request: web.BaseRequest) -> str:
    """Path and query for the log, every secret value shown as ``***``."""
    if not request.query_string:
        return request.path
    parts = []
    for key, value in request.query.items():
        shown = "***" if key.lower() in SECRET_KEYS else quote(value, safe="/:,")
        parts.append(f"{quote(key, safe='')}={shown}")
    return f"{request.path}?{'&'.join(parts)}"


class RedactingAccessLogger(AbstractAccessLogger):
    """``ADDRESS "METHOD TARGET HTTP/x.y" STATUS BYTES SECONDS "USER-AGENT"``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        version = f"{request.version.major}.{request.version.minor}"
        self.logger.info(
            '%s "%s %s HTTP/%s" %s %s %.3fs "%s"',
            request.remote or "-", request.method, redacted_target(request), version,
            response.status, response.body_length, time,
            request.headers.get("User-Agent", "-"),
        )
