"""Documents from local ``.txt``, ``.jsonl`` and ``.parquet`` files, or folders of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featurelens.errors import CorpusError

SUFFIXES = (".txt", ".jsonl", ".parquet")


def corpus_files(path: Path) -> list[Path]:
    """``path`` itself, or every supported file under the folder ``path`` in sorted order."""
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise CorpusError(
                f"corpus file {path} has an unsupported suffix; accepted: {', '.join(SUFFIXES)}"
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise CorpusError(f"corpus folder {path} holds no {', '.join(SUFFIXES)} files")
    return files


def _whole_text(path: Path) -> Iterator[str]:
    try:
        yield path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"cannot read corpus file {path}: {error}") from error


def _jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CorpusError(f"{path}:{number} is not valid JSON ({error.msg})") from error
                if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                    raise CorpusError(f"{path}:{number} has no string field {text_field!r}; use --text-field")
                yield record[text_field]
    except (OSError, UnicodeDecodeError) as error:
        raise CorpusError(f"cannot read corpus file {path}: {error}") from error


def _is_text_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return bool(
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or getattr(pa.types, "is_string_view", lambda _t: False)(arrow_type)
    )


def _parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid and OSError subclasses
        raise CorpusError(f"cannot read parquet file {path}: {str(error).splitlines()[0]}") from error
    if text_field not in table.schema_arrow.names:
        raise CorpusError(
            f"{path} has no column {text_field!r}; columns: {', '.join(table.schema_arrow.names)}"
        )
    column_type = table.schema_arrow.field(text_field).type
    if not _is_text_type(column_type):
        raise CorpusError(f"{path} column {text_field!r} holds {column_type}, not text; use --text-field")
    for batch in table.iter_batches(columns=[text_field], batch_size=1024):
        yield from (text for text in batch.column(0).to_pylist() if isinstance(text, str))


def file_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """Each ``.txt`` file is one document; each ``.jsonl`` line or parquet row is one document."""
    for file in corpus_files(path):
        if file.suffix == ".txt":
            yield from _whole_text(file)
        elif file.suffix == ".jsonl":
            yield from _jsonl_texts(file, text_field)
        else:
            yield from _parquet_texts(file, text_field)
