"""Sparse dictionaries (SAEs, transcoders, semi-NMF) behind one `Dictionary` interface and weight format."""

from featurelens.dictionaries.base import Dictionary, DictionaryError, TrainingOutput
from featurelens.dictionaries.batchtopk import BatchTopKDictionary
from featurelens.dictionaries.codebook import CodebookDictionary
from featurelens.dictionaries.gradient_topk import GradientTopKDictionary
from featurelens.dictionaries.jumprelu import JumpReLUDictionary
from featurelens.dictionaries.matching_pursuit import MatchingPursuitDictionary
from featurelens.dictionaries.matryoshka import MatryoshkaDictionary
from featurelens.dictionaries.registry import ARCHITECTURES, build_dictionary, dictionary_class
from featurelens.dictionaries.relu import ReLUDictionary
from featurelens.dictionaries.semi_nmf import SemiNMFDictionary
from featurelens.dictionaries.sharded import ShardedTopK
from featurelens.dictionaries.topk import TopKDictionary

__all__ = [
    "ARCHITECTURES",
    "BatchTopKDictionary",
    "CodebookDictionary",
    "Dictionary",
    "DictionaryError",
    "GradientTopKDictionary",
    "JumpReLUDictionary",
    "MatchingPursuitDictionary",
    "MatryoshkaDictionary",
    "ReLUDictionary",
    "SemiNMFDictionary",
    "ShardedTopK",
    "TopKDictionary",
    "TrainingOutput",
    "build_dictionary",
    "dictionary_class",
]
