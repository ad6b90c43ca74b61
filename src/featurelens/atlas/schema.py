"""The atlas file: one SQLite database, readable with any SQLite client.

Tables (``row`` always means a row of ``tokens``: one token the dictionary saw, in stream order)::

    meta           key TEXT PRIMARY KEY, value TEXT            JSON values; see below
    features       id INTEGER PRIMARY KEY                       latent / neuron index
                   count INTEGER        rows where it fired (activation > 0)
                   density REAL         count / meta.tokens
                   mean_activation REAL mean activation over the rows where it fired (NULL if never)
                   max_activation REAL  largest activation seen (NULL if it never fired)
                   hist_first INTEGER   index into meta.histogram_edges of hist_counts[0] (NULL if never)
                   hist_counts TEXT     JSON list: non-zero activations per log-spaced bin, from hist_first
                   top_tokens TEXT      JSON list of [token text, count] at the top contexts' maxima
    examples       feature, kind, rank  PRIMARY KEY; kind is 'top' (rank 0 = largest activation),
                                        'quantile' (a uniform sample of firing rows, ranked by activation,
                                        lowest first, cut into equal-count bins) or 'negative' (a random
                                        row whose whole window is silent for the feature)
                   bin INTEGER          quantile bin, 0 = lowest activations (NULL unless kind='quantile')
                   row INTEGER          the example's centre row
                   activation REAL      the feature's activation at the centre row
                   first_row, last_row  the context window, inclusive, never crossing a sequence boundary
                   activations BLOB     float16 little-endian (:data:`BLOB_DTYPE`), the feature's activation
                                        on each window row (NULL for negatives: all zero by construction);
                                        ``activation`` holds the centre's exact value
    tokens         row INTEGER PRIMARY KEY, token INTEGER, sequence INTEGER, position INTEGER
    vocab          token INTEGER PRIMARY KEY, text TEXT         decoded text of every token id used here
    token_effects  feature, kind, rank  PRIMARY KEY; kind 'output_top' / 'output_bottom' (logits of the
                                        decoder direction through the final norm), 'input_top' (cosine of
                                        the encoder direction with input embeddings)
                   token INTEGER, value REAL
    neighbours     feature, kind, rank  PRIMARY KEY; kind 'cooccurring' (value = Jaccard index of firing,
                                        count = rows where both fired) or 'nearest' (value = cosine of
                                        the write directions)
                   other INTEGER, value REAL, count INTEGER
    search         FTS5(top_tokens, output_tokens, explanations); rowid = feature id
    explanations   feature, method  PRIMARY KEY (added by `featurelens explain`; method is ``baseline`` or
                                    the explainer, e.g. ``local:smollm2``)
                   model, text, scorer, detection_* and fuzzing_* (balanced_accuracy, auroc, auroc_low,
                   auroc_high, n, n_positive), prompt_hash (digest of what the explainer saw: an LLM's
                   prompt, the baseline's shown examples), seconds, created
    explanation_skips  feature, method PRIMARY KEY; reason, created (retried by the next run)

``meta`` keys: format (``featurelens.atlas``), version, complete (true, written last), kind (``dictionary``
or ``neurons``), dictionary, arch, hook_in, hook_out, d_in, d_latent, model, corpus, seq_len, source
(``store`` or ``live``), acts, tokens (rows measured), tokens_requested, max_norm (rows above it were left
out), settings, histogram_edges, output_effects (how the final norm was applied, or why there are none),
input_effects, cooccurrence (``exact`` or why it was skipped), evaluation (the dictionary's
evaluation.json, if any), training (held-out metrics, if any), featurelens_version, created.
"""

from __future__ import annotations

FORMAT = "featurelens.atlas"
VERSION = 1
BLOB_DTYPE = "<f2"  # per-token activations of a context window: half the size of float32, ~3 digits

EXAMPLE_KINDS = ("top", "quantile", "negative")
EFFECT_KINDS = ("output_top", "output_bottom", "input_top")
NEIGHBOUR_KINDS = ("cooccurring", "nearest")

DDL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (
    id INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    density REAL NOT NULL,
    mean_activation REAL,
    max_activation REAL,
    hist_first INTEGER,
    hist_counts TEXT NOT NULL,
    top_tokens TEXT NOT NULL
);
CREATE TABLE examples (
    feature INTEGER NOT NULL,
    kind TEXT NOT NULL,
    rank INTEGER NOT NULL,
    bin INTEGER,
    row INTEGER NOT NULL,
    activation REAL NOT NULL,
    first_row INTEGER NOT NULL,
    last_row INTEGER NOT NULL,
    activations BLOB,
    PRIMARY KEY (feature, kind, rank)
) WITHOUT ROWID;
CREATE TABLE tokens (
    row INTEGER PRIMARY KEY,
    token INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    position INTEGER NOT NULL
);
CREATE TABLE vocab (token INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE token_effects (
    feature INTEGER NOT NULL,
    kind TEXT NOT NULL,
    rank INTEGER NOT NULL,
    token INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (feature, kind, rank)
) WITHOUT ROWID;
CREATE TABLE neighbours (
    feature INTEGER NOT NULL,
    kind TEXT NOT NULL,
    rank INTEGER NOT NULL,
    other INTEGER NOT NULL,
    value REAL NOT NULL,
    count INTEGER,
    PRIMARY KEY (feature, kind, rank)
) WITHOUT ROWID;
CREATE VIRTUAL TABLE search USING fts5(top_tokens, output_tokens, explanations);
"""

EXPLANATIONS_DDL = """
CREATE TABLE IF NOT EXISTS explanations (
    feature INTEGER NOT NULL,
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    scorer TEXT NOT NULL,
    detection_balanced_accuracy REAL,
    detection_auroc REAL,
    detection_auroc_low REAL,
    detection_auroc_high REAL,
    detection_n INTEGER,
    detection_n_positive INTEGER,
    fuzzing_balanced_accuracy REAL,
    fuzzing_auroc REAL,
    fuzzing_auroc_low REAL,
    fuzzing_auroc_high REAL,
    fuzzing_n INTEGER,
    fuzzing_n_positive INTEGER,
    prompt_hash TEXT NOT NULL,
    seconds REAL NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (feature, method)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS explanation_skips (
    feature INTEGER NOT NULL,
    method TEXT NOT NULL,
    reason TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (feature, method)
) WITHOUT ROWID;
"""
