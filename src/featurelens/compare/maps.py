"""Layer × layer maps: every hook of one set against every hook of another, on the same tokens, with nulls.

Sources: two activation stores of the same tokens (``acts``, ``acts_b``), or live: ``model`` and ``model_b``
on the same corpus, by default a randomly initialised copy of the same architecture (the null model: what
the architecture and the tokens alone give). Two tokenizers are aligned on shared text spans (see
``compare/alignment.py``): both maps then use the aligned rows. Maps: ``a-a`` (the first set against
itself) and ``a-b``.

Rows are those a capture keeps (every position but the first, no special tokens). A row whose norm exceeds
10× its hook's median norm (set on the first chunk) in either representation is left out of both: a few
attention-sink rows would otherwise dominate linear CKA.

Values: linear CKA (debiased or biased) over every row, from streamed sums (:class:`CkaSums`); any other
measure on a uniform random subsample of ``null_rows`` rows. Nulls: each cell's p-value comes from
``permutations`` shuffles of the subsample (the same rows for every cell; the value tested against the null
is the subsample's own), and cells are called significant at ``alpha`` after a Benjamini–Hochberg
correction over the cells of one map and measure.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from featurelens.capture.rows import live_row_chunks, store_rows
from featurelens.capture.store import ActivationStore
from featurelens.compare.alignment import ALIGNMENT, aligned_chunks
from featurelens.compare.measure import Measure, p_value_of, permutation_orders
from featurelens.compare.registry import measure_from_spec
from featurelens.compare.sums import CkaSums
from featurelens.corpus import CorpusConfig
from featurelens.errors import CompareError
from featurelens.models import LanguageModel, load_model
from featurelens.models.hook_names import resolve_hooks

OUTLIER_MULTIPLE = 10.0
Progress = Callable[[str, str, int], AbstractContextManager[Callable[..., None]]]
STREAMED = {"cka": True, "cka-biased": False}  # measures computed over every row: name -> debiased


@dataclass(frozen=True)
class MapJob:
    """What to map; the CLI maps its flags onto these fields one to one.

    ``model_b``: a second model spec, ``"random"`` (a random initialisation of ``model``'s architecture,
    seeded by ``seed``) or None (only ``a-a``). With ``acts``, the second set comes from ``acts_b`` if given.
    ``hooks_b`` empty: the same patterns as ``hooks``.
    """

    out: str = "runs/compare"
    model: str = "smollm2"
    model_b: str | None = "random"
    acts: str | None = None
    acts_b: str | None = None
    hooks: tuple[str, ...] = ("layers.*.resid_post",)
    hooks_b: tuple[str, ...] = ()
    measures: tuple[str, ...] = ("cka",)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokens: int = 20_000
    seq_len: int = 256
    batch_size: int = 8
    null_rows: int = 512
    permutations: int = 100
    alpha: float = 0.05
    seed: int = 0
    device: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.tokens < 4 or self.seq_len < 2 or self.batch_size < 1:
            raise CompareError("--tokens must be at least 4, --seq-len at least 2, --batch-size positive")
        if self.null_rows < 5:
            raise CompareError(f"--null-rows must be at least 5 (a permutation test), got {self.null_rows}")
        if self.permutations < 0:
            raise CompareError(f"--permutations must be 0 (no nulls) or more, got {self.permutations}")
        if not 0 < self.alpha < 1:
            raise CompareError(f"--alpha must lie between 0 and 1, got {self.alpha}")
        names: set[str] = set()
        for spec in self.measures:
            measure = measure_from_spec(spec)
            if measure.name in names:
                raise CompareError(f"measure {measure.name!r} is given twice; a map holds one of each")
            names.add(measure.name)
            if measure.min_rows > self.null_rows:
                raise CompareError(
                    f"{measure.name} needs at least {measure.min_rows} rows; raise --null-rows to that"
                )


@dataclass(frozen=True)
class Side:
    """One representation set: its label (model or store) and its hooks in map order."""

    label: str
    hooks: list[str]


@dataclass
class Source:
    """Aligned chunks (hook -> float32 [c, width] for a, and for b or None) with what they come from."""

    chunks: Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]]
    a: Side
    b: Side | None
    alignment: str
    description: dict[str, Any]


def random_copy(lm: LanguageModel, seed: int) -> LanguageModel:
    """``lm``'s architecture with freshly initialised weights (seeded): the null model of a layer map."""
    torch.manual_seed(seed)
    model_class: Any = type(lm.model)
    model = model_class._from_config(copy.deepcopy(lm.model.config)).to(lm.device)
    return LanguageModel(model, lm.tokenizer, spec=f"{lm.name} (random init, seed {seed})")


def _same_tokens(tokens_a: np.ndarray, tokens_b: np.ndarray, where: str) -> None:
    if len(tokens_a) != len(tokens_b) or not np.array_equal(tokens_a, tokens_b):
        raise CompareError(
            f"the two representations do not hold the same tokens ({where}); compare stores captured from "
            "the same corpus with the same tokenizer and settings"
        )


def _store_source(job: MapJob) -> Source:
    store_a = ActivationStore.open(str(job.acts))
    hooks_a = resolve_hooks(job.hooks, store_a.hooks)
    store_b = ActivationStore.open(job.acts_b) if job.acts_b else None
    hooks_b = resolve_hooks(job.hooks_b or job.hooks, store_b.hooks) if store_b else []
    chunk_rows = 4096

    def chunks() -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]]:
        rows_a = store_rows(store_a, hooks_a, job.tokens, chunk_rows)
        if store_b is None:
            for part in rows_a:
                yield part.acts, None
            return
        rows_b = store_rows(store_b, hooks_b, job.tokens, chunk_rows)
        for part_a, part_b in zip(rows_a, rows_b, strict=False):
            _same_tokens(part_a.tokens, part_b.tokens, f"rows from {int(part_a.rows[0])}")
            yield part_a.acts, part_b.acts

    description: dict[str, Any] = {"source": "store", "acts": str(store_a.path)}
    if store_b is not None:
        if min(store_a.n_tokens, job.tokens) != min(store_b.n_tokens, job.tokens):
            raise CompareError(
                f"the stores hold different numbers of rows ({store_a.n_tokens} and {store_b.n_tokens}); "
                "compare stores of the same tokens"
            )
        description["acts_b"] = str(store_b.path)
    side_b = Side(str(store_b.path), hooks_b) if store_b is not None else None
    return Source(
        chunks(), Side(str(store_a.path), hooks_a), side_b, "the stores' rows, checked equal", description
    )


def _live_source(job: MapJob) -> Source:
    description = {"source": "live", "model": job.model, "model_b": job.model_b, "corpus": asdict(job.corpus)}
    lm_a = load_model(job.model, device=job.device)
    hooks_a = resolve_hooks(job.hooks, list(lm_a.hook_points))
    lm_b: LanguageModel | None = None
    if job.model_b == "random":
        lm_b = random_copy(lm_a, job.seed)
    elif job.model_b:
        lm_b = load_model(job.model_b, device=job.device)
    hooks_b = resolve_hooks(job.hooks_b or job.hooks, list(lm_b.hook_points)) if lm_b else []
    if lm_b is not None and lm_b.tokenizer.get_vocab() != lm_a.tokenizer.get_vocab():
        aligned = aligned_chunks(
            lm_a, lm_b, hooks_a, hooks_b, job.corpus, seq_len=job.seq_len, n_tokens=job.tokens
        )
        return Source(aligned, Side(lm_a.name, hooks_a), Side(lm_b.name, hooks_b), ALIGNMENT, description)
    settings: dict[str, Any] = {
        "seq_len": job.seq_len,
        "n_tokens": job.tokens,
        "batch_size": job.batch_size,
        "skip_positions": 1,
        "keep_special": False,
    }

    def chunks() -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]]:
        rows_a = live_row_chunks(lm_a, hooks_a, job.corpus, **settings)
        if lm_b is None:
            for part in rows_a:
                yield part.acts, None
            return
        rows_b = live_row_chunks(lm_b, hooks_b, job.corpus, **settings)
        for part_a, part_b in zip(rows_a, rows_b, strict=True):
            _same_tokens(part_a.tokens, part_b.tokens, f"rows from {int(part_a.rows[0])}")
            yield part_a.acts, part_b.acts

    side_b = Side(lm_b.name, hooks_b) if lm_b is not None else None
    return Source(chunks(), Side(lm_a.name, hooks_a), side_b, "one tokenizer: identical rows", description)


def map_source(job: MapJob) -> Source:
    """Where ``job``'s rows come from (see the module docstring)."""
    return _store_source(job) if job.acts else _live_source(job)


class TypicalRows:
    """Leaves out rows above :data:`OUTLIER_MULTIPLE` × a hook's median norm (limits from the first chunk)."""

    def __init__(self) -> None:
        self.limits: dict[str, float] = {}

    def mask(self, *chunks: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Rows [c] (bool) that are typical in every hook of every chunk given."""
        keep: torch.Tensor | None = None
        for side, chunk in enumerate(chunks):
            for hook, x in (chunk or {}).items():
                norms = x.norm(dim=1)
                key = f"{side}:{hook}"
                if key not in self.limits:
                    self.limits[key] = OUTLIER_MULTIPLE * float(norms.median())
                typical = norms <= self.limits[key]
                keep = typical if keep is None else keep & typical
        assert keep is not None
        return keep


class Subsample:
    """A uniform random sample of ``size`` rows of a stream (the smallest of one random key per row)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)
        self.keys = torch.empty(0)
        self.rows: dict[str, torch.Tensor] = {}

    def add(self, chunk: dict[str, torch.Tensor]) -> None:
        """Offer the rows of ``chunk`` (key -> [c, width]) to the sample."""
        first = next(iter(chunk.values()))
        held = len(self.keys)
        keys = torch.cat([self.keys, torch.rand(len(first), generator=self.generator)])
        kept = torch.sort(torch.argsort(keys)[: self.size]).values
        old, new = kept[kept < held], kept[kept >= held] - held
        self.keys = keys[kept]
        self.rows = {
            name: torch.cat([self.rows[name][old], x[new]]) if name in self.rows else x[new]
            for name, x in chunk.items()
        }


@dataclass
class MapResult:
    """All cells of every map and measure: ``cells`` column -> list, plus the run's metadata."""

    cells: dict[str, list[Any]]
    meta: dict[str, Any]


def benjamini_hochberg(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Which of ``p_values`` [m] (NaN: untested) are discoveries at false-discovery rate ``alpha``."""
    tested = np.flatnonzero(np.isfinite(p_values))
    significant = np.zeros(len(p_values), dtype=bool)
    if len(tested):
        order = tested[np.argsort(p_values[tested], kind="stable")]
        thresholds = alpha * np.arange(1, len(order) + 1) / len(order)
        below = np.flatnonzero(p_values[order] <= thresholds)
        if len(below):
            significant[order[: below[-1] + 1]] = True
    return significant


def _stream(
    source: Source, job: MapJob, advance: Any
) -> tuple[CkaSums | None, CkaSums | None, Subsample, int]:
    """One pass: the CKA sums of each map (when a streamed measure is asked for) and the subsample."""
    streamed = any(measure_from_spec(spec).name in STREAMED for spec in job.measures)
    typical = TypicalRows()
    sample = Subsample(job.null_rows, job.seed)
    sums_aa = sums_ab = None
    rows = 0
    for chunk_a, chunk_b in source.chunks:
        keep = typical.mask(chunk_a, chunk_b)
        chunk_a = {h: x[keep] for h, x in chunk_a.items()}
        chunk_b = {h: x[keep] for h, x in chunk_b.items()} if chunk_b is not None else None
        if streamed and len(next(iter(chunk_a.values()))):
            if sums_aa is None:
                sums_aa = CkaSums.start(chunk_a)
                sums_ab = CkaSums.start(chunk_a, chunk_b) if chunk_b is not None else None
            sums_aa.add(chunk_a)
            if sums_ab is not None:
                sums_ab.add(chunk_a, chunk_b)
        sample.add(
            {**{f"a:{h}": x for h, x in chunk_a.items()}, **{f"b:{h}": x for h, x in (chunk_b or {}).items()}}
        )
        rows += int(keep.sum())
        advance(len(keep))
    return sums_aa, sums_ab, sample, rows


def _measure_cells(
    measure: Measure,
    rows_a: list[torch.Tensor],
    rows_b: list[torch.Tensor],
    permutations: int,
    seed: int,
    tick: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Values, p-values, null means and null stds [HA, HB] of ``measure`` on the subsample."""
    shape = (len(rows_a), len(rows_b))
    values, p_values = np.full(shape, np.nan), np.full(shape, np.nan)
    null_means, null_stds = np.full(shape, np.nan), np.full(shape, np.nan)
    states_a = [_prepared(measure, x) for x in rows_a]
    defined = [i for i, state in enumerate(states_a) if state is not None]
    orders = permutation_orders(len(rows_a[0]), permutations, seed)
    identity = torch.arange(len(rows_a[0]))[None]
    for j, y in enumerate(rows_b):
        state_b = _prepared(measure, y)
        if state_b is not None and defined:
            chosen = [states_a[i] for i in defined]
            # The values are the identity order's scores: one batched product where the measure has one.
            values[defined, j] = measure.null_scores(chosen, measure.null_states(state_b, identity))[:, 0]
            if permutations:
                nulls = measure.null_scores(chosen, measure.null_states(state_b, orders))
                for i, null in zip(defined, nulls, strict=True):
                    p_values[i, j] = p_value_of(values[i, j], null, measure.kind)
                    null_means[i, j] = null.mean()
                    null_stds[i, j] = null.std(ddof=1) if len(null) > 1 else np.nan
        for _ in rows_a:
            tick()
    return values, p_values, null_means, null_stds


def _prepared(measure: Measure, x: torch.Tensor) -> Any:
    """``measure``'s state of ``x`` (float64), or None where the measure is undefined for it (constant)."""
    try:
        return measure.prepare(x.double())
    except CompareError:
        return None


def _silent(label: str, unit: str, total: int) -> AbstractContextManager[Callable[..., None]]:
    return nullcontext(lambda *args, **kwargs: None)


def _map_cells(
    job: MapJob,
    measure: Measure,
    name: str,
    sides: tuple[Side, Side],
    sample: Subsample,
    sums: CkaSums | None,
    tick: Callable[[], None],
) -> dict[str, list[Any]]:
    """The cells (columns of :data:`CELL_COLUMNS`) of one map and measure."""
    side_a, side_b = sides
    prefix_b = "a" if side_b is side_a else "b"
    rows_a = [sample.rows[f"a:{h}"] for h in side_a.hooks]
    rows_b = [sample.rows[f"{prefix_b}:{h}"] for h in side_b.hooks]
    values, p_values, means, stds = _measure_cells(measure, rows_a, rows_b, job.permutations, job.seed, tick)
    value_rows = len(sample.keys)
    if measure.name in STREAMED:
        assert sums is not None
        values = sums.cka(debiased=STREAMED[measure.name]).numpy()
        value_rows = sums.n
    significant = benjamini_hochberg(p_values.ravel(), job.alpha).reshape(p_values.shape)
    rows, cols = np.indices(values.shape)
    size = values.size
    return {
        "map": [name] * size,
        "measure": [measure.name] * size,
        "hook_a": [side_a.hooks[i] for i in rows.ravel()],
        "hook_b": [side_b.hooks[j] for j in cols.ravel()],
        "row": rows.ravel().tolist(),
        "col": cols.ravel().tolist(),
        "value": values.ravel().tolist(),
        "p_value": p_values.ravel().tolist(),
        "significant": significant.ravel().tolist(),
        "null_mean": means.ravel().tolist(),
        "null_std": stds.ravel().tolist(),
        "value_rows": [value_rows] * size,
    }


def run_maps(job: MapJob, progress: Progress = _silent) -> MapResult:
    """Every map and measure of ``job``. ``progress(label, unit, total)`` is a context giving an
    ``update(done)`` callable (the CLI draws bars with it); by default nothing is shown."""
    started = time.perf_counter()
    source = map_source(job)
    maps = [("a-a", (source.a, source.a))]
    if source.b is not None:
        maps.append(("a-b", (source.a, source.b)))
    with progress("rows", "tok", job.tokens) as update:
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            update(done[0])

        sums_aa, sums_ab, sample, rows = _stream(source, job, advance)
    streamed_seconds = time.perf_counter() - started
    if rows < 5:
        raise CompareError(f"only {rows} typical rows were read; give more --tokens")
    cells: dict[str, list[Any]] = {name: [] for name in CELL_COLUMNS}
    measures_meta: dict[str, Any] = {}
    total_cells = sum(len(a.hooks) * len(b.hooks) for _, (a, b) in maps) * len(job.measures)
    with progress("cells", "cell", total_cells) as update:
        counted = [0]

        def tick() -> None:
            counted[0] += 1
            update(counted[0])

        for spec in job.measures:
            measure = measure_from_spec(spec)
            measures_meta[measure.name] = {
                "kind": measure.kind,
                "metric": measure.metric,
                "description": measure.description,
                "options": dict(measure.options),
                "value_rows": rows if measure.name in STREAMED else len(sample.keys),
            }
            for name, sides in maps:
                sums = sums_aa if name == "a-a" else sums_ab
                for column, values in _map_cells(job, measure, name, sides, sample, sums, tick).items():
                    cells[column].extend(values)
    meta = {
        "job": job,
        "maps": [
            {
                "name": name,
                "title": f"{a.label} × {b.label}",
                "a": a.label,
                "b": b.label,
                "hooks_a": a.hooks,
                "hooks_b": b.hooks,
            }
            for name, (a, b) in maps
        ],
        "measures": measures_meta,
        "rows": rows,
        "null_rows": len(sample.keys),
        "permutations": job.permutations,
        "alpha": job.alpha,
        "correction": "Benjamini-Hochberg within each map and measure",
        "alignment": source.alignment,
        "source": source.description,
        "seconds": {"stream": streamed_seconds, "total": time.perf_counter() - started},
    }
    return MapResult(cells, meta)


CELL_COLUMNS = (
    "map",
    "measure",
    "hook_a",
    "hook_b",
    "row",
    "col",
    "value",
    "p_value",
    "significant",
    "null_mean",
    "null_std",
    "value_rows",
)
