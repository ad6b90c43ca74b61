"""The bundled corpus: pydoc topics, then standard-library docstrings, in a fixed order."""

from __future__ import annotations

import ast
import sysconfig
from itertools import islice
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from featurelens.corpus import CorpusConfig, bundled, documents
from featurelens.corpus.bundled import MIN_DOCSTRING_CHARS, bundled_documents, stdlib_docstrings

N_FIRST = len(topics) + 150  # every topic and the first docstrings after them


def docstring(label: str, length: int) -> str:
    """A docstring of exactly ``length`` characters that starts with ``label``."""
    return (label + " " + "x" * length)[:length]


def write_module(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")


@pytest.fixture
def fake_stdlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny standard library: kept and skipped modules, long and short docstrings."""
    root = tmp_path / "lib"
    write_module(
        root / "alpha.py",
        f'"""{docstring("alpha module", 90)}"""\n'
        f"class Widget:\n"
        f'    """{docstring("Widget class", 100)}"""\n'
        f"    def method(self):\n"
        f'        """{docstring("Widget.method", 85)}"""\n'
        f"def exactly_min():\n"
        f'    """{docstring("exactly_min", MIN_DOCSTRING_CHARS)}"""\n'
        f"async def one_short():\n"
        f'    """{docstring("one_short", MIN_DOCSTRING_CHARS - 1)}"""\n'
        f"def undocumented():\n"
        f"    pass\n",
    )
    write_module(root / "broken.py", f'"""{docstring("broken", 90)}"""\ndef (:\n')
    write_module(root / "test_things.py", f'"""{docstring("test module", 90)}"""\n')
    write_module(root / "pkg" / "mod.py", f'"""{docstring("pkg.mod", 90)}"""\n')
    write_module(root / "pkg" / "deep" / "too_deep.py", f'"""{docstring("too deep", 90)}"""\n')
    for skipped in ("tests", "idlelib", "tkinter", "site-packages", "lib2to3"):
        write_module(root / skipped / "inner.py", f'"""{docstring(skipped, 90)}"""\n')
    latin1 = docstring("café in latin-1", 90)
    (root / "zeta.py").write_bytes(f'"""{latin1}"""\n'.encode("latin-1"))
    monkeypatch.setattr(sysconfig, "get_paths", lambda *args, **kwargs: {"stdlib": str(root)})
    return root


def test_stdlib_docstrings_known_answer(fake_stdlib: Path) -> None:
    found = list(stdlib_docstrings())

    # sorted top-level modules, then one package level down; in a module, ast.walk order
    # (module, then top-level definitions, then their bodies); 79-char, test, deep, skipped,
    # unparsable and non-UTF-8 modules left out.
    assert found == [
        docstring("alpha module", 90),
        docstring("Widget class", 100),
        docstring("exactly_min", MIN_DOCSTRING_CHARS),
        docstring("Widget.method", 85),
        docstring("pkg.mod", 90),
    ]


def test_bundled_documents_are_topics_then_docstrings(fake_stdlib: Path) -> None:
    found = list(bundled_documents())

    assert found[: len(topics)] == [topics[name] for name in sorted(topics)]
    assert found[len(topics) :] == list(stdlib_docstrings())
    assert len(found) == len(topics) + 5


def test_bundled_order_is_deterministic() -> None:
    first = list(islice(bundled_documents(), N_FIRST))
    second = list(islice(documents(CorpusConfig(spec="pydoc")), N_FIRST))

    assert first == second
    assert len(set(first)) > N_FIRST * 0.9  # real, mostly distinct documents, not one repeated


def test_real_bundled_corpus_starts_with_topics_then_stdlib_docstrings() -> None:
    first = list(islice(documents(CorpusConfig(spec="bundled")), N_FIRST))

    assert first[0] == topics["assert"]  # alphabetically the first pydoc topic
    assert first[0].startswith('The "assert" statement')
    assert set(first[: len(topics)]) == set(topics.values())
    # the first docstring: __future__.py's module docstring, the first stdlib source in sorted order
    future = Path(sysconfig.get_paths()["stdlib"]) / "__future__.py"
    assert first[len(topics)] == ast.get_docstring(ast.parse(future.read_text(encoding="utf-8")))
    assert first[len(topics)].startswith("Record of phased-in incompatible language changes.")
    after_topics = first[len(topics) :]
    assert not set(after_topics) & set(topics.values())
    assert all(len(doc) >= MIN_DOCSTRING_CHARS for doc in after_topics)


def test_real_stdlib_skips_test_and_gui_modules() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = bundled._stdlib_sources()
    relative = [path.relative_to(root) for path in sources]

    assert root / "__future__.py" in sources and root / "json" / "decoder.py" in sources
    assert relative == sorted(relative, key=lambda path: (len(path.parts), path))
    assert all(len(path.parts) <= 2 for path in relative)
    assert not any(
        part.startswith("test") or part in {"idlelib", "tkinter", "site-packages", "lib2to3"}
        for path in relative
        for part in path.parts
    )
