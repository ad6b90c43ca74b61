"""Labels for probes, one per activation row: token predicates, a file aligned to the rows, or a continuous
target such as the position.

Predicates (``--predicate``) look at each row's token text and its context (the text of up to
``window`` tokens of its sequence, ending with the token):

* built in: ``digit``, ``starts-word``, ``capitalized``, ``punctuation``, ``in-code`` (the line so far
  starts like a code example: ``>>>``, ``...`` or four spaces), ``in-parentheses`` (more ``(`` than ``)``
  in the context);
* ``token:REGEX`` — the token text matches (``re.search``);
* ``context:REGEX`` — a match of REGEX ends exactly at the token (the context is searched for
  ``(?:REGEX)\\Z``).

A file (``.npy`` without pickle, ``.txt``/``.csv`` with one value per line, ``.parquet``/``.jsonl`` with a
``label`` column) must hold one value per row; NaN or an empty line leaves that row out. Whole numbers,
booleans and strings are classes; other numbers are a continuous target. Built-in continuous targets:
``position``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featurelens.errors import ProbeError

CONTEXT_WINDOW = 64
TARGETS = ("position",)


def _regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as error:
        raise ProbeError(f"predicate regex {pattern!r} does not compile: {error}") from None


def _token_rule(pattern: str) -> Callable[[str, str], bool]:
    compiled = _regex(pattern)
    return lambda token, _context: compiled.search(token) is not None


def _context_rule(pattern: str) -> Callable[[str, str], bool]:
    compiled = _regex(f"(?:{pattern})\\Z", re.MULTILINE)
    return lambda _token, context: compiled.search(context) is not None


BUILT_IN: dict[str, Callable[[str, str], bool]] = {
    "digit": _token_rule(r"^\s*\d+\s*$"),
    "starts-word": _token_rule(r"^\s+[^\W\d_]"),
    "capitalized": _token_rule(r"^\s*[A-Z]"),
    "punctuation": _token_rule(r"^\s*[^\w\s]+\s*$"),
    "in-code": _context_rule(r"^(?:>>>|\.\.\.| {4})[^\n]*"),
    "in-parentheses": lambda _token, context: context.count("(") > context.count(")"),
}
ACCEPTED_PREDICATES = f"{', '.join(BUILT_IN)}, token:REGEX or context:REGEX"


@dataclass(frozen=True)
class Labels:
    """One target: ``values`` [n] (classes, or floats for regression), ``keep`` [n] which rows are
    labelled, ``kind`` "classification" or "regression", and a ``name``."""

    name: str
    values: np.ndarray
    keep: np.ndarray
    kind: str


def predicate(spec: str) -> Callable[[str, str], bool]:
    """The rule named by ``spec`` (see the module docstring)."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    kind, _, pattern = spec.partition(":")
    if kind == "token" and pattern:
        return _token_rule(pattern)
    if kind == "context" and pattern:
        return _context_rule(pattern)
    raise ProbeError(f"unknown predicate {spec!r}; accepted: {ACCEPTED_PREDICATES}")


def contexts(texts: Sequence[str], positions: np.ndarray, window: int = CONTEXT_WINDOW) -> list[str]:
    """Per row, the text of up to ``window`` rows of its sequence ending with it (rows in stream order;
    a sequence restarts wherever the position does not increase by one)."""
    out: list[str] = []
    run: list[str] = []
    for i, text in enumerate(texts):
        if i == 0 or positions[i] != positions[i - 1] + 1:
            run = []
        run.append(text)
        if len(run) > window:
            del run[0]
        out.append("".join(run))
    return out


def predicate_labels(spec: str, texts: Sequence[str], context_texts: Sequence[str]) -> Labels:
    """True/False per row from the predicate ``spec``; an error when it matches no row or every row."""
    rule = predicate(spec)
    values = np.fromiter((rule(t, c) for t, c in zip(texts, context_texts, strict=True)), bool, len(texts))
    if not values.any() or values.all():
        which = "no" if not values.any() else "every"
        raise ProbeError(
            f"predicate {spec!r} matches {which} one of the {len(values):,} rows; a probe needs both classes"
        )
    return Labels(spec, values, np.ones(len(values), dtype=bool), "classification")


def target_labels(spec: str, positions: np.ndarray) -> Labels:
    """A built-in continuous target (``position``)."""
    if spec != "position":
        raise ProbeError(f"unknown target {spec!r}; accepted: {', '.join(TARGETS)}")
    return Labels(spec, positions.astype(np.float64), np.ones(len(positions), dtype=bool), "regression")


def _read_values(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as error:
            raise ProbeError(f"{path} cannot be read without pickle ({error}); save plain arrays") from None
    if suffix in (".txt", ".csv"):
        lines = path.read_text().splitlines()
        return np.array([line.strip() for line in lines], dtype=object)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "label" not in table.column_names:
            raise ProbeError(f"{path} has no 'label' column; it has {', '.join(table.column_names)}")
        return np.asarray(table.column("label").to_pylist(), dtype=object)
    if suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not all(isinstance(r, dict) and "label" in r for r in records):
            raise ProbeError(f"every line of {path} must be a JSON object with a 'label'")
        return np.asarray([r["label"] for r in records], dtype=object)
    raise ProbeError(f"labels file {path} must be .npy, .txt, .csv, .parquet or .jsonl")


def _as_number(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value == ""):
        return np.nan
    if isinstance(value, bool | np.bool_):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def file_labels(path: str | Path, n_rows: int) -> Labels:
    """Labels from a file aligned to the rows (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"labels file {path} does not exist")
    try:
        raw = _read_values(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProbeError(f"cannot read labels file {path}: {error}") from None
    if raw.ndim != 1:
        raise ProbeError(f"{path} must hold one label per row (a 1-d list), got shape {raw.shape}")
    if len(raw) != n_rows:
        raise ProbeError(f"{path} holds {len(raw):,} labels but there are {n_rows:,} rows; give one per row")
    numbers = [_as_number(v) for v in raw.tolist()]
    if all(v is not None for v in numbers):
        values = np.asarray(numbers, dtype=np.float64)
        keep = np.isfinite(values)
        whole = np.all(values[keep] == np.round(values[keep]))
        if not whole:
            return Labels(path.name, values, keep, "regression")
        labels = np.where(keep, values, 0).astype(np.int64)
    else:
        keep = np.array([v is not None and v != "" and not _is_nan(v) for v in raw.tolist()])
        labels = np.array([str(v) for v in raw.tolist()], dtype=object)
    if len(np.unique(labels[keep])) < 2:
        raise ProbeError(f"{path} has fewer than two classes among its labelled rows; a probe needs two")
    return Labels(path.name, labels, keep, "classification")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)
