"""Built-in contrastive prompt sets for steering vectors, and JSON-lines files of your own.

``sentiment``: pairs of short reviews that differ only in the opinion word; a steering vector from them
moves continuations of neutral prompts towards praise (positive strengths) or complaint (negative).
A file holds lines ``{"positive": ..., "negative": ...}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from featurelens.intervene.edits import InterventionError

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
    path = Path(path)
    if not path.is_file():
        raise InterventionError(
            f"{path} is neither a built-in contrast ({', '.join(BUILT_IN)}) nor a JSON-lines file"
        )
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as error:
            raise InterventionError(f"{path}:{number} is not JSON ({error.msg})") from None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(k), str) for k in ("positive", "negative")
        ):
            raise InterventionError(f"{path}:{number} needs string fields positive, negative")
        pairs.append((record["positive"], record["negative"]))
    if not pairs:
        raise InterventionError(f"{path} holds no pairs; expected JSON lines with positive, negative")
    return pairs
