"""Instant-playlist sentences read by an LLM, falling back to the built-in reader.

An LLM understands free phrasing far better than a lexicon, but it is an
external service that can be down, slow, misconfigured or simply wrong.  So it
only ever fills in the same constraint object the built-in interpreter
produces (``index.instant.CONSTRAINTS_SCHEMA``), everything it returns is
validated, and any failure falls back to the built-in reading with the reason
shown to the user.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from adapters.llm import LLMError, Provider, llm_json, redact
from index.instant import (
    CONSTRAINTS_SCHEMA,
    Interpretation,
    constraints_from_json,
    describe,
    interpret,
)

__all__ = ["SYSTEM_PROMPT", "interpret_with_llm", "llm_constraints"]

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You turn a music listener's request into playlist constraints. Answer with one JSON "
    "object that matches the given schema and nothing else. Use only the listed tags. "
    "tempo is in beats per minute (slow < 95, fast > 120). energy is 0..1 "
    "(calm < 0.4, energetic > 0.6). Use null or [] for anything the request does not say. "
    "Words meaning 'without'/'no'/'not' go to exclude_tags; 'without vocals' means exclude "
    "'female vocalists', 'male vocalists' and 'female vocalist' and include 'instrumental'."
)


async def llm_constraints(
    text: str,
    provider: Provider,
    url: str,
    model: str,
    api_key: str | None = None,
    timeout: float = 30.0,
    session: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """The constraint JSON the LLM proposes for ``text`` (not yet validated)."""
    return await llm_json(text, SYSTEM_PROMPT, CONSTRAINTS_SCHEMA, provider, url, model,
                          api_key=api_key, timeout=timeout, session=session)


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
        reason = redact(str(exc), api_key)
        log.warning("LLM reading failed, using the built-in interpreter: %s", reason)
        fallback = interpret(text)
        fallback.explanation.insert(0, f"LLM ({provider} {model}) not used: {reason}; "
                                       "read by the built-in interpreter")
        return fallback
    lines = [f"read by the LLM ({provider} {model})"] + describe(constraints)
    log.info("LLM reading via %s %s succeeded", provider, model)
    return Interpretation(constraints=constraints, explanation=lines, source="llm")
