"""The OpenAI-compatible client against a real HTTP server (started here) that speaks chat completions:
logprobs, plain answers, retries after errors, timeouts, garbage, and the on-disk cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurelens.explain import ClientError, EndpointClient, ResponseCache
from tests.explain.conftest import Behaviour

MESSAGES = [{"role": "user", "content": "Is it? Yes or No?"}]


def test_yes_probability_comes_from_logprobs_else_from_the_answer(endpoint: tuple[str, Behaviour]) -> None:
    url, behaviour = endpoint
    client = EndpointClient(url, "test-model", backoff=0.01)
    answer = client.yes_probability(MESSAGES)
    assert answer.method == "logprobs" and answer.p_yes == pytest.approx(0.8 / (0.8 + 0.2), abs=1e-3)
    assert behaviour.requests[-1]["logprobs"] is True and behaviour.requests[-1]["max_tokens"] == 1
    behaviour.mode = "plain"
    assert (client.yes_probability(MESSAGES).p_yes, client.yes_probability(MESSAGES).method) == (
        0.0,
        "parsed",
    )
    behaviour.mode = "rambling"
    with pytest.raises(ClientError, match="neither yes nor no"):
        client.yes_probability(MESSAGES)
    behaviour.mode = "plain"
    assert client.generate(MESSAGES, 40) == "Thinking about it...\nExplanation: dates in prose"


def test_errors_are_retried_with_backoff_then_reported(endpoint: tuple[str, Behaviour]) -> None:
    url, behaviour = endpoint
    client = EndpointClient(url, "m", retries=3, backoff=0.01)
    behaviour.failures_left = 2
    assert client.yes_probability(MESSAGES).method == "logprobs"
    assert len(behaviour.requests) == 3
    behaviour.failures_left = 10
    with pytest.raises(ClientError, match="failed after 4 attempts: HTTP 503"):
        client.yes_probability(MESSAGES)
    behaviour.failures_left = 0
    behaviour.mode = "slow"
    with pytest.raises(ClientError, match="timed out"):
        EndpointClient(url, "m", timeout=0.3, retries=1, backoff=0.01).generate(MESSAGES, 5)
    behaviour.mode = "garbage"
    with pytest.raises(ClientError, match="not a chat completion"):
        client.generate(MESSAGES, 5)
    with pytest.raises(ClientError, match="refused the request: HTTP 404"):
        EndpointClient(url.replace("/v1", "/v2"), "m").generate(MESSAGES, 5)
    with pytest.raises(ClientError, match="failed after 2 attempts: unreachable"):
        EndpointClient("http://127.0.0.1:9", "m", retries=1, backoff=0.01).generate(MESSAGES, 5)
    with pytest.raises(ClientError, match="http:// or https://"):
        EndpointClient("ftp://x", "m")


def test_the_cache_answers_a_repeated_request_without_the_server(
    endpoint: tuple[str, Behaviour], tmp_path: Path
) -> None:
    url, behaviour = endpoint
    client = EndpointClient(url, "m", cache=ResponseCache(tmp_path / "cache.sqlite"))
    first = client.yes_probability(MESSAGES)
    again = EndpointClient(url, "m", cache=ResponseCache(tmp_path / "cache.sqlite")).yes_probability(MESSAGES)
    assert again == first and len(behaviour.requests) == 1
