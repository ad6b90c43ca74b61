"""Language-model clients for explaining and scoring: a local transformers model or an OpenAI-compatible
endpoint, behind one protocol, with an on-disk cache keyed by the request so reruns cost nothing.

A client answers two kinds of request:

* ``generate(messages, max_tokens)``: a chat completion (greedy), the text of the reply;
* ``yes_probability(messages)``: P(yes) / (P(yes) + P(no)) for the first token of the reply, read from the
  local model's logits or the endpoint's logprobs; an endpoint without logprobs falls back to parsing the
  reply ("yes..." -> 1, "no..." -> 0) and says so, and a reply that is neither raises :class:`ClientError`
  (a recorded skip, never a silent guess).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import torch

from featurelens.errors import FeatureLensError
from featurelens.models import LanguageModel, load_model

Messages = list[dict[str, str]]
BATCH = 8  # prompts per forward pass of a local model
YES, NO = ("yes", "y"), ("no", "n")


class ClientError(FeatureLensError):
    """A language-model request that failed for good (after retries), or a reply that cannot be read."""


@dataclass(frozen=True)
class YesNo:
    """P(yes) normalised over yes and no, and how it was read: ``logits``, ``logprobs`` or ``parsed``."""

    p_yes: float
    method: str


class LanguageModelClient(Protocol):
    name: str

    def generate(self, messages: Messages, max_tokens: int) -> str: ...

    def yes_probability(self, messages: Messages) -> YesNo: ...

    def yes_probabilities(self, batch: list[Messages]) -> list[YesNo]: ...


class ResponseCache:
    """Replies keyed by a hash of the full request, in one SQLite file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()
        self._lock = threading.Lock()

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, json.dumps(value)))
            self._db.commit()


def _cached(cache: ResponseCache | None, request: dict[str, Any], compute: Any) -> Any:
    if cache is None:
        return compute()
    key = ResponseCache.key(request)
    found = cache.get(key)
    if found is not None:
        return found
    value = compute()
    cache.put(key, value)
    return value


@contextmanager
def _model_errors() -> Iterator[None]:
    """A local model that fails on a request (shape, memory, context) is a :class:`ClientError`: a skip."""
    try:
        yield
    except (RuntimeError, ValueError, IndexError) as error:
        raise ClientError(f"the local model failed: {str(error).splitlines()[0][:200]}") from error


def _answer_ids(tokenizer: Any, words: tuple[str, ...]) -> list[int]:
    """First token id of each spelling of ``words`` (Yes, yes, " Yes", ...), without duplicates."""
    ids: set[int] = set()
    for word in words:
        for spelling in (word, word.capitalize(), " " + word, " " + word.capitalize()):
            encoded = tokenizer.encode(spelling, add_special_tokens=False)
            if encoded:
                ids.add(int(encoded[0]))
    return sorted(ids)


class LocalClient:
    """A local transformers model (any spec :func:`load_model` accepts); one request at a time."""

    def __init__(
        self, spec: str = "smollm2", *, device: str | None = None, cache: ResponseCache | None = None
    ):
        self.spec = spec
        self.name = f"local:{spec}"
        self._device = device
        self._cache = cache
        self._lm: LanguageModel | None = None
        self._lock = threading.Lock()

    @property
    def lm(self) -> LanguageModel:
        if self._lm is None:
            lm = load_model(self.spec, device=self._device)
            can_generate = getattr(lm.model, "can_generate", None)
            if not callable(can_generate) or not can_generate():
                raise ClientError(
                    f"{self.spec} cannot generate text (not a causal language model); pick another"
                )
            self._lm = lm
        return self._lm

    def _prompt_ids(self, messages: Messages, new_tokens: int = 1) -> torch.Tensor:
        tokenizer = self.lm.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        limit = int(getattr(self.lm.model.config, "max_position_embeddings", 2048) or 2048)
        if ids.shape[1] + new_tokens > limit:
            raise ClientError(
                f"a prompt of {ids.shape[1]} tokens plus {new_tokens} new ones exceeds the model's "
                f"{limit}-token context"
            )
        return ids.to(self.lm.device)

    def generate(self, messages: Messages, max_tokens: int) -> str:
        def run() -> str:
            with self._lock, torch.no_grad(), _model_errors():
                ids = self._prompt_ids(messages, max_tokens)
                out = self.lm.model.generate(  # type: ignore[operator]
                    ids,
                    max_new_tokens=max_tokens,
                    do_sample=False,
                    use_cache=True,
                    attention_mask=torch.ones_like(ids),
                    pad_token_id=getattr(self.lm.tokenizer, "eos_token_id", None) or 0,
                )
            return str(self.lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))

        request = {"client": self.name, "kind": "generate", "messages": messages, "max_tokens": max_tokens}
        return str(_cached(self._cache, request, run))

    def yes_probability(self, messages: Messages) -> YesNo:
        return self.yes_probabilities([messages])[0]

    def yes_probabilities(self, batch: list[Messages]) -> list[YesNo]:
        """P(yes) for each prompt, from the next-token logits; uncached prompts run :data:`BATCH` at a time
        (right-padded, each read at its own last token)."""
        requests = [{"client": self.name, "kind": "yes_probability", "messages": m} for m in batch]
        keys = [ResponseCache.key(r) for r in requests]
        found = [self._cache.get(k) if self._cache else None for k in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        for first in range(0, len(missing), BATCH):
            chunk = missing[first : first + BATCH]
            for i, p_yes in zip(chunk, self._p_yes([batch[i] for i in chunk]), strict=True):
                found[i] = p_yes
                if self._cache:
                    self._cache.put(keys[i], p_yes)
        return [YesNo(float(value or 0.0), "logits") for value in found]

    def _p_yes(self, batch: list[Messages]) -> list[float]:
        with self._lock, torch.no_grad(), _model_errors():
            prompts = [self._prompt_ids(m)[0] for m in batch]
            lengths = torch.tensor([len(p) for p in prompts])
            ids = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True, padding_value=0)
            mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long().to(ids.device)
            logits = self.lm.model(input_ids=ids, attention_mask=mask).logits
            last = logits[torch.arange(len(prompts)), (lengths - 1).to(logits.device)].float()
        probs = last.softmax(-1).cpu()
        tokenizer = self.lm.tokenizer
        yes = probs[:, _answer_ids(tokenizer, YES)].sum(1)
        no = probs[:, _answer_ids(tokenizer, NO)].sum(1)
        return torch.where(yes + no > 0, yes / (yes + no), 0.5).tolist()


class EndpointClient:
    """Any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, ollama, hosted APIs).

    The key is read from the environment variable ``api_key_env`` (none needed for local servers).
    Timeouts, connection errors, 429 and 5xx are retried ``retries`` times with exponential backoff.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        cache: ResponseCache | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ClientError(f"--base-url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}@{self.base_url}"
        self.retries = retries
        self.backoff = backoff
        self._cache = cache
        key = os.environ.get(api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._http.post(url, json=payload)
            except httpx.TimeoutException:
                last = "timed out"
                continue
            except httpx.TransportError as error:
                last = f"unreachable ({error})"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise ClientError(
                    f"{url} refused the request: HTTP {response.status_code} {response.text[:200]}"
                )
            try:
                body = response.json()
                body["choices"][0]["message"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise ClientError(f"{url} answered something that is not a chat completion") from None
            return dict(body)
        raise ClientError(f"{url} failed after {self.retries + 1} attempts: {last}")

    def generate(self, messages: Messages, max_tokens: int) -> str:
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}

        def run() -> str:
            content = self._post(payload)["choices"][0]["message"].get("content")
            if not isinstance(content, str):
                raise ClientError(f"{self.base_url} returned no text content")
            return content

        return str(_cached(self._cache, {"client": self.name, **payload}, run))

    def yes_probability(self, messages: Messages) -> YesNo:
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 10,
        }

        def run() -> list[Any]:
            choice = self._post(payload)["choices"][0]
            return [_p_yes_from_logprobs(choice.get("logprobs")), choice["message"].get("content") or ""]

        p_yes, text = _cached(self._cache, {"client": self.name, **payload}, run)
        if p_yes is not None:
            return YesNo(float(p_yes), "logprobs")
        answer = str(text).strip().lower().strip(".!\"' ")
        if answer.startswith(YES):
            return YesNo(1.0, "parsed")
        if answer.startswith(NO):
            return YesNo(0.0, "parsed")
        raise ClientError(f"the answer {str(text)[:40]!r} is neither yes nor no")

    def yes_probabilities(self, batch: list[Messages]) -> list[YesNo]:
        return [self.yes_probability(messages) for messages in batch]


def _p_yes_from_logprobs(logprobs: Any) -> float | None:
    """P(yes) / (P(yes) + P(no)) from the first token's top logprobs, or None when they are absent."""
    try:
        top = logprobs["content"][0]["top_logprobs"]
    except (TypeError, KeyError, IndexError):
        return None
    yes = no = 0.0
    for entry in top:
        word = str(entry.get("token", "")).strip().lower()
        probability = math.exp(float(entry.get("logprob", -math.inf)))
        if word in YES:
            yes += probability
        elif word in NO:
            no += probability
    return yes / (yes + no) if yes + no > 0 else None
