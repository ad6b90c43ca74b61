"""JSON-lines files of string records (prompt pairs, contrasts, in-context tasks), read with one clear line
for each way a file can be wrong."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featurelens.intervene.edits import InterventionError


def read_records(path: str | Path, fields: Sequence[str], what: str) -> list[dict[str, str]]:
    """The records of the JSON-lines file ``path``, each an object with string ``fields``; ``what`` names
    the file's kind in errors (e.g. "prompt file")."""
    path = Path(path)
    wanted = ", ".join(fields)
    if not path.is_file():
        raise InterventionError(f"{what} {path} does not exist; accepted: JSON lines with {wanted}")
    records: list[dict[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as error:
            raise InterventionError(f"{path}:{number} is not JSON ({error.msg}); expected {wanted}") from None
        if not isinstance(record, dict) or any(not isinstance(record.get(k), str) for k in fields):
            raise InterventionError(f"{path}:{number} needs string fields {wanted}")
        records.append(record)
    if not records:
        raise InterventionError(f"{what} {path} holds no records; expected JSON lines with {wanted}")
    return records
