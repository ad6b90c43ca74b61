"""Built-in contrastive prompt sets for steering vectors, and JSON-lines files of your own.

``sentiment``: pairs of short reviews that differ only in the opinion word; a steering vector from them
moves continuations of neutral prompts towards praise (positive strengths) or complaint (negative).
A file holds lines ``{"positive": ..., "negative": ...}``.
"""

from __future__ import annotations

from pathlib import Path

from featurelens.intervene.edits import InterventionError
from featurelens.intervene.records import read_records

_SUBJECTS = ("movie", "book", "restaurant", "hotel", "phone", "game", "song", "car")
SENTIMENT = [
    (f"I {good} this {subject}. It is", f"I {bad} this {subject}. It is")
    for subject in _SUBJECTS
    for good, bad in (("love", "hate"), ("enjoyed", "disliked"))
]
SENTIMENT_PROMPTS = ("The food at the restaurant was", "My day today has been", "The new phone is")
SENTIMENT_TARGETS = (" great", " good", " wonderful")
SENTIMENT_AGAINST = (" terrible", " bad", " awful")
BUILT_IN = {"sentiment": (SENTIMENT, SENTIMENT_PROMPTS, SENTIMENT_TARGETS, SENTIMENT_AGAINST)}


def read_contrast_file(path: str | Path) -> list[tuple[str, str]]:
    """(positive, negative) pairs from a JSON-lines file."""
    if not Path(path).is_file():
        raise InterventionError(
            f"{path} is neither a built-in contrast ({', '.join(BUILT_IN)}) nor a JSON-lines file"
        )
    return [
        (r["positive"], r["negative"]) for r in read_records(path, ("positive", "negative"), "contrast file")
    ]
