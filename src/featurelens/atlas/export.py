"""Export an atlas to Parquet: one file per table (examples' activation blobs become float lists)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurelens.atlas.reader import TABLES, Atlas
from featurelens.atlas.schema import BLOB_DTYPE
from featurelens.paths import RemotePath, location, staged_output

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_atlas_file(path: str | Path | RemotePath) -> bool:
    """True when ``path`` (a file or URL) is an SQLite file (an atlas, or something refused as one)."""
    path = location(path)
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return bool(handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC)


def export_parquet(path: str | Path | RemotePath, out: str | Path | None) -> Path | RemotePath:
    """Write ``<table>.parquet`` for every atlas table plus ``meta.json`` into ``out`` (default: next to
    the atlas, ``NAME.parquet/``); the folder appears only when complete (``meta.json`` uploaded last to
    a URL). Returns it."""
    target = location(out or re.sub(r"\.[^./]*$", "", str(path)) + ".parquet")
    with staged_output(str(target), last=("meta.json",)) as local:
        _export(path, local)
    return target


def _export(path: str | Path | RemotePath, out: Path) -> None:
    temporary = out.with_name(f".{out.name}.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    with Atlas.open(path) as atlas:
        for table in TABLES:
            names, rows = atlas.table(table)
            columns = list(zip(*rows, strict=True)) or [()] * len(names)
            arrays = {name: list(values) for name, values in zip(names, columns, strict=True)}
            if table == "examples":
                arrays["activations"] = [
                    None if blob is None else np.frombuffer(blob, BLOB_DTYPE).tolist()
                    for blob in arrays["activations"]
                ]
            pq.write_table(pa.table(arrays), temporary / f"{table}.parquet")
        (temporary / "meta.json").write_text(json.dumps(atlas.meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(temporary, out)
