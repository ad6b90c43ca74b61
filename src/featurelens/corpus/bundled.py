"""The bundled corpus: real English text every Python has, so nothing needs a network.

Included, in this fixed order:

1. every topic of ``pydoc_data.topics`` (the language reference text behind ``help()``), sorted by topic name,
   ~465k characters;
2. docstrings of at least 80 characters from the standard library's source files, read with ``ast`` (never
   imported), modules in sorted path order, top-level modules and one package level deep, skipping tests,
   idlelib, tkinter, turtledemo, ensurepip and lib2to3: ~1.3M characters on CPython 3.11.

Together about 400k SmolLM2 tokens. The text depends on the Python version, which the store manifest records.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_SKIPPED_PARTS = {"site-packages", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__pycache__"}
MIN_DOCSTRING_CHARS = 80


def pydoc_topics() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]


def _stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(root.glob("*.py")) + sorted(root.glob("*/*.py"))
    return [
        path
        for path in paths
        if not any(part in _SKIPPED_PARTS or part.startswith("test") for part in path.relative_to(root).parts)
    ]


def stdlib_docstrings() -> Iterator[str]:
    for path in _stdlib_sources():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    yield doc


def bundled_documents() -> Iterator[str]:
    """The bundled corpus, one document per topic or docstring, in a fixed order."""
    yield from pydoc_topics()
    yield from stdlib_docstrings()
