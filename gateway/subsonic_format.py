"""Subsonic response formatting: one payload, rendered as JSON, JSONP or XML.

Clients pick the format per request (``f=json|jsonp|xml``, XML when absent)
and expect musegate's answers to look exactly like their server's: the same
envelope fields (``version``, ``type``, ``serverVersion``, ``openSubsonic``)
and the same XML shape Subsonic servers produce from their data (objects →
child elements, lists → repeated elements, scalars → attributes). Everything
here is pure formatting, so the handlers build plain dicts once and never
think about the wire format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree

from aiohttp import web
from multidict import MultiMapping

XMLNS = "http://subsonic.org/restapi"
DEFAULT_VERSION = "1.16.1"
ENVELOPE_FIELDS = ("version", "type", "serverVersion", "openSubsonic")

# Subsonic error codes (Subsonic 1.16.1 + OpenSubsonic).
GENERIC = 0
MISSING_PARAMETER = 10
WRONG_CREDENTIALS = 40
TOKEN_NOT_SUPPORTED = 41
PASSWORD_NOT_SUPPORTED = 42
CONFLICTING_AUTH = 43
INVALID_API_KEY = 44
NOT_AUTHORIZED = 50
NOT_FOUND = 70

# A JSONP callback is echoed into JavaScript, so only plain ASCII identifiers are accepted,
# matched whole (fullmatch: ``$`` alone would let "cb\n" through, \w alone any script's letters).
_CALLBACK = re.compile(r"[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*", re.ASCII)


class EnvelopeCache:
    """The envelope fields of the upstream's most recent answer.

    musegate never invents a server identity: whatever ``version``/``type``/
    ``serverVersion``/``openSubsonic`` the upstream last sent is what musegate's
    own answers carry, so a client sees one consistent server.
    """

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {"version": DEFAULT_VERSION}

    def update(self, body: Mapping[str, Any]) -> None:
        """Remember the envelope of a ``subsonic-response`` body (error bodies count too)."""
        seen = {k: body[k] for k in ENVELOPE_FIELDS if k in body}
        if "version" in seen:
            self._fields = seen

    def get(self) -> dict[str, Any]:
        return dict(self._fields)


# The app's EnvelopeCache (set when the Subsonic gateway is registered).
ENVELOPE = web.AppKey("subsonic_envelope", EnvelopeCache)


# The merged GET + POST-form parameters of an intercepted request (for error formatting).
PARAMS: Any = (
    web.RequestKey("subsonic_params", dict) if hasattr(web, "RequestKey") else "subsonic_params"
)


def params_of(request: web.Request, form: MultiMapping[str] | None = None) -> dict[str, str]:
    """First value of each parameter, query string first, then a POSTed form."""
    out: dict[str, str] = {}
    for source in (request.query, form or {}):
        for key, value in source.items():
            out.setdefault(key, value)
    return out


def response_format(params: Mapping[str, str]) -> tuple[str, str | None]:
    """(format, callback); unknown formats are answered in XML, as Subsonic does."""
    f = (params.get("f") or "xml").strip().lower()
    if f not in ("json", "jsonp"):
        f = "xml"
    return f, params.get("callback")


def valid_callback(callback: str | None) -> bool:
    """A JSONP callback that may be echoed into JavaScript: a plain dotted identifier."""
    return bool(callback) and _CALLBACK.fullmatch(callback or "") is not None


def _request_params(request: web.Request) -> Mapping[str, str]:
    # Handlers stash the merged GET + POST-form parameters here; fall back to the query string.
    stored = request.get(PARAMS)
    return stored if stored is not None else request.query


def _xml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _to_xml(elem: ElementTree.Element, data: Mapping[str, Any]) -> None:
    for name, value in data.items():
        if value is None:
            continue
        if name == "value" and not isinstance(value, Mapping | list):
            elem.text = _xml_value(value)
        elif isinstance(value, Mapping):
            _to_xml(ElementTree.SubElement(elem, name), value)
        elif isinstance(value, list):
            for item in value:
                child = ElementTree.SubElement(elem, name)
                if isinstance(item, Mapping):
                    _to_xml(child, item)
                elif item is not None:
                    child.text = _xml_value(item)
        else:
            elem.set(name, _xml_value(value))


def render(
    fmt: str, callback: str | None, body: dict[str, Any], status: int = 200
) -> web.Response:
    """Serialise a complete ``subsonic-response`` body in ``fmt``."""
    if fmt == "json":
        return web.Response(
            text=json.dumps({"subsonic-response": body}, ensure_ascii=False, separators=(",", ":")),
            content_type="application/json",
            status=status,
        )
    if fmt == "jsonp":
        text = json.dumps({"subsonic-response": body}, ensure_ascii=False, separators=(",", ":"))
        return web.Response(
            text=f"{callback}({text});", content_type="application/javascript", status=status
        )
    root = ElementTree.Element("subsonic-response", {"xmlns": XMLNS})
    _to_xml(root, body)
    xml = ElementTree.tostring(root, encoding="unicode")
    return web.Response(
        text='<?xml version="1.0" encoding="UTF-8"?>\n' + xml,
        content_type="text/xml",
        charset="utf-8",
        status=status,
    )


def _envelope(status: str, envelope: Mapping[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status}
    fields = dict(envelope) if envelope else {"version": DEFAULT_VERSION}
    fields.pop("status", None)
    body.update({k: fields[k] for k in ENVELOPE_FIELDS if k in fields})
    body.setdefault("version", DEFAULT_VERSION)
    return body


def ok_response(
    request: web.Request, payload: Mapping[str, Any], envelope: Mapping[str, Any] | None
) -> web.Response:
    """A successful answer: envelope fields first (as servers send them), then the payload."""
    fmt, callback = response_format(_request_params(request))
    if fmt == "jsonp" and not valid_callback(callback):
        return error_response(request, MISSING_PARAMETER, "Missing or invalid callback", envelope)
    body = _envelope("ok", envelope)
    body.update(payload)
    return render(fmt, callback, body)


def error_response(
    request: web.Request,
    code: int,
    message: str,
    envelope: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
) -> web.Response:
    """A Subsonic error in the caller's format (HTTP 200, as Subsonic servers answer errors).

    ``status`` lets the proxy answer 502 when the upstream is down. ``envelope``
    defaults to the upstream's last seen one when the app keeps an EnvelopeCache.
    """
    params = _request_params(request)
    fmt, callback = response_format(params)
    if fmt == "jsonp" and not valid_callback(callback):
        # No usable callback: a JSONP body would be broken JavaScript, so say so in JSON.
        fmt, callback = "json", None
    if envelope is None:
        cache = request.app.get(ENVELOPE)
        envelope = cache.get() if cache is not None else None
    body = _envelope("failed", envelope)
    body["error"] = {"code": int(code), "message": message}
    return render(fmt, callback, body, status=status)
