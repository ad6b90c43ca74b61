"""Corpora: the bundled Python documentation, local files, Hugging Face datasets; tokenized and packed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from featurelens.corpus.bundled import bundled_documents
from featurelens.corpus.files import SUFFIXES, file_documents
from featurelens.corpus.hub import dataset_documents
from featurelens.corpus.packing import PackedSequence, pack_sequences
from featurelens.errors import CorpusError

BUNDLED_NAMES = ("bundled", "pydoc")
ACCEPTED_CORPORA = "'bundled', a .txt/.jsonl/.parquet file or folder of them, or hf:<dataset name or folder>"


@dataclass(frozen=True)
class CorpusConfig:
    """Where text comes from. ``spec``: ``bundled``, a local path, or ``hf:<dataset>``."""

    spec: str = "bundled"
    text_field: str = "text"
    split: str = "train"


def documents(config: CorpusConfig) -> Iterator[str]:
    """The corpus as a stream of documents, in a deterministic order."""
    spec = config.spec
    if spec in BUNDLED_NAMES:
        return bundled_documents()
    if spec.startswith("hf:"):
        return dataset_documents(spec[3:], split=config.split, text_field=config.text_field)
    path = Path(spec).expanduser()
    if path.exists():
        return file_documents(path, config.text_field)
    if path.suffix in SUFFIXES or spec.startswith((".", "/", "~")):
        raise CorpusError(f"corpus {spec!r} does not exist; accepted: {ACCEPTED_CORPORA}")
    return dataset_documents(spec, split=config.split, text_field=config.text_field)


__all__ = ["CorpusConfig", "PackedSequence", "documents", "pack_sequences"]
