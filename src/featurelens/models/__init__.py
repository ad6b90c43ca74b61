"""Model loading and hook points."""

from featurelens.models.hook_points import LAYER_POINTS, HookPoint, find_hook_points
from featurelens.models.loading import LanguageModel, cache_dir, load_model, load_tokenizer, resolve_device

__all__ = [
    "LAYER_POINTS",
    "HookPoint",
    "LanguageModel",
    "cache_dir",
    "find_hook_points",
    "load_model",
    "load_tokenizer",
    "resolve_device",
]
