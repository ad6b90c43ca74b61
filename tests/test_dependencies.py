"""Every third-party module the package imports is a declared dependency, and every declared one is used.

The test extra installs dozens of distributions (sae-lens alone brings httpx, scipy, plotly...), so an
import that works in the test environment proves nothing about the plain install: this test reads the
imports from the source with ``ast`` and checks them against ``pyproject.toml`` instead.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "featurelens"

# Declared but never imported by name: each is used through another package, for the reason given.
USED_INDIRECTLY = {
    "accelerate": "transformers needs it to load GGUF weights (the bundled model)",
}


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return normalise(match.group())


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """The core dependencies and each optional extra's, as normalised distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {requirement_name(r) for r in project["dependencies"]}
    extras = {
        name: {requirement_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()
    }
    return core, extras


def third_party_imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level module -> [(file:line, imported at module level?)] over every third-party import."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        module_level = {id(node) for node in tree.body}
        module_level |= {  # imports under a top-level `if`/`try` (e.g. TYPE_CHECKING) count as module level
            id(child) for node in tree.body if isinstance(node, ast.If | ast.Try) for child in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in {"featurelens", "__future__"}:
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.setdefault(top, []).append((where, id(node) in module_level))
    return found


def test_every_third_party_import_is_declared() -> None:
    core, extras = declared()
    optional = set().union(*extras.values())
    providers = packages_distributions()
    problems = []
    for module, places in sorted(third_party_imports().items()):
        distributions = {normalise(d) for d in providers.get(module, [])}
        if not distributions:
            problems.append(f"{module} (imported at {places[0][0]}) comes from no installed distribution")
        elif not distributions & core:
            eager = [where for where, at_top in places if at_top]
            if eager or not distributions & optional:
                where = (eager or [places[0][0]])[0]
                problems.append(
                    f"{module} (imported at {where}) is provided by {', '.join(sorted(distributions))}, "
                    "which is not in [project].dependencies"
                )
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def test_every_declared_dependency_is_used() -> None:
    core, _ = declared()
    providers = packages_distributions()
    imported = {normalise(d) for module in third_party_imports() for d in providers.get(module, [])}
    unused = sorted(core - imported - set(USED_INDIRECTLY))
    assert not unused, f"declared in [project].dependencies but never imported: {', '.join(unused)}"
    assert set(USED_INDIRECTLY) <= core, "a dependency used through another package must stay declared"


def test_the_checker_sees_lazy_and_module_level_imports() -> None:
    imports = third_party_imports()
    assert any(at_top for _, at_top in imports["torch"])
    assert "httpx" in imports and "transformers" in imports
    assert "featurelens" not in imports and "json" not in imports
