"""The local client reads P(yes) from logits; batching with padding must not change a single answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurelens.explain import LocalClient


def test_batched_answers_equal_one_at_a_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    client = LocalClient(str(tiny_model_dir))
    prompts = [
        [{"role": "user", "content": text}]
        for text in ("a", "the value of the class is", "x y", "Is the feature active here? Yes or No?")
    ]
    together = [answer.p_yes for answer in client.yes_probabilities(prompts)]
    alone = [client.yes_probability(prompt).p_yes for prompt in prompts]
    assert together == pytest.approx(alone, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in together) and len(set(together)) > 1
    reply = client.generate(prompts[1], 5)
    assert isinstance(reply, str) and reply == client.generate(prompts[1], 5)  # greedy: deterministic
