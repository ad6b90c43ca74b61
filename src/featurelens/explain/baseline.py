"""The baseline explanation: no language model, built from token statistics, for many features at once.

A *pattern* is what the keyword scorer checks (:func:`featurelens.explain.scoring.patterns`): a word the
feature fires on (``"B"``), the same right after a given word (``"B" after "A"``), or any token right after
a word (``any token after "A"``). The candidates are the patterns of the tokens a feature is active on in
the examples the explainer is shown (its top contexts and half of its quantile samples). For each, what the
keyword scorer would answer on held-out examples, estimated from the shown ones and the corpus:

* detection, true positives: the share of shown windows that hold it anywhere; false positives: the
  share of random corpus windows that hold it, times the chance that an occurrence does not make the
  feature fire (a window where it fires is not silent): 1 - precision, where precision = (share of the
  shown quantile samples, a uniform sample of the rows it fires on, whose centre matches) * (rows the
  feature fires on) / (occurrences in the corpus);
* fuzzing, true positives: the share of shown windows whose centre (a token it fires on) matches;
  false positives: the share of the shown windows' inactive tokens that match.

The explanation names the patterns (at most :data:`MAX_PATTERNS`, chosen greedily among the
:data:`CANDIDATES` best alone) whose union maximises both true- minus false-positive rates: a token alone
when that is precise enough, in its context when only the context makes it precise. Then come the tokens
the feature's decoder promotes, e.g.
``fires on "Enum" after ".", "Decimal"; promotes "al", "points"``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from featurelens.atlas.batch import ExampleBatch
from featurelens.atlas.schema import EXAMPLE_KINDS
from featurelens.explain.scoring import ANY, PAD, Words

MAX_PATTERNS = 5
CANDIDATES = 16
PROMOTED = 3
RANDOM_WINDOWS = 4096
QUANTILE = EXAMPLE_KINDS.index("quantile")


def describe(text: str) -> str:
    """A word in quotes (“curly” when it holds a straight quote)."""
    return f"“{text}”" if '"' in text else f'"{text}"'


@dataclass(frozen=True)
class Patterns:
    """Integer keys of the patterns over a vocabulary of words: key = (after + 1) * (n + 1) + word + 1
    with ANY = -1 for either part, so every key is below :attr:`span`. Only quotable words are named."""

    texts: list[str]
    named: np.ndarray  # [n] words that describe() quotes so that the scorer reads them back

    @classmethod
    def of(cls, words: Words) -> Patterns:
        named = [bool(t) and not ('"' in t and "”" in t) for t in words.texts]
        return cls(words.texts, np.array(named, dtype=bool))

    @property
    def span(self) -> int:
        return (len(self.texts) + 1) ** 2

    def key(self, word: np.ndarray, after: np.ndarray) -> np.ndarray:
        return (after + 1) * (len(self.texts) + 1) + word + 1

    def phrase(self, key: int) -> str:
        word, after = key % (len(self.texts) + 1) - 1, key // (len(self.texts) + 1) - 1
        if after == ANY:
            return describe(self.texts[word])
        if word == ANY:
            return f"any token after {describe(self.texts[after])}"
        return f"{describe(self.texts[word])} after {describe(self.texts[after])}"

    def at(self, window: np.ndarray) -> np.ndarray:
        """[n, W, 3] the keys each position of the windows [n, W] (word ids, PAD past the end) matches as
        the scorer sees them: its word alone, after the word before it, any token after that one; -1 where
        a word cannot be named or there is none before it in the window."""
        before = np.concatenate([np.full((len(window), 1), PAD), window[:, :-1]], axis=1)
        word_ok = (window >= 0) & self.named[np.maximum(window, 0)]
        before_ok = (before >= 0) & self.named[np.maximum(before, 0)]
        any_ = np.full_like(window, ANY)
        return np.stack(
            [
                np.where(word_ok, self.key(window, any_), -1),
                np.where(word_ok & before_ok, self.key(window, before), -1),
                np.where(before_ok, self.key(any_, before), -1),
            ],
            axis=2,
        )

    def held(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct (window, key) pairs of ``keys`` [n, W, 3] (from :meth:`at`): two arrays [H]."""
        flat = np.sort(keys.reshape(len(keys), -1), axis=1)  # sorting within each window is cheap
        first = (flat >= 0) & np.concatenate([np.ones((len(flat), 1), bool), flat[:, 1:] != flat[:, :-1]], 1)
        window, slot = np.nonzero(first)
        return window, flat[window, slot]


def _lookup(keys: np.ndarray, counts: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``counts`` at ``wanted`` of the sorted ``keys`` (0 where absent)."""
    if not len(keys):
        return np.zeros(wanted.shape, dtype=np.int64)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[at] == wanted, counts[at], 0)


@dataclass(frozen=True)
class Background:
    """Corpus counts of every pattern: occurrences among the ``n_tokens`` mapped tokens, and how many of
    :data:`RANDOM_WINDOWS` random windows of the atlas's width hold it (sorted keys and counts)."""

    patterns: Patterns
    n_tokens: int
    keys: np.ndarray
    counts: np.ndarray
    window_keys: np.ndarray
    window_counts: np.ndarray

    @classmethod
    def of(cls, stream: np.ndarray, words: Words, width: int, seed: int = 0) -> Background:
        """From the word id of every mapped token, in stream order [N] (a pair across two sequences counts
        too: one in a sequence length)."""
        patterns = Patterns.of(words)
        keys = patterns.at(stream[None, :])
        token_keys, counts = np.unique(keys[keys >= 0], return_counts=True)
        starts = np.random.default_rng(seed).integers(0, max(len(stream) - width, 0) + 1, RANDOM_WINDOWS)
        windows = stream[np.minimum(starts[:, None] + np.arange(width), max(len(stream) - 1, 0))]
        window_keys, window_counts = np.unique(patterns.held(patterns.at(windows))[1], return_counts=True)
        return cls(patterns, len(stream), token_keys, counts, window_keys, window_counts)

    def occurrences(self, keys: np.ndarray) -> np.ndarray:
        return _lookup(self.keys, self.counts, keys)

    def window_share(self, keys: np.ndarray) -> np.ndarray:
        return _lookup(self.window_keys, self.window_counts, keys) / RANDOM_WINDOWS


@dataclass(frozen=True)
class _Candidates:
    """The (feature, pattern) candidates of a batch, sorted as codes feature index * span + key, with what
    the greedy choice needs: the false-positive rate alone in silent windows (``fpr``) and among the
    samples' inactive tokens (``decoy``), and which samples hold each one anywhere in their window
    (``window``) and at their centre (``centre``), as pairs (candidate [H], sample [H])."""

    codes: np.ndarray
    fpr: np.ndarray
    decoy: np.ndarray
    window: tuple[np.ndarray, np.ndarray]
    centre: tuple[np.ndarray, np.ndarray]


def _candidates(batch: ExampleBatch, rows: np.ndarray, words: Words, background: Background) -> _Candidates:
    patterns, span = background.patterns, background.patterns.span
    window = words.tokens(batch.tokens[rows])
    keys = patterns.at(window)  # [n, W, 3]
    owner = batch.owner[rows]
    active = batch.activations[rows] > 0
    fired = keys[active]  # [m, 3]
    codes = np.unique((owner[np.nonzero(active)[0]][:, None] * span + fired)[fired >= 0])

    def find(sample: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pair = owner[sample] * span + key
        at = np.minimum(np.searchsorted(codes, pair), len(codes) - 1)
        inside = codes[at] == pair if len(codes) else np.zeros(len(pair), dtype=bool)
        return at[inside], sample[inside]

    feature, key = codes // span, codes % span
    held = find(*patterns.held(keys))
    centre_keys = keys[np.arange(len(rows)), batch.centre[rows]]  # [n, 3]
    centre = find(*(np.nonzero(centre_keys >= 0)[0], centre_keys[centre_keys >= 0]))
    uniform = (batch.kind[rows] == QUANTILE)[centre[1]]
    n_uniform = np.bincount(owner[batch.kind[rows] == QUANTILE], minlength=len(batch.features))
    recall = np.bincount(centre[0][uniform], minlength=len(codes)) / np.maximum(n_uniform[feature], 1)
    precision = np.minimum(recall * batch.counts[feature] / np.maximum(background.occurrences(key), 1), 1.0)
    quiet = (window != PAD) & ~active
    decoys = find(np.repeat(np.nonzero(quiet)[0], 3), keys[quiet].ravel())
    n_quiet = np.bincount(owner, weights=quiet.sum(1), minlength=len(batch.features))
    decoy = np.bincount(decoys[0], minlength=len(codes)) / np.maximum(n_quiet[feature], 1)
    return _Candidates(codes, background.window_share(key) * (1.0 - precision), decoy, held, centre)


def _masks(pairs: tuple[np.ndarray, np.ndarray], local: np.ndarray, kept: np.ndarray) -> dict[int, int]:
    """Per kept candidate, a bit mask of the samples (numbered within their feature by ``local``)."""
    masks: dict[int, int] = defaultdict(int)
    candidate, sample = pairs
    use = kept[candidate]
    for c, bit in zip(candidate[use].tolist(), local[sample[use]].tolist(), strict=True):
        masks[c] |= 1 << bit
    return masks


@dataclass(frozen=True)
class _Option:
    id: int
    fpr: float
    decoy: float
    window: int
    centre: int


def _choose(options: list[_Option], n_samples: int) -> list[int]:
    """Greedy: the options whose union maximises the keyword scorer's expected detection (samples held
    minus silent windows held, patterns independent) plus fuzzing (centres matched minus inactive tokens
    matched) true- minus false-positive rates; at least one."""
    chosen: list[int] = []
    window = centre = 0
    silent, decoy, best = 1.0, 0.0, -math.inf
    while len(chosen) < MAX_PATTERNS:
        gains = [
            (
                ((window | o.window).bit_count() + (centre | o.centre).bit_count()) / n_samples
                + silent * (1.0 - o.fpr)
                - decoy
                - o.decoy,
                i,
            )
            for i, o in enumerate(options)
            if o.id not in chosen
        ]
        if not gains:
            break
        gain, i = max(gains)
        if chosen and gain <= best + 1e-12:
            break
        o = options[i]
        chosen.append(o.id)
        window, centre, silent, decoy, best = (
            window | o.window,
            centre | o.centre,
            silent * (1 - o.fpr),
            decoy + o.decoy,
            gain,
        )
    return chosen


def baseline_explanations(
    batch: ExampleBatch, shown: np.ndarray, words: Words, background: Background
) -> list[str]:
    """One phrase per feature of ``batch`` from its ``shown`` [E] examples (see the module docstring)."""
    patterns, span = background.patterns, background.patterns.span
    rows = np.flatnonzero(shown)
    found = _candidates(batch, rows, words, background)
    feature = found.codes // span
    n_samples = np.bincount(batch.owner[rows], minlength=len(batch.features))
    alone = (
        (
            np.bincount(found.window[0], minlength=len(feature))
            + np.bincount(found.centre[0], minlength=len(feature))
        )
        / np.maximum(n_samples[feature], 1)
        - found.fpr
        - found.decoy
    )
    order = np.lexsort((-alone, feature))
    first = np.searchsorted(feature[order], np.arange(len(batch.features) + 1))
    kept = np.zeros(len(found.codes), dtype=bool)
    for f in range(len(batch.features)):
        best = order[first[f] : first[f + 1]][:CANDIDATES]
        kept[best[(alone[best] > 0) | (np.arange(len(best)) == 0)]] = True
    owner = batch.owner[rows]
    local = np.arange(len(rows)) - np.searchsorted(owner, owner)  # each sample's index within its feature
    windows, centres = _masks(found.window, local, kept), _masks(found.centre, local, kept)
    texts = []
    for f, promoted in enumerate(words.tokens(batch.output_top[:, :PROMOTED]).tolist()):
        options = [
            _Option(int(c), float(found.fpr[c]), float(found.decoy[c]), windows[c], centres[c])
            for c in order[first[f] : first[f + 1]]
            if kept[c]
        ]
        chosen = _choose(options, int(n_samples[f])) if n_samples[f] else []
        phrase = ", ".join(patterns.phrase(int(found.codes[c] % span)) for c in chosen)
        listed = [describe(words.texts[w]) for w in promoted if w >= 0 and patterns.named[w]]
        parts = [f"fires on {phrase}" if phrase else "fires on no token it can name"]
        texts.append("; ".join(parts + ([f"promotes {', '.join(listed)}"] if listed else [])))
    return texts
