"""Local corpora: .txt, .jsonl and .parquet files or folders of them, and every way they can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .helpers import corpus_error, read


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def test_txt_file_is_one_document(tmp_path: Path) -> None:
    text = "First line.\n\nSecond paragraph, ünïcode.\n"
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")

    assert read(path) == [text]


def test_jsonl_lines_are_documents_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "one", "id": 1}\n\n{"text": "two\\nlines", "id": 2}\n', encoding="utf-8")

    assert read(path) == ["one", "two\nlines"]


def test_jsonl_custom_text_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": "alpha", "text": "no"}, {"body": "beta"}])

    assert read(path, text_field="body") == ["alpha", "beta"]


def test_parquet_rows_are_documents_from_a_custom_column(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "docs.parquet", {"id": [1, 2, 3], "content": ["a", "b", "c"]})

    assert read(path, text_field="content") == ["a", "b", "c"]


def test_parquet_larger_than_one_read_batch_keeps_row_order(tmp_path: Path) -> None:
    texts = [f"row {index}" for index in range(2500)]  # crosses the 1024-row read batches
    path = write_parquet(tmp_path / "docs.parquet", {"text": texts})

    assert read(path) == texts


def test_folder_reads_supported_files_recursively_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b.txt").write_text("from b.txt", encoding="utf-8")
    write_jsonl(root / "a.jsonl", [{"text": "a.jsonl 1"}, {"text": "a.jsonl 2"}])
    write_parquet(root / "sub" / "c.parquet", {"text": ["c.parquet 1", "c.parquet 2"]})
    (root / "sub" / "deeper" / "d.txt").write_text("from d.txt", encoding="utf-8")
    (root / "README.md").write_text("not a corpus file", encoding="utf-8")
    (root / "sub" / "data.csv").write_text("text\nnot read", encoding="utf-8")

    expected = ["a.jsonl 1", "a.jsonl 2", "from b.txt", "c.parquet 1", "c.parquet 2", "from d.txt"]
    assert read(root) == expected
    assert read(root) == expected  # a second pass is the same


def test_unsupported_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("text\nhello", encoding="utf-8")

    message = corpus_error(lambda: read(path))

    assert str(path) in message and "unsupported suffix" in message
    assert all(suffix in message for suffix in (".txt", ".jsonl", ".parquet"))


def test_folder_without_supported_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("markdown", encoding="utf-8")
    (tmp_path / "empty").mkdir()

    message = corpus_error(lambda: read(tmp_path))

    assert str(tmp_path) in message and "holds no" in message and ".jsonl" in message


@pytest.mark.parametrize("name", ["missing.txt", "missing_folder", "missing.parquet"])
def test_missing_absolute_path_is_refused_without_trying_the_hub(tmp_path: Path, name: str) -> None:
    path = tmp_path / name

    message = corpus_error(lambda: read(path))

    assert f"corpus {str(path)!r} does not exist" in message and "hf:" in message


@pytest.mark.parametrize("spec", ["missing.jsonl", "./missing", "~/featurelens-no-such-corpus"])
def test_missing_relative_or_home_path_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))

    message = corpus_error(lambda: read(spec))

    assert f"corpus {spec!r} does not exist" in message


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": oops}\n', encoding="utf-8")

    message = corpus_error(lambda: read(path))

    assert f"{path}:3 is not valid JSON" in message  # the blank line 2 still counts


@pytest.mark.parametrize(
    "record",
    [{"body": "no text key"}, {"text": 7}, {"text": None}, ["text", "a list"], "a bare string"],
    ids=["missing", "number", "null", "list", "string"],
)
def test_jsonl_line_without_a_string_field_names_file_line_and_field(tmp_path: Path, record: object) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "fine"}, record])

    message = corpus_error(lambda: read(path))

    assert f"{path}:2 has no string field 'text'" in message and "--text-field" in message


def test_parquet_without_the_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "docs.parquet", {"body": ["a"], "id": [1]})

    message = corpus_error(lambda: read(path))

    assert f"{path} has no column 'text'" in message and "columns: body, id" in message


def test_file_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"this is not a parquet file\nsecond line\n")

    message = corpus_error(lambda: read(path))

    assert f"cannot read parquet file {path}" in message


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_text_that_is_not_utf8_is_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes('{"text": "café"}\n'.encode("latin-1"))

    message = corpus_error(lambda: read(path))

    assert f"cannot read corpus file {path}" in message and "utf-8" in message


def test_parquet_column_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "docs.parquet", {"text": [1, 2, 3]})

    message = corpus_error(lambda: read(path))

    assert "text" in message and str(path) in message
