"""Architecture name -> `Dictionary` subclass, the one place that lists them."""

from __future__ import annotations

from typing import Any

from featurelens.dictionaries.base import Dictionary, DictionaryError
from featurelens.dictionaries.batchtopk import BatchTopKDictionary
from featurelens.dictionaries.codebook import CodebookDictionary
from featurelens.dictionaries.gradient_topk import GradientTopKDictionary
from featurelens.dictionaries.jumprelu import JumpReLUDictionary
from featurelens.dictionaries.matching_pursuit import MatchingPursuitDictionary
from featurelens.dictionaries.matryoshka import MatryoshkaDictionary
from featurelens.dictionaries.relu import ReLUDictionary
from featurelens.dictionaries.semi_nmf import SemiNMFDictionary
from featurelens.dictionaries.topk import TopKDictionary

ARCHITECTURES: dict[str, type[Dictionary]] = {
    cls.arch: cls
    for cls in (
        TopKDictionary,
        BatchTopKDictionary,
        MatryoshkaDictionary,
        ReLUDictionary,
        JumpReLUDictionary,
        MatchingPursuitDictionary,
        GradientTopKDictionary,
        SemiNMFDictionary,
        CodebookDictionary,
    )
}


def dictionary_class(arch: str) -> type[Dictionary]:
    """The class for architecture name ``arch``."""
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise DictionaryError(
            f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}"
        ) from None


def build_dictionary(config: dict[str, Any]) -> Dictionary:
    """A freshly initialised dictionary from a config dict as written by :meth:`Dictionary.config`."""
    fields = dict(config)
    cls = dictionary_class(str(fields.pop("arch", "")))
    try:
        return cls(**fields)
    except TypeError as error:
        raise DictionaryError(f"config does not fit architecture {cls.arch!r}: {error}") from None
