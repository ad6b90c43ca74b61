"""Hugging Face datasets through the real ``datasets`` loader, on local dataset folders, offline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .helpers import corpus_error, read

MISSING = "featurelens-tests/no-such-dataset"


@pytest.fixture
def parquet_dataset(tmp_path: Path) -> Path:
    """A dataset folder in the hub layout: data/<split>-00000-of-00001.parquet, a train and a test split."""
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    train = {"text": ["train one", "train two", "train three"], "label": [0, 1, 0]}
    pq.write_table(pa.table(train), folder / "data" / "train-00000-of-00001.parquet")
    pq.write_table(
        pa.table({"text": ["test one"], "label": [1]}), folder / "data" / "test-00000-of-00001.parquet"
    )
    return folder


@pytest.fixture
def jsonl_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "jsonl_ds"
    folder.mkdir()
    records = [{"body": "first body", "text": 1}, {"body": "second body", "text": 2}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return folder


def test_local_parquet_dataset_streams_the_train_split(parquet_dataset: Path) -> None:
    assert read("hf:" + str(parquet_dataset)) == ["train one", "train two", "train three"]


def test_local_parquet_dataset_other_split(parquet_dataset: Path) -> None:
    assert read("hf:" + str(parquet_dataset), split="test") == ["test one"]


def test_dataset_folder_without_hf_prefix_is_read_as_plain_files(parquet_dataset: Path) -> None:
    # an existing path is a local corpus: every parquet file, all splits, in sorted path order
    assert read(str(parquet_dataset)) == ["test one", "train one", "train two", "train three"]


def test_local_jsonl_dataset_custom_text_field(jsonl_dataset: Path) -> None:
    assert read("hf:" + str(jsonl_dataset), text_field="body") == ["first body", "second body"]


def test_dataset_without_a_string_text_field_is_refused(jsonl_dataset: Path) -> None:
    message = corpus_error(lambda: read("hf:" + str(jsonl_dataset)))  # "text" holds numbers

    assert f"dataset {str(jsonl_dataset)!r} has no string field 'text'" in message
    assert "--text-field" in message


def test_unknown_split_is_refused(parquet_dataset: Path) -> None:
    message = corpus_error(lambda: read("hf:" + str(parquet_dataset), split="validation"))

    assert f"cannot open dataset {str(parquet_dataset)!r} (split 'validation')" in message
    assert "train" in message and "test" in message  # the available splits


def test_folder_without_data_files_is_refused(tmp_path: Path) -> None:
    message = corpus_error(lambda: read("hf:" + str(tmp_path)))

    assert f"cannot open dataset {str(tmp_path)!r}" in message


def test_dataset_with_corrupt_parquet_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-00000-of-00001.parquet").write_bytes(b"not parquet\nat all\n")

    message = corpus_error(lambda: read("hf:" + str(tmp_path)))

    assert f"cannot open dataset {str(tmp_path)!r}" in message


def test_dataset_with_a_bad_json_line_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"text": "fine"}\n{oops\n', encoding="utf-8")

    message = corpus_error(lambda: read("hf:" + str(tmp_path)))

    assert str(tmp_path) in message


@pytest.mark.parametrize("spec", ["hf:" + MISSING, MISSING], ids=["hf-prefix", "bare-name"])
def test_missing_hub_dataset_is_refused_quickly_offline(spec: str) -> None:
    started = time.perf_counter()

    message = corpus_error(lambda: read(spec))

    assert f"cannot open dataset {MISSING!r} (split 'train')" in message
    assert time.perf_counter() - started < 5  # offline: no network retries


def test_empty_hf_name_is_refused() -> None:
    message = corpus_error(lambda: read("hf:"))

    assert "empty dataset name" in message
