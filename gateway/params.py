"""Request parameters for the JSON API: one reader for query strings and JSON bodies.

Every feature endpoint accepts the same names whether they come as GET query
parameters or as a POST JSON object, and every bad value becomes a 400 whose
body names the field, so a client author can fix the call without reading
server logs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import MultiMapping


class ApiError(Exception):
    """An error the client can act on; rendered as ``{"error": message, "field": field}``."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def bad(field: str, message: str) -> ApiError:
    return ApiError(400, message, field)


def not_found(field: str | None, message: str) -> ApiError:
    return ApiError(404, message, field)


def error_response(status: int, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Params:
    """Typed access to a request's parameters; every reader raises ApiError(400) naming the field."""

    def __init__(self, data: Mapping[str, Any] | MultiMapping[str], from_query: bool) -> None:
        self._data = data
        self.from_query = from_query

    @classmethod
    async def of(cls, request: web.Request) -> Params:
        if request.method in ("GET", "HEAD") or not request.can_read_body:
            return cls(request.query, True)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad("body", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad("body", "the request body must be a JSON object")
        return cls(body, False)

    def has(self, name: str) -> bool:
        value = self._data.get(name)
        return value is not None and value != ""

    def raw(self, name: str) -> Any:
        return self._data.get(name)

    def list(self, name: str) -> list[Any]:
        """Repeated query parameters, comma-separated values, or a JSON array."""
        if self.from_query:
            values: list[Any] = []
            for v in self._data.getall(name, []):  # type: ignore[union-attr]
                values.extend(part.strip() for part in str(v).split(",") if part.strip())
            return values
        value = self._data.get(name)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    def str(self, name: str, default: str | None = None, required: bool = False,
            max_length: int = 1000) -> str | None:
        value = self._data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise bad(name, f"{name} is required")
            return default
        if not isinstance(value, str):
            raise bad(name, f"{name} must be a string")
        if len(value) > max_length:
            raise bad(name, f"{name} is longer than {max_length} characters")
        return value.strip()

    def int(self, name: str, default: int | None, minimum: int | None = None,
            maximum: int | None = None) -> int | None:
        value = self._data.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise bad(name, f"{name} must be an integer")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise bad(name, f"{name} must be an integer, not {value!r}") from None
        if minimum is not None and number < minimum:
            raise bad(name, f"{name} must be at least {minimum}")
        if maximum is not None and number > maximum:
            raise bad(name, f"{name} must be at most {maximum}")
        return number

    def float(self, name: str, default: float | None, minimum: float | None = None,
              maximum: float | None = None) -> float | None:
        value = self._data.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            raise bad(name, f"{name} must be a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad(name, f"{name} must be a number, not {value!r}") from None
        if not math.isfinite(number):
            raise bad(name, f"{name} must be a finite number")
        if minimum is not None and number < minimum:
            raise bad(name, f"{name} must be at least {minimum}")
        if maximum is not None and number > maximum:
            raise bad(name, f"{name} must be at most {maximum}")
        return number

    def bool(self, name: str, default: bool) -> bool:
        value = self._data.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise bad(name, f"{name} must be true or false, not {value!r}")

    def ints(self, name: str, max_items: int = 10_000) -> list[int]:
        out: list[int] = []
        for value in self.list(name):
            if isinstance(value, bool):
                raise bad(name, f"{name} must hold track ids (integers)")
            try:
                out.append(int(value))
            except (TypeError, ValueError):
                raise bad(name, f"{name} must hold track ids (integers), not {value!r}") from None
        if len(out) > max_items:
            raise bad(name, f"{name} holds more than {max_items} ids")
        return out

    def scores(self, name: str) -> dict[str, float] | None:
        """A {name: number} object; in a query string ``name=sad:0.8,energy:0.3``."""
        if self.from_query:
            items = self.list(name)
            if not items:
                return None
            parsed: dict[str, Any] = {}
            for item in items:
                key, sep, val = str(item).rpartition(":")
                if not sep or not key:
                    raise bad(name, f"{name} entries look like tag:0.8, not {item!r}")
                parsed[key.strip()] = val
        else:
            parsed = self._data.get(name)
            if parsed is None:
                return None
            if not isinstance(parsed, dict):
                raise bad(name, f"{name} must be an object of name: number")
        out: dict[str, float] = {}
        for key, val in parsed.items():
            try:
                number = float(val)
            except (TypeError, ValueError):
                raise bad(name, f"{name}.{key} must be a number, not {val!r}") from None
            if not math.isfinite(number):
                raise bad(name, f"{name}.{key} must be a finite number")
            out[str(key)] = number
        return out or None
