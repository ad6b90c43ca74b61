"""Documents from a Hugging Face dataset, streamed (nothing is downloaded in full)."""

from __future__ import annotations

from collections.abc import Iterator

from featurelens.errors import CorpusError


def dataset_documents(name: str, *, split: str = "train", text_field: str = "text") -> Iterator[str]:
    """Stream ``text_field`` of dataset ``name`` (a hub id or a local dataset folder)."""
    import datasets

    if not name:
        raise CorpusError("empty dataset name; give hf:<dataset name or local dataset folder>")
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as error:  # datasets raises many unrelated types for a missing/unreachable dataset
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CorpusError(f"cannot open dataset {name!r} (split {split!r}): {reason}") from error
    records = iter(stream)
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except (
            Exception
        ) as error:  # streaming reads files lazily: bad data or a dropped connection lands here
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CorpusError(f"cannot read dataset {name!r} (split {split!r}): {reason}") from error
        text = record.get(text_field)
        if not isinstance(text, str):
            raise CorpusError(f"dataset {name!r} has no string field {text_field!r}; use --text-field")
        yield text
