"""The access log, without the secrets that Subsonic and Jellyfin put in URLs.

Subsonic clients send the password (``p``), or a token and its salt (``t``, ``s``),
or an API key in the query string of every request; Jellyfin clients often send
``api_key``. aiohttp's default access log prints the whole request line, so a
server at INFO level would write every user's credentials to its log. This logger
prints the same facts with those values replaced by ``***``.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote_plus

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

# Query keys whose values are credentials (compared without regard to case).
SECRET_KEYS = frozenset({
    "p", "t", "s", "apikey", "api_key", "token", "password", "pw", "x-emby-token",
    "x-mediabrowser-token", "access_token",
})


# A request target made only of these characters is logged as it came (no quote needed):
# printable ASCII without space, '"' and '\\', so a line can never be broken or forged.
_PLAIN_TARGET = re.compile(r'[!#-\[\]-~]*')


def redacted_target(request: web.BaseRequest) -> str:
    """Path and query for the log, every secret value shown as ``***``.

    The usual target (already percent-encoded by the client) is logged as sent, with
    the secret values cut out of the raw query; nothing is decoded and re-quoted, which
    cost more than the rest of the log line. A key is decoded only when it is encoded
    (``%70=`` is ``p=``), and both ``&`` and ``;`` count as separators, so a secret
    cannot hide behind either. Anything else takes the careful path below.
    """
    raw = request.raw_path
    if _PLAIN_TARGET.fullmatch(raw) is None:
        return _quoted_target(request)
    path, sep, query = raw.partition("?")
    if not sep:
        return path
    parts = re.split("([&;])", query)
    for i in range(0, len(parts), 2):
        key, eq, _ = parts[i].partition("=")
        if not eq:
            continue
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        if key.lower() in SECRET_KEYS:
            parts[i] = parts[i][:parts[i].index("=") + 1] + "***"
    return f"{path}?{''.join(parts)}"


_PATH_SAFE = "/:,@!$&'()*+;=~-._"


def _quoted_target(request: web.BaseRequest) -> str:
    """The decoded path and query, every value re-quoted and the secret ones replaced."""
    path = quote(request.path, safe=_PATH_SAFE)
    if not request.query_string:
        return path
    parts = []
    for key, value in request.query.items():
        shown = "***" if key.lower() in SECRET_KEYS else quote(value, safe="/:,")
        parts.append(f"{quote(key, safe='')}={shown}")
    return f"{path}?{'&'.join(parts)}"


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


# ``key=value`` in a query string, or ``Header: value`` in a raw request head, whose value
# is a credential: what aiohttp quotes when it rejects a request line or header as too long.
_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&;\s'\"(])(?:" + "|".join(re.escape(k) for k in sorted(SECRET_KEYS))
    + r")=)[^&\s'\"\\]*")
_SECRET_HEADER = re.compile(
    r"(?i)((?:authorization|x-emby-authorization|x-emby-token|x-mediabrowser-token"
    r"|x-api-key|cookie)\s*:\s*)[^\r\n\\]*")


def redact_text(text: str) -> str:
    """``text`` with every credential value that looks like one replaced by ``***``."""
    return _SECRET_HEADER.sub(r"\1***", _SECRET_PARAM.sub(r"\1***", text))


class RedactingServerLogFilter(logging.Filter):
    """Redacts aiohttp's own server errors (``aiohttp.server``).

    A request whose line or header is too long is refused by aiohttp's parser with a 400
    before any handler runs, and logged at ERROR with the first bytes of the offending
    line: a Subsonic client's URL starts with ``u=…&p=PASSWORD``. The message and the
    traceback are redacted here so that no level of musegate's log carries it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_SERVER_FILTER = RedactingServerLogFilter()


def install_server_log_filter() -> None:
    """Attach the filter to aiohttp's server logger (once, however many apps are built)."""
    logger = logging.getLogger("aiohttp.server")
    if _SERVER_FILTER not in logger.filters:
        logger.addFilter(_SERVER_FILTER)
