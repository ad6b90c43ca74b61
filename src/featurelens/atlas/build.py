"""Build an atlas: resolve the dictionary and its activations, stream them once, write one SQLite file."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featurelens.atlas.accumulate import HISTOGRAM_EDGES, AtlasAccumulator, AtlasSettings
from featurelens.atlas.effects import (
    input_effects,
    nearest_latents,
    output_effects,
    read_directions,
    write_directions,
)
from featurelens.atlas.sources import RowChunk, live_chunks, store_chunks
from featurelens.atlas.write import AtlasContents, effect_token_ids, write_atlas
from featurelens.capture.store import ActivationStore, read_manifest
from featurelens.corpus import CorpusConfig
from featurelens.dictionaries.base import Dictionary
from featurelens.dictionaries.identity import IdentityDictionary
from featurelens.errors import AtlasError
from featurelens.models import LanguageModel, load_model
from featurelens.models.loading import resolve_device
from featurelens.paths import RemotePath, describe, location, readable, staged_output
from featurelens.training.from_store import read_training

NEURONS = re.compile(r"^layers\.\d+\.mlp_neurons$")
OUTLIER_MULTIPLE = 10.0


@dataclass(frozen=True)
class AtlasJob:
    """What to map: ``dictionary`` is a dictionary folder, or a hook ``layers.i.mlp_neurons`` for neurons.

    Activations come from ``acts`` (default: the store the dictionary was trained on, when it still
    exists) or, with ``live`` or when there is no store, from ``model`` run on ``corpus``.
    """

    dictionary: str
    out: str
    tokens: int = 200_000
    model: str | None = None
    corpus: str | None = None
    acts: str | None = None
    live: bool = False
    seq_len: int | None = None
    batch_size: int = 8
    device: str | None = None
    overwrite: bool = False
    settings: AtlasSettings = field(default_factory=AtlasSettings)

    def __post_init__(self) -> None:
        s = self.settings
        if self.tokens < 1:
            raise AtlasError(f"--tokens must be a positive number of tokens, got {self.tokens}")
        if self.batch_size < 1 or (self.seq_len is not None and self.seq_len < 2):
            raise AtlasError("--batch-size must be positive and --seq-len at least 2")
        minimums = {
            "--top-k": (s.top_k, 1),
            "--quantile-bins": (s.quantile_bins, 1),
            "--per-bin": (s.per_bin, 1),
            "--chunk-tokens": (s.chunk_tokens, 1),
            "--negatives": (s.negatives, 0),
        }
        for flag, (value, least) in minimums.items():
            if value < least:
                raise AtlasError(f"{flag} must be at least {least}, got {value}")
        if s.before < 0 or s.after < 0:
            raise AtlasError(f"the context window needs before, after >= 0, got {s.before}, {s.after}")


@dataclass(frozen=True)
class AtlasSummary:
    """What a build did: the file, how many features and tokens, where the activations came from."""

    path: Path | RemotePath
    features: int
    tokens: int
    source: str
    seconds: float


@dataclass(frozen=True)
class _Plan:
    dictionary: Dictionary
    lm: LanguageModel
    kind: str
    training: dict[str, Any]
    store: ActivationStore | None
    corpus: CorpusConfig
    seq_len: int
    max_norm: float | None


def _dictionary(job: AtlasJob) -> tuple[Dictionary | None, dict[str, Any]]:
    """The dictionary and its training.json; (None, {}) for neurons, which need the model first."""
    if NEURONS.match(job.dictionary) and not location(job.dictionary).exists():
        return None, {}
    path = readable(job.dictionary)  # a local copy of a remote folder, with its training.json
    if not path.exists():
        raise AtlasError(
            f"{path} does not exist; give a dictionary folder or a neuron hook such as layers.3.mlp_neurons"
        )
    return Dictionary.load(path), read_training(path) or {}


def _store(job: AtlasJob, training: dict[str, Any], hook: str) -> ActivationStore | None:
    """The store to read, if any: --acts, else the training store when it still exists and has ``hook``."""
    if job.live:
        return None
    if job.acts is not None:
        store = ActivationStore.open(job.acts)
        store.activations(hook)  # an unknown hook fails here with the store's list
        return store
    acts = training.get("acts")
    if acts is None or read_manifest(location(acts)) is None:
        return None
    store = ActivationStore.open(acts)
    return store if hook in store.hooks else None


def _plan(job: AtlasJob) -> _Plan:
    dictionary, training = _dictionary(job)
    store = _store(job, training, dictionary.hook_in) if dictionary is not None else None
    spec = job.model or training.get("model") or (store.manifest["model"]["spec"] if store else None)
    if spec is None and dictionary is not None:
        raise AtlasError(
            f"{job.dictionary} has no training.json saying which model it belongs to; pass --model"
        )
    lm = load_model(spec or "smollm2", device=job.device)
    if dictionary is None:
        dictionary = IdentityDictionary(_hook_width(lm, job.dictionary), job.dictionary)
        store = _store(job, training, job.dictionary) if job.acts else None
    hook = dictionary.hook_in
    width = store.manifest["hooks"][hook]["width"] if store else _hook_width(lm, hook)
    if width != dictionary.d_in:
        raise AtlasError(
            f"{job.dictionary} reads {dictionary.d_in}-wide activations at {hook} but "
            f"{'the store' if store else lm.name} has {width} there: wrong model or dictionary"
        )
    corpus = CorpusConfig(spec=job.corpus) if job.corpus else CorpusConfig(**training.get("corpus", {}))
    seq_len = job.seq_len or int(training.get("seq_len", store.manifest["seq_len"] if store else 256))
    max_norm = training.get("max_norm", {}).get(hook)
    if max_norm is None and store is not None:
        max_norm = OUTLIER_MULTIPLE * float(np.median(store.norms(hook)))
    kind = "neurons" if isinstance(dictionary, IdentityDictionary) else "dictionary"
    return _Plan(dictionary.eval(), lm, kind, training, store, corpus, seq_len, max_norm)


def _hook_width(lm: LanguageModel, hook: str) -> int:
    return int(lm.capture(torch.ones(1, 2, dtype=torch.long), [hook])[hook].shape[-1])


def _expected_rows(plan: _Plan, job: AtlasJob) -> int:
    """Rows the source will yield: exact for a store, an estimate (position 0 left out) when live."""
    if plan.store is not None:
        return min(job.tokens, plan.store.n_tokens)
    return job.tokens * (plan.seq_len - 1) // plan.seq_len


def _chunks(plan: _Plan, job: AtlasJob) -> Iterator[RowChunk]:
    hook, chunk_tokens = plan.dictionary.hook_in, job.settings.chunk_tokens
    if plan.store is not None:
        assert plan.max_norm is not None
        return store_chunks(plan.store, hook, job.tokens, chunk_tokens, plan.max_norm)
    return live_chunks(
        plan.lm,
        hook,
        plan.corpus,
        seq_len=plan.seq_len,
        n_tokens=job.tokens,
        chunk_tokens=chunk_tokens,
        batch_size=job.batch_size,
        max_norm=plan.max_norm,
    )


def build_atlas(job: AtlasJob, on_tokens: Callable[[int, int], None] | None = None) -> AtlasSummary:
    """Stream ``job``'s activations through its dictionary once and write the atlas to ``job.out``.

    ``on_tokens(n, expected)`` is called after each chunk of n rows with the expected total of rows
    (for progress bars), and once more at the end with n = 0 and the exact total.
    """
    out = location(job.out)
    if out.exists() and not job.overwrite:
        raise AtlasError(f"{out} already exists; pass --overwrite to replace it")
    started = time.perf_counter()
    plan = _plan(job)
    device = resolve_device(job.device)
    dictionary = plan.dictionary.to(device)
    accumulator = AtlasAccumulator(dictionary.d_latent, job.settings)
    tokens, positions, sequences = [], [], []
    with torch.no_grad():
        for chunk in _chunks(plan, job):
            if len(chunk.tokens) == 0:
                continue
            codes = dictionary.encode(chunk.acts.to(device)).float().cpu()
            accumulator.add(codes, chunk.sequences)
            tokens.append(chunk.tokens)
            positions.append(chunk.positions)
            sequences.append(chunk.sequences)
            if on_tokens is not None:
                on_tokens(len(chunk.tokens), _expected_rows(plan, job))
    if on_tokens is not None:
        on_tokens(0, accumulator.rows)
    if accumulator.rows == 0:
        raise AtlasError("no tokens to map: the source yielded no rows (all outliers or an empty corpus?)")
    contents = _contents(
        job, plan, accumulator, np.concatenate(tokens), np.concatenate(positions), np.concatenate(sequences)
    )
    with staged_output(job.out) as local:
        write_atlas(local, contents)
    return AtlasSummary(
        out, dictionary.d_latent, accumulator.rows, contents.meta["source"], time.perf_counter() - started
    )


def _contents(
    job: AtlasJob,
    plan: _Plan,
    accumulator: AtlasAccumulator,
    tokens: np.ndarray,
    positions: np.ndarray,
    sequences: np.ndarray,
) -> AtlasContents:
    dictionary, lm, settings = plan.dictionary.cpu(), plan.lm, job.settings
    writes = write_directions(dictionary, lm)
    reads = read_directions(dictionary, lm)
    outputs = (
        output_effects(writes, lm, dictionary.hook_out, settings.n_tokens_effects)
        if writes is not None
        else None
    )
    inputs = input_effects(reads, lm, settings.n_tokens_effects) if reads is not None else None
    nearest_basis = writes if writes is not None else dictionary.W_dec.detach().float()
    nearest = nearest_latents(nearest_basis, settings.n_neighbours) if dictionary.d_latent > 1 else None
    ranked = [*(outputs or ()), *([inputs] if inputs is not None else [])]
    ids = sorted(set(np.unique(tokens).tolist()) | effect_token_ids(ranked))
    vocab = dict(zip(ids, lm.tokenizer.batch_decode([[i] for i in ids]), strict=True))
    return AtlasContents(
        meta=_meta(job, plan, accumulator, outputs is not None, inputs is not None),
        tokens=tokens,
        sequences=sequences,
        positions=positions,
        vocab=vocab,
        stats=accumulator,
        output_effects=outputs,
        input_effects=inputs,
        nearest=nearest,
    )


def _meta(
    job: AtlasJob, plan: _Plan, accumulator: AtlasAccumulator, outputs: bool, inputs: bool
) -> dict[str, Any]:
    from featurelens import __version__

    dictionary = plan.dictionary
    folder = readable(job.dictionary)
    evaluation_file = folder / "evaluation.json"
    evaluation = json.loads(evaluation_file.read_text()) if evaluation_file.is_file() else None
    if dictionary.hook_out == "final_norm":
        output_note = "logits = W_U · decoder direction (the direction is read after the final norm)"
    elif outputs:
        output_note = "logits = W_U · (final_norm(c·d) − final_norm(0)), d scaled to unit RMS, c = 1e3"
    else:
        output_note = "none: the dictionary does not write to a model-width hook, or the model has no head"
    return {
        "kind": plan.kind,
        "dictionary": describe(location(job.dictionary)) if folder.exists() else job.dictionary,
        "arch": dictionary.arch,
        "hook_in": dictionary.hook_in,
        "hook_out": dictionary.hook_out,
        "d_in": dictionary.d_in,
        "d_latent": dictionary.d_latent,
        "model": job.model or plan.training.get("model") or plan.lm.spec,
        "corpus": asdict(plan.corpus),
        "seq_len": plan.seq_len,
        "source": "store" if plan.store is not None else "live",
        "acts": describe(plan.store.path) if plan.store is not None else None,
        "tokens": accumulator.rows,
        "tokens_requested": job.tokens,
        "max_norm": plan.max_norm,
        "settings": asdict(job.settings),
        "histogram_edges": HISTOGRAM_EDGES,
        "output_effects": output_note,
        "input_effects": "cosine(encoder direction, input embedding)"
        if inputs
        else "none: not a model-width input",
        "cooccurrence": "exact"
        if accumulator.cooccurrence is not None
        else (
            f"skipped: {dictionary.d_latent} latents exceed the limit "
            f"of {job.settings.cooccurrence_max_latents}"
        ),
        "evaluation": evaluation,
        "training": plan.training.get("heldout_metrics"),
        "featurelens_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
