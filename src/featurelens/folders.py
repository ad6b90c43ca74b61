"""Result folders written whole or not at all: checked before the work, filled under a temporary name,
renamed into place when complete (a reader never takes a half-written folder for a finished one)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featurelens.errors import FeatureLensError


def check_output_folder(
    out: str | Path, overwrite: bool, marker: str, kind: str, error: type[FeatureLensError]
) -> Path:
    """``out`` as a path if a ``kind`` may be written there: new, or (with ``overwrite``) an earlier
    ``kind``, recognised by its ``marker`` file. Call it before long work too, not only when saving."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise error(f"{out} already exists; pass --overwrite to replace it")
        if not (out / marker).is_file():
            raise error(f"{out} exists and is not a {kind}; choose a new folder")
    return out


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out``, on failure it goes."""
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
