"""Shared helpers of the corpus tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from featurelens.corpus import CorpusConfig, documents
from featurelens.errors import CorpusError


def read(spec: Path | str, **options: str) -> list[str]:
    """Every document of corpus ``spec`` (a path, ``hf:<name>`` or a name), read through ``documents``."""
    return list(documents(CorpusConfig(spec=str(spec), **options)))


def corpus_error(read_corpus: Callable[[], object]) -> str:
    """The CorpusError message ``read_corpus`` raises, checked to be one line."""
    with pytest.raises(CorpusError) as info:
        read_corpus()
    message = str(info.value)
    assert message and "\n" not in message
    return message
