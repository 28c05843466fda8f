"""A JSON answer from an LLM (Ollama or an OpenAI-compatible API), held to a schema.

Only the transport lives here: the request shape of each provider (Ollama's
``format``, OpenAI's ``response_format: json_schema``), their answer shapes and
their failures, each turned into an :class:`LLMError` whose message is safe to
show.  What the answer means is the caller's business (musegate.llm_reading).
The API key is sent in a header and never written to a log or an error message.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import aiohttp

__all__ = ["LLMError", "Provider", "llm_json", "redact"]

log = logging.getLogger(__name__)

Provider = Literal["ollama", "openai"]



class LLMError(Exception):
    """The LLM could not give usable constraints; the message is safe to show and log."""


def redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text


def _request(
    text: str, system: str, schema: dict[str, Any], provider: Provider, url: str, model: str
) -> tuple[str, dict[str, Any]]:
    base = url.rstrip("/")
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": text},
    ]
    if provider == "ollama":
        return f"{base}/api/chat", {
            "model": model,
            "messages": messages,
            "stream": False,
            "format": schema,
            "options": {"temperature": 0},
        }
    if provider == "openai":
        if base.endswith("/v1"):
            base = base[:-3]
        return f"{base}/v1/chat/completions", {
            "model": model,
            "messages": messages,
            "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "playlist_constraints",
                    "schema": schema,
                    "strict": True,
                },
            },
        }
    raise LLMError(f"unknown LLM provider {provider!r}; use 'ollama' or 'openai'")


def _content(provider: Provider, body: Any) -> str:
    """The assistant's text from either provider's response shape."""
    try:
        if provider == "ollama":
            content = body["message"]["content"]
        else:
            choice = body["choices"][0]
            if choice.get("message", {}).get("refusal"):
                raise LLMError(f"the model refused: {choice['message']['refusal']}")
            content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"unexpected {provider} response shape (missing {exc})") from None
    if not isinstance(content, str) or not content.strip():
        raise LLMError("the model returned an empty answer")
    return content


def _error_detail(body: str) -> str:
    """The provider's own error message, if it sent one, kept short."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message", ""))[:200]
        if isinstance(err, str):
            return err[:200]
    return body.strip()[:200]


async def llm_json(
    text: str,
    system: str,
    schema: dict[str, Any],
    provider: Provider,
    url: str,
    model: str,
    api_key: str | None = None,
    timeout: float = 30.0,
    session: aiohttp.ClientSession | None = None,
) -> dict:
    """The JSON object the LLM answers to ``text`` under ``system``, held to ``schema`` by
    the provider (not validated here: the caller knows what the object means).

    Raises LLMError, with a message that never contains the API key, on any failure."""
    endpoint, payload = _request(text, system, schema, provider, url, model)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        async with client.post(endpoint, json=payload, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            raw = await resp.text()
            if resp.status in (401, 403):
                raise LLMError(f"{provider} rejected the API key (HTTP {resp.status})")
            if resp.status >= 400:
                detail = redact(_error_detail(raw), api_key)
                raise LLMError(f"{provider} answered HTTP {resp.status}: {detail}")
    except TimeoutError:
        raise LLMError(f"{provider} did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise LLMError(f"cannot reach {provider}: {redact(str(exc), api_key)}") from None
    finally:
        if own:
            await client.close()
    try:
        body = json.loads(raw)
    except ValueError:
        raise LLMError(f"{provider} response is not JSON") from None
    content = _content(provider, body)
    try:
        obj = json.loads(content)
    except ValueError:
        raise LLMError("the model's answer is not valid JSON") from None
    if not isinstance(obj, dict):
        raise LLMError("the model's answer is not a JSON object")
    return obj
