"""The LLM reading of sentences against a fake Ollama / OpenAI server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from adapters.llm import LLMError
from index.instant import CONSTRAINTS_SCHEMA, constraints_from_json, interpret
from musegate.llm_reading import interpret_with_llm, llm_constraints
from tests.fakes.llm_server import FakeLLM, Reply

KEY = "sk-test-5ecr3t-DO-NOT-LOG-9f8e7d"
TEXT = "sad piano in a minor key around 70 bpm"
GOOD = {
    "tempo_min": 62, "tempo_max": 78, "energy_min": None, "energy_max": 0.5, "key": None,
    "scale": "minor", "include_tags": [{"tag": "sad", "weight": 1}, {"tag": "instrumental",
                                                                      "weight": 0.8}],
    "exclude_tags": ["metal"], "size": None,
}
PROVIDERS = ["ollama", "openai"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLLM]:
    server = await FakeLLM(api_key=KEY).start()
    yield server
    await server.close()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_good_answer_is_used(fake: FakeLLM, provider: str) -> None:
    fake.reply(GOOD)
    reading = await interpret_with_llm(TEXT, provider, fake.url, "tiny", api_key=KEY)
    assert reading.source == "llm"
    assert reading.constraints == constraints_from_json(GOOD)
    assert reading.explanation[0] == f"read by the LLM ({provider} tiny)"
    assert any("tempo 62–78 bpm" in line for line in reading.explanation)
    assert any("exclude metal" in line for line in reading.explanation)


async def test_ollama_request_follows_the_api(fake: FakeLLM) -> None:
    fake.reply(GOOD)
    await llm_constraints(TEXT, "ollama", fake.url + "/", "llama3.2")
    req = fake.requests[-1]
    assert req["path"] == "/api/chat"
    body = req["json"]
    assert body["model"] == "llama3.2" and body["stream"] is False
    assert body["format"] == CONSTRAINTS_SCHEMA
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][-1] == {"role": "user", "content": TEXT}
    assert "Authorization" not in req["headers"]


async def test_openai_request_follows_the_api(fake: FakeLLM) -> None:
    fake.reply(GOOD)
    # a base URL that already ends in /v1 is accepted too
    obj = await llm_constraints(TEXT, "openai", fake.url + "/v1", "gpt-4o-mini", api_key=KEY)
    assert obj == GOOD
    req = fake.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    fmt = req["json"]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"] == CONSTRAINTS_SCHEMA
    assert fmt["json_schema"]["strict"] is True


FAILURES = [
    pytest.param(Reply(content="{not json"), "not valid JSON", id="invalid-json"),
    pytest.param(Reply(content='["a list"]'), "not a JSON object", id="not-an-object"),
    pytest.param(Reply(content=dict(GOOD, tempo_min="slow")), "tempo_min", id="schema-type"),
    pytest.param(Reply(content=dict(GOOD, exclude_tags=["polka"])), "exclude_tags",
                 id="schema-tag"),
    pytest.param(Reply(content=dict(GOOD, mood="sad")), "mood", id="schema-extra-field"),
    pytest.param(Reply(content=""), "empty answer", id="empty"),
    pytest.param(Reply(status=500), "HTTP 500", id="server-error"),
    pytest.param(Reply(status=503, raw="<html>busy</html>"), "HTTP 503", id="html-503"),
    pytest.param(Reply(raw="<html>oops</html>"), "response is not JSON", id="non-json-body"),
    pytest.param(Reply(raw='{"unexpected": true}'), "unexpected", id="wrong-shape"),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("reply", "reason"), FAILURES)
async def test_failures_fall_back_to_builtin(fake: FakeLLM, provider: str, reply: Reply,
                                             reason: str, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    caplog.set_level(logging.DEBUG)
    fake.replies = [reply]
    reading = await interpret_with_llm(TEXT, provider, fake.url, "tiny", api_key=KEY)
    assert reading.source == "builtin"
    assert reading.constraints == interpret(TEXT).constraints
    assert reading.explanation[0].startswith(f"LLM ({provider} tiny) not used:")
    assert reason in reading.explanation[0]
    assert reading.explanation[1:] == interpret(TEXT).explanation
    assert KEY not in caplog.text and KEY not in "\n".join(reading.explanation)
    assert "not used" in caplog.text or reason in caplog.text


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_timeout_falls_back(fake: FakeLLM, provider: str,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.reply(GOOD, delay=2.0)
    reading = await interpret_with_llm(TEXT, provider, fake.url, "tiny", api_key=KEY,
                                       timeout=0.2)
    assert reading.source == "builtin"
    assert "did not answer within 0.2 s" in reading.explanation[0]
    assert KEY not in caplog.text


@pytest.mark.parametrize("given", ["sk-wrong-key-0000", None])
async def test_bad_key_falls_back(fake: FakeLLM, given: str | None,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.reply(GOOD)
    reading = await interpret_with_llm(TEXT, "openai", fake.url, "tiny", api_key=given)
    assert reading.source == "builtin"
    assert "rejected the API key (HTTP 401)" in reading.explanation[0]
    assert KEY not in caplog.text
    if given:
        assert given not in caplog.text and given not in reading.explanation[0]
    with pytest.raises(LLMError, match="401"):
        await llm_constraints(TEXT, "openai", fake.url, "tiny", api_key=given)


async def test_unreachable_server_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = await FakeLLM().start()
    url = fake.url
    await fake.close()  # nothing listens there any more
    reading = await interpret_with_llm(TEXT, "ollama", url, "tiny", api_key=KEY, timeout=2)
    assert reading.source == "builtin"
    assert "cannot reach ollama" in reading.explanation[0]
    assert KEY not in caplog.text


async def test_unknown_provider_and_shared_session(fake: FakeLLM) -> None:
    with pytest.raises(LLMError, match="unknown LLM provider"):
        await llm_constraints(TEXT, "claude", fake.url, "x")  # type: ignore[arg-type]
    fake.reply(GOOD)
    async with aiohttp.ClientSession() as session:
        for provider in PROVIDERS:
            obj = await llm_constraints(TEXT, provider, fake.url, "tiny", api_key=KEY,
                                        session=session)
            assert obj == GOOD
        assert not session.closed  # a caller's session is left open


async def test_error_detail_never_echoes_the_key(fake: FakeLLM) -> None:
    fake.reply(status=500, raw='{"error": {"message": "bad key ' + KEY + '"}}')
    with pytest.raises(LLMError) as info:
        await llm_constraints(TEXT, "openai", fake.url, "tiny", api_key=KEY)
    assert KEY not in str(info.value) and "***" in str(info.value)
