"""Explain and score the features of an atlas, resumably, always with the baseline beside the LLM.

Per feature: the explainer sees the top contexts and half of the quantile samples (every other one, so
all activation levels); the scorers use the other half (activating) and the random silent contexts
(non-activating), which the explainer never saw. The baseline explanation is made and scored on the same
examples by the same scorer as the LLM's, so their scores compare. Baselines are made :data:`BATCH`
features at a time from their examples read in one query (and, by the keyword scorer, scored together);
they are stored one transaction per batch, an LLM's explanations one feature at a time. Features that
already hold an explanation by every requested method are skipped; failures are recorded per feature and
method, with the reason, and retried by the next run.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurelens.atlas import Atlas, Context
from featurelens.atlas.batch import ExampleBatch
from featurelens.atlas.explanations import Explanation, ExplanationWriter
from featurelens.atlas.schema import EXAMPLE_KINDS
from featurelens.errors import FeatureLensError
from featurelens.explain.baseline import Background, baseline_explanations
from featurelens.explain.client import (
    ClientError,
    EndpointClient,
    LanguageModelClient,
    LocalClient,
    ResponseCache,
)
from featurelens.explain.prompts import degenerate_reason, explain_messages, parse_explanation
from featurelens.explain.scoring import (
    Ask,
    Score,
    Words,
    client_asker,
    detection,
    fuzzing,
    keyword_asker,
    keyword_scores,
)
from featurelens.paths import edited

EXPLAINERS = ("baseline", "local", "openai")
BATCH = 256  # features whose baselines are made and keyword-scored together
GIVE_UP_AFTER = 5  # an explainer that fails on every one of the first features is broken, not unlucky
SCORERS = ("keyword", "local", "openai")


class ExplainError(FeatureLensError):
    """Explain options that cannot work."""


@dataclass(frozen=True)
class ExplainJob:
    """What to explain (see ``featurelens explain --help``)."""

    atlas: str
    explainer: str = "baseline"
    scorer: str | None = None
    features: str = "top:200"
    model: str = "smollm2"
    base_url: str | None = None
    api_model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 3
    candidates: int = 1
    n_examples: int = 10
    max_tokens: int = 60
    cache: str | None = None
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if self.explainer not in EXPLAINERS:
            raise ExplainError(f"--explainer must be one of {', '.join(EXPLAINERS)}, got {self.explainer!r}")
        if self.scorer is not None and self.scorer not in SCORERS:
            raise ExplainError(f"--scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if "openai" in (self.explainer, self.scorer) and not (self.base_url and self.api_model):
            raise ExplainError("the openai explainer/scorer needs --base-url and --api-model")
        for name in ("concurrency", "candidates", "n_examples", "max_tokens"):
            if getattr(self, name) < 1:
                raise ExplainError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.timeout <= 0 or self.retries < 0:
            raise ExplainError("--timeout must be positive and --retries at least 0")

    @property
    def scorer_name(self) -> str:
        return self.scorer or ("keyword" if self.explainer == "baseline" else self.explainer)


@dataclass
class ExplainSummary:
    """What a run did: per method, the features explained and their mean scores; skips by reason."""

    features: int = 0
    explained: dict[str, int] = field(default_factory=dict)
    detection_auroc: dict[str, list[float]] = field(default_factory=dict)
    fuzzing_auroc: dict[str, list[float]] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    llm_beats_baseline: int = 0
    compared: int = 0
    already_done: int = 0
    seconds: float = 0.0


def select_features(atlas: Atlas, spec: str, seed: int) -> list[int]:
    """``top:N`` (the N densest that fired), ``random:N``, ``all``, or ids and ranges like ``3,7,10-20``."""
    n = len(atlas)
    kind, _, count = spec.partition(":")
    try:
        if kind == "all":
            return list(range(n))
        if kind == "top":
            return [f.id for f in atlas.features(sort="density", limit=int(count)) if f.count > 0]
        if kind == "random":
            return sorted(random.Random(seed).sample(range(n), min(int(count), n)))
        chosen: list[int] = []
        for part in spec.split(","):
            first, _, last = part.strip().partition("-")
            chosen.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ExplainError(f"--features {spec!r}: use top:N, random:N, all, or ids like 3,7,10-20") from None
    for feature in chosen:
        atlas.check_id(feature)
    return list(dict.fromkeys(chosen))


def _client(kind: str, job: ExplainJob, cache: ResponseCache) -> LanguageModelClient:
    if kind == "local":
        return LocalClient(job.model, device=job.device, cache=cache)
    assert job.base_url and job.api_model
    return EndpointClient(
        job.base_url,
        job.api_model,
        api_key_env=job.api_key_env,
        timeout=job.timeout,
        retries=job.retries,
        cache=cache,
    )


@dataclass(frozen=True)
class _Examples:
    shown: list[Context]
    activating: list[Context]
    silent: list[Context]


def _shown(is_top: Any, is_quantile: Any, rank: Any, n_shown: int) -> Any:
    """The explainer sees the top ``n_shown`` contexts and the even-ranked quantile samples (on scalars or
    arrays alike); the odd-ranked ones are held out for scoring."""
    return (is_top & (rank < n_shown)) | (is_quantile & (rank % 2 == 0))


def split_examples(contexts: dict[str, list[Context]], n_shown: int) -> _Examples:
    """One feature's examples (by kind, in rank order) for the explainer and held out for scoring."""
    return _Examples(
        shown=[
            c
            for c in contexts["top"] + contexts["quantile"]
            if _shown(c.kind == "top", c.kind == "quantile", c.rank, n_shown)
        ],
        activating=[c for c in contexts["quantile"] if c.rank % 2 == 1],
        silent=contexts["negative"],
    )


def split_rows(batch: ExampleBatch, n_shown: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`split_examples` on the rows of a batch: (shown, activating, silent) [E] masks."""
    top, quantile = batch.kind == EXAMPLE_KINDS.index("top"), batch.kind == EXAMPLE_KINDS.index("quantile")
    return (
        _shown(top, quantile, batch.rank, n_shown),
        quantile & (batch.rank % 2 == 1),
        batch.kind == EXAMPLE_KINDS.index("negative"),
    )


def _explanation(
    feature: int,
    method: str,
    model: str,
    text: str,
    scorer: str,
    scores: tuple[Score, Score],
    digest: str,
    seconds: float,
) -> Explanation:
    found, fuzzed = scores
    return Explanation(
        feature, method, model, text, scorer,
        found.balanced_accuracy, found.auroc, found.auroc_low, found.auroc_high, found.n, found.n_positive,
        fuzzed.balanced_accuracy, fuzzed.auroc, fuzzed.auroc_low, fuzzed.auroc_high,
        fuzzed.n, fuzzed.n_positive, digest, seconds, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )  # fmt: skip


@dataclass(frozen=True)
class _Baseline:
    """One feature's baseline explanation, made with the rest of its batch (keyword scores included)."""

    feature: int
    text: str
    scores: tuple[Score, Score] | None
    digest: str
    seconds: float
    skip: str | None
    contexts: dict[str, list[Context]] | None


class _Explainer:
    """Everything the features need: the corpus statistics, the explainer client and the scorer."""

    def __init__(self, atlas: Atlas, job: ExplainJob) -> None:
        self.atlas = atlas
        self.job = job
        self.vocab = atlas.vocab()
        self.words = Words.of(self.vocab)
        settings = atlas.meta.get("settings", {})
        width = settings.get("before", 16) + 1 + settings.get("after", 4)
        self.background = Background.of(self.words.tokens(atlas.token_stream()), self.words, width)
        # beside the atlas, or beside its local copy when the atlas is a URL
        local = Path(atlas.path)
        cache_path = Path(job.cache) if job.cache else local.with_name(f".{local.name}.llm-cache.sqlite")
        cache = ResponseCache(cache_path)
        self.client = _client(job.explainer, job, cache) if job.explainer != "baseline" else None
        scorer = job.scorer_name
        if scorer == "keyword":
            self.ask: Ask = keyword_asker
            self.scorer_label = "keyword"
        else:
            same = self.client is not None and scorer == job.explainer
            scoring_client = self.client if same and self.client is not None else _client(scorer, job, cache)
            self.ask = client_asker(scoring_client)
            self.scorer_label = scoring_client.name
        self.methods = ["baseline"] + ([self.client.name] if self.client is not None else [])
        if isinstance(self.client, LocalClient):
            _ = self.client.lm  # load now: a model that cannot generate fails here, in one line

    def _seed(self, feature: int) -> int:
        return self.job.seed * 1_000_003 + feature

    def _scores(self, text: str, examples: _Examples, feature: int) -> tuple[Score, Score]:
        seed = self._seed(feature)
        return (
            detection(self.ask, text, examples.activating, examples.silent, seed),
            fuzzing(self.ask, text, examples.activating, seed),
        )

    def baselines(self, features: list[int]) -> list[_Baseline]:
        """The baseline of each of ``features`` (sorted), made and (by keywords) scored all at once."""
        started = time.perf_counter()
        batch = self.atlas.examples(features)
        shown, activating, silent = split_rows(batch, self.job.n_examples)
        texts = baseline_explanations(batch, shown, self.words, self.background)
        seeds = [self._seed(int(f)) for f in batch.features]
        keyword = self.scorer_label == "keyword"
        scores = keyword_scores(texts, batch, activating, silent, self.words, seeds) if keyword else None
        seconds = (time.perf_counter() - started) / max(len(batch.features), 1)
        bounds = batch.bounds()
        found = []
        for i, feature in enumerate(batch.features.tolist()):
            rows = slice(bounds[i], bounds[i + 1])
            skip = (
                "never fired: no examples"
                if not (batch.kind[rows] == EXAMPLE_KINDS.index("top")).any()
                else "no held-out activating or silent examples"
                if not (activating[rows].any() and silent[rows].any())
                else None
            )
            seen = np.flatnonzero(shown[rows]) + bounds[i]
            digest = hashlib.sha256(batch.tokens[seen].tobytes() + batch.activations[seen].tobytes())
            needs_contexts = skip is None and (self.client is not None or not keyword)
            found.append(
                _Baseline(
                    feature,
                    texts[i],
                    scores[i] if scores is not None else None,
                    digest.hexdigest()[:16],
                    seconds,
                    skip,
                    batch.contexts(i, self.vocab) if needs_contexts else None,
                )
            )
        return found

    def run(self, baseline: _Baseline) -> tuple[int, list[Explanation], dict[str, str]]:
        feature_id = baseline.feature
        if baseline.skip is not None:
            return feature_id, [], dict.fromkeys(self.methods, baseline.skip)
        done: list[Explanation] = []
        skips: dict[str, str] = {}
        examples = split_examples(baseline.contexts, self.job.n_examples) if baseline.contexts else None
        started = time.perf_counter()
        try:
            scores = baseline.scores
            if scores is None:
                assert examples is not None
                scores = self._scores(baseline.text, examples, feature_id)
            seconds = baseline.seconds + time.perf_counter() - started
            done.append(
                _explanation(
                    feature_id,
                    "baseline",
                    "none",
                    baseline.text,
                    self.scorer_label,
                    scores,
                    baseline.digest,
                    seconds,
                )
            )
        except ClientError as error:
            skips["baseline"] = f"scorer failed: {error}"
        if self.client is not None:
            assert examples is not None
            self._explain_with_client(self.client, feature_id, examples, done, skips)
        return feature_id, done, skips

    def _explain_with_client(
        self,
        client: LanguageModelClient,
        feature_id: int,
        examples: _Examples,
        done: list[Explanation],
        skips: dict[str, str],
    ) -> None:
        messages = explain_messages(examples.shown)
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        started = time.perf_counter()
        try:
            best: tuple[float, str, tuple[Score, Score]] | None = None
            rejected = ""
            for attempt in range(self.job.candidates):
                prompt = (
                    messages
                    if attempt == 0
                    else [
                        *messages,
                        {"role": "user", "content": f"Another, different explanation (#{attempt + 1})?"},
                    ]
                )
                candidate = parse_explanation(client.generate(prompt, self.job.max_tokens))
                if reason := degenerate_reason(candidate):
                    rejected = reason  # a loop, an echo or nothing: never stored as an explanation
                    continue
                scores = self._scores(candidate, examples, feature_id)
                rank = scores[0].auroc if scores[0].auroc is not None else scores[0].balanced_accuracy
                if best is None or rank > best[0]:
                    best = (rank, candidate, scores)
            if best is None:
                raise ClientError(rejected)
            done.append(
                _explanation(
                    feature_id,
                    client.name,
                    client.name,
                    best[1],
                    self.scorer_label,
                    best[2],
                    digest,
                    time.perf_counter() - started,
                )
            )
        except ClientError as error:
            skips[client.name] = str(error)


def explain_atlas(job: ExplainJob, on_feature: Callable[[int, int], None] | None = None) -> ExplainSummary:
    """Explain ``job.features`` of ``job.atlas`` (only what is missing) and store the results in it (an
    atlas at a URL is edited in a local copy, uploaded back when the run ends, finished or not).

    ``on_feature(done, total)`` is called after each feature (for progress bars).
    """
    started = time.perf_counter()
    with edited(job.atlas) as path:  # a remote atlas: a local copy, uploaded back at the end
        writer = ExplanationWriter(path)
        summary = ExplainSummary()
        try:
            with Atlas.open(path) as atlas:
                explainer = _Explainer(atlas, job)
                wanted = select_features(atlas, job.features, job.seed)
                finished = set.intersection(*(writer.done(method) for method in explainer.methods))
                todo = [f for f in wanted if f not in finished]
                summary.features, summary.already_done = len(wanted), len(wanted) - len(todo)
                workers = (
                    1
                    if explainer.client is None or isinstance(explainer.client, LocalClient)
                    else job.concurrency
                )
                done = 0
                for first in range(0, len(todo), BATCH):
                    # one transaction per batch of baselines; an LLM's features are stored one by one
                    together = explainer.client is None
                    results = _map(explainer.run, explainer.baselines(todo[first : first + BATCH]), workers)
                    for group in [list(results)] if together else ([result] for result in results):
                        writer.save(group)
                        for _, explanations, skips in group:
                            _tally(summary, explanations, skips)
                            done += 1
                            if done == GIVE_UP_AFTER:
                                _check_working(summary, explainer)
                            if on_feature is not None:
                                on_feature(done, len(todo))
        finally:
            writer.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _check_working(summary: ExplainSummary, explainer: _Explainer) -> None:
    """Stop a run whose explainer failed on every one of the first features (finished work is kept)."""
    llm_methods = explainer.methods[1:]
    if llm_methods and summary.skipped and not any(summary.explained.get(m) for m in llm_methods):
        reason = summary.skipped.most_common(1)[0][0]
        raise ExplainError(
            f"the explainer failed on the first {GIVE_UP_AFTER} features ({reason}); finished work is kept"
        )


def _map(
    run: Callable[[_Baseline], tuple[int, list[Explanation], dict[str, str]]],
    todo: list[_Baseline],
    workers: int,
) -> Iterator[tuple[int, list[Explanation], dict[str, str]]]:
    if workers == 1:
        yield from map(run, todo)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(run, todo)


def _tally(summary: ExplainSummary, explanations: list[Explanation], skips: dict[str, str]) -> None:
    by_method = {e.method: e for e in explanations}
    for e in explanations:
        summary.explained[e.method] = summary.explained.get(e.method, 0) + 1
        if e.detection_auroc is not None:
            summary.detection_auroc.setdefault(e.method, []).append(e.detection_auroc)
        if e.fuzzing_auroc is not None:
            summary.fuzzing_auroc.setdefault(e.method, []).append(e.fuzzing_auroc)
    summary.skipped.update(skips.values())
    baseline = by_method.get("baseline")
    llm = [e for method, e in by_method.items() if method != "baseline"]
    if (
        baseline is not None
        and llm
        and baseline.detection_auroc is not None
        and llm[0].detection_auroc is not None
    ):
        summary.compared += 1
        summary.llm_beats_baseline += llm[0].detection_auroc > baseline.detection_auroc
