"""Encoding-model inputs from files, or from an activation store (one network's units predicting another's).

Files: ``.npy`` (read without pickle), ``.csv`` (with or without a header) or ``.parquet``; numeric
columns are features or targets, named by the header. Repeated recordings: an ``.npy`` of 3 axes with
``repeats_axis`` naming the repeats (moved to the front: [R, n, targets]), or a table with a ``repeat``
column (the rows of every repeat in the same order). Groups: ``.npy``, ``.txt`` (one label a line),
``.csv``/``.parquet`` (a ``group`` column, or the only one).

Live (no files, no store): the same two hooks of a model run on a corpus, the rows a capture keeps.

Store: rows of ``hook`` (features) and ``target_hook`` (targets) read aligned by
:func:`featurelens.capture.rows.store_rows`, minus the store's norm-outlier rows of either hook (attention
sinks would dominate every R²), grouped by document; at most ``max_targets`` target units (a seeded sample,
sorted), since every target costs a column of every product.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featurelens.capture.live import OUTLIER_MULTIPLE
from featurelens.capture.rows import live_row_chunks, sequence_ids, store_rows
from featurelens.capture.store import ActivationStore
from featurelens.corpus import CorpusConfig
from featurelens.errors import EncodeError, FeatureLensError
from featurelens.models import load_model

ACCEPTED_FILES = ".npy, .csv or .parquet"
REPEAT_COLUMN = "repeat"


@dataclass(frozen=True)
class EncodeInputs:
    """``x`` [n, d]; ``y`` [n, t] or [R, n, t]; ``groups`` [n] or None; ``names`` [t]; ``source``: where
    they came from, for results.json."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None
    names: list[str]
    source: dict[str, Any]


def read_numeric(
    path: str | Path, what: str, repeats_axis: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """The array in ``path`` as float ([n, d], or [R, n, d] with repeats) and its column names."""
    path = Path(path)
    if not path.is_file():
        raise EncodeError(f"{what} file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, what, repeats_axis)
    if suffix in (".csv", ".parquet"):
        if repeats_axis is not None:
            raise EncodeError(
                f"--repeats-axis is for .npy files; a {suffix} table marks repeats "
                f"with a '{REPEAT_COLUMN}' column"
            )
        return _read_table(path, what)
    raise EncodeError(f"{what} file {path} has suffix {path.suffix!r}; accepted: {ACCEPTED_FILES}")


def _read_npy(path: Path, what: str, repeats_axis: int | None) -> tuple[np.ndarray, list[str]]:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise EncodeError(f"{what} file {path} is not a numeric .npy array ({error})") from None
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise EncodeError(f"{what} file {path} holds {array.dtype} values; numbers are needed")
    array = array.astype(np.float32 if array.dtype == np.float32 else np.float64)
    if repeats_axis is not None:
        if array.ndim not in (2, 3) or not -array.ndim <= repeats_axis < array.ndim:
            raise EncodeError(
                f"--repeats-axis {repeats_axis} does not fit {what} of shape {array.shape}; "
                "accepted: an axis of a [repeats, rows] or [repeats, rows, targets] array"
            )
        array = np.moveaxis(array, repeats_axis, 0)
        array = array[:, :, None] if array.ndim == 2 else array
    elif array.ndim == 1:
        array = array[:, None]
    elif array.ndim != 2:
        raise EncodeError(
            f"{what} file {path} has shape {array.shape}; give [rows, columns], or say which axis holds "
            "repeats with --repeats-axis"
        )
    return array, [str(j) for j in range(array.shape[-1])]


def _read_table(path: Path, what: str) -> tuple[np.ndarray, list[str]]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            table = pcsv.read_csv(path)
            if all(_is_number(name) for name in table.column_names):  # no header: the first row was data
                table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(autogenerate_column_names=True))
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise EncodeError(f"{what} file {path} cannot be read as a table ({error})") from None
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    repeat = columns.pop(REPEAT_COLUMN, None)
    not_numbers = [name for name, values in columns.items() if not np.issubdtype(values.dtype, np.number)]
    if not_numbers or not columns:
        raise EncodeError(
            f"{what} file {path} needs numeric columns only; not numeric: {not_numbers or 'no columns'}"
        )
    values = np.stack([v.astype(np.float64) for v in columns.values()], axis=1)
    names = list(columns)
    if repeat is None:
        return values, names
    labels, counts = np.unique(repeat, return_counts=True)
    if len(set(counts.tolist())) != 1:
        raise EncodeError(
            f"{what} file {path}: every repeat needs the same rows, but repeats hold {counts.tolist()} rows"
        )
    return np.stack([values[repeat == label] for label in labels]), names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_groups(path: str | Path) -> np.ndarray:
    """One group label per row [n] from ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise EncodeError(f"groups file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            groups = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise EncodeError(f"groups file {path} is not a plain .npy array ({error})") from None
    elif suffix == ".txt":
        groups = np.array(path.read_text().split("\n")).astype(str)
        groups = groups[:-1] if len(groups) and groups[-1] == "" else groups
    elif suffix in (".csv", ".parquet"):
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        table = pq.read_table(path) if suffix == ".parquet" else pcsv.read_csv(path)
        name = "group" if "group" in table.column_names else table.column_names[0]
        if len(table.column_names) > 1 and name != "group":
            raise EncodeError(f"groups file {path} has several columns and none named 'group'")
        groups = table.column(name).to_numpy(zero_copy_only=False)
    else:
        raise EncodeError(
            f"groups file {path} has suffix {path.suffix!r}; accepted: .npy, .txt, .csv or .parquet"
        )
    if groups.ndim != 1:
        raise EncodeError(f"groups file {path} must hold one label per row, got shape {groups.shape}")
    return groups


def file_inputs(x: str, y: str, repeats_axis: int | None, groups: str | None) -> EncodeInputs:
    """Features, recordings and groups from files."""
    features, _ = read_numeric(x, "features (--x)")
    recordings, names = read_numeric(y, "recordings (--y)", repeats_axis)
    source: dict[str, Any] = {"source": "files", "x": str(x), "y": str(y), "groups": groups}
    return EncodeInputs(features, recordings, read_groups(groups) if groups else None, names, source)


def store_inputs(
    acts: str, hook: str, target_hook: str, tokens: int, max_targets: int, seed: int = 0
) -> EncodeInputs:
    """Aligned rows of two hooks of a store (see the module docstring)."""
    try:
        store = ActivationStore.open(acts)
    except FeatureLensError as error:
        raise EncodeError(str(error)) from None
    missing = [h for h in (hook, target_hook) if h not in store.hooks]
    if missing:
        raise EncodeError(
            f"store {store.path} has no hook {missing[0]!r}; it holds: {', '.join(store.hooks)}"
        )
    if tokens < 1 or max_targets < 1:
        raise EncodeError(f"--tokens and --max-targets must be positive, got {tokens} and {max_targets}")
    parts = list(store_rows(store, [hook, target_hook], tokens, 8192))
    if not parts:
        raise EncodeError(f"store {store.path} holds no rows")
    x = torch.cat([p.acts[hook] for p in parts]).numpy()
    y = torch.cat([p.acts[target_hook] for p in parts]).numpy()
    docs = np.concatenate([p.docs for p in parts])
    typical = np.ones(len(x), dtype=bool)
    for h in {hook, target_hook}:
        outliers = store.outlier_rows(h)
        typical[outliers[outliers < len(typical)]] = False
    source = {"source": "store", "store": str(store.path)}
    return hook_inputs(x, y, docs, typical, hook, target_hook, max_targets, seed, source)


def hook_inputs(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    typical: np.ndarray,
    hook: str,
    target_hook: str,
    max_targets: int,
    seed: int,
    source: dict[str, Any],
) -> EncodeInputs:
    """Rows [n] of ``hook`` (features) and ``target_hook`` (targets) with their groups, minus the rows not
    ``typical``, and at most ``max_targets`` target units (a seeded sample, sorted)."""
    width = y.shape[1]
    units = np.arange(width)
    if width > max_targets:
        units = np.sort(np.random.default_rng(seed).choice(width, max_targets, replace=False))
    source = {
        **source,
        "hook": hook,
        "target_hook": target_hook,
        "target_units": f"{len(units)} of {width}",
        "outliers_left_out": int((~typical).sum()),
    }
    return EncodeInputs(
        x[typical], y[typical][:, units], groups[typical], [str(u) for u in units.tolist()], source
    )


def live_inputs(
    model: str,
    hook: str,
    target_hook: str,
    corpus: CorpusConfig,
    *,
    tokens: int,
    seq_len: int,
    batch_size: int,
    max_targets: int,
    folds: int,
    seed: int = 0,
    device: str | None = None,
) -> EncodeInputs:
    """Rows of two hooks of ``model`` run live on ``corpus`` (every position but the first, no special
    tokens), minus rows above :data:`OUTLIER_MULTIPLE` x the median norm of either hook (attention sinks).
    Grouped by document when the text holds at least ``folds`` documents, else by packed sequence."""
    if tokens < 1 or max_targets < 1:
        raise EncodeError(f"--tokens and --max-targets must be positive, got {tokens} and {max_targets}")
    lm = load_model(model, device=device)
    for name in (hook, target_hook):
        lm.hook_point(name)
    parts = list(
        live_row_chunks(
            lm, [hook, target_hook], corpus, seq_len=seq_len, n_tokens=tokens, batch_size=batch_size,
            skip_positions=1, keep_special=False,
        )
    )  # fmt: skip
    if not parts:
        raise EncodeError(f"the corpus {corpus.spec!r} gave no rows")
    x = torch.cat([p.acts[hook] for p in parts]).numpy()
    y = torch.cat([p.acts[target_hook] for p in parts]).numpy()
    docs = np.concatenate([p.docs for p in parts])
    sequences = np.concatenate([sequence_ids(p.positions) + 10**6 * i for i, p in enumerate(parts)])
    typical = np.ones(len(x), dtype=bool)
    for values in (x, y):
        norms = np.linalg.norm(values, axis=1)
        typical &= norms <= OUTLIER_MULTIPLE * np.median(norms)
    by_document = len(np.unique(docs[typical])) >= folds
    source = {
        "source": "live",
        "model": model,
        "corpus": corpus.spec,
        "groups": "document"
        if by_document
        else f"packed sequence of {seq_len} tokens (fewer than {folds} documents)",
    }
    return hook_inputs(
        x, y, docs if by_document else sequences, typical, hook, target_hook, max_targets, seed, source
    )
