"""Optional LLM reading of instant-playlist sentences.

An LLM understands free phrasing far better than a lexicon, but it is an
external service that can be down, slow, misconfigured or simply wrong.  So it
only ever fills in the same constraint object the built-in interpreter
produces, constrained by a JSON schema (Ollama's ``format``, OpenAI's
``response_format: json_schema``), and everything it returns is validated;
any failure falls back to the built-in reading with the reason shown to the
user.  The API key is sent in a header and never written to a log or an
error message.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import aiohttp

from index.instant import (
    CONSTRAINTS_SCHEMA,
    Interpretation,
    constraints_from_json,
    describe,
    interpret,
)

__all__ = ["LLMError", "SYSTEM_PROMPT", "interpret_with_llm", "llm_constraints"]

log = logging.getLogger(__name__)

Provider = Literal["ollama", "openai"]

SYSTEM_PROMPT = (
    "You turn a music listener's request into playlist constraints. Answer with one JSON "
    "object that matches the given schema and nothing else. Use only the listed tags. "
    "tempo is in beats per minute (slow < 95, fast > 120). energy is 0..1 "
    "(calm < 0.4, energetic > 0.6). Use null or [] for anything the request does not say. "
    "Words meaning 'without'/'no'/'not' go to exclude_tags; 'without vocals' means exclude "
    "'female vocalists', 'male vocalists' and 'female vocalist' and include 'instrumental'."
)


class LLMError(Exception):
    """The LLM could not give usable constraints; the message is safe to show and log."""


def _redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text


def _request(text: str, provider: Provider, url: str, model: str) -> tuple[str, dict[str, Any]]:
    base = url.rstrip("/")
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": text},
    ]
    if provider == "ollama":
        return f"{base}/api/chat", {
            "model": model,
            "messages": messages,
            "stream": False,
            "format": CONSTRAINTS_SCHEMA,
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
                    "schema": CONSTRAINTS_SCHEMA,
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


async def llm_constraints(
    text: str,
    provider: Provider,
    url: str,
    model: str,
    api_key: str | None = None,
    timeout: float = 30.0,
    session: aiohttp.ClientSession | None = None,
) -> dict:
    """The constraint JSON the LLM proposes for ``text`` (not yet validated).

    Raises LLMError, with a message that never contains the API key, on any failure."""
    endpoint, payload = _request(text, provider, url, model)
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
                detail = _redact(_error_detail(raw), api_key)
                raise LLMError(f"{provider} answered HTTP {resp.status}: {detail}")
    except TimeoutError:
        raise LLMError(f"{provider} did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise LLMError(f"cannot reach {provider}: {_redact(str(exc), api_key)}") from None
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


async def interpret_with_llm(
    text: str,
    provider: Provider,
    url: str,
    model: str,
    api_key: str | None = None,
    timeout: float = 30.0,
    session: aiohttp.ClientSession | None = None,
) -> Interpretation:
    """The LLM's reading when it is usable, else the built-in one with the reason why."""
    try:
        obj = await llm_constraints(text, provider, url, model, api_key=api_key,
                                    timeout=timeout, session=session)
        constraints = constraints_from_json(obj)
    except (LLMError, ValueError) as exc:
        reason = _redact(str(exc), api_key)
        log.warning("LLM reading failed, using the built-in interpreter: %s", reason)
        fallback = interpret(text)
        fallback.explanation.insert(0, f"LLM ({provider} {model}) not used: {reason}; "
                                       "read by the built-in interpreter")
        return fallback
    lines = [f"read by the LLM ({provider} {model})"] + describe(constraints)
    log.info("LLM reading via %s %s succeeded", provider, model)
    return Interpretation(constraints=constraints, explanation=lines, source="llm")
