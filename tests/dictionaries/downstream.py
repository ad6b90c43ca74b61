"""The later stages a new dictionary family must flow through unchanged: evaluate, atlas, explain, web app."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

import featurelens as fl
from tests.cli.test_cli import featurelens
from tests.serve.conftest import start_server


def assert_flows_downstream(dictionary: Path, tmp_path: Path, max_l0: float | None = None) -> None:
    """Evaluate the dictionary folder, map it into an atlas, explain every feature and serve the busiest.

    Every step runs through the real CLI (and the real server); ``max_l0`` bounds the evaluated L0.
    """
    evaluated = featurelens("evaluate", str(dictionary), "--tokens", "128", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert 0 <= metrics["fvu"] < 10 and metrics["l0"] > 0
    if max_l0 is not None:
        assert metrics["l0"] <= max_l0
    atlas = tmp_path / "atlas.sqlite"
    mapped = featurelens("atlas", str(dictionary), "--out", str(atlas))
    assert mapped.returncode == 0, mapped.stderr
    explained = featurelens("explain", str(atlas), "--features", "all")
    assert explained.returncode == 0, explained.stderr
    first = fl.Atlas.open(atlas).features(sort="density", limit=1)[0]
    process, url = start_server(atlas)
    try:
        page = httpx.get(f"{url}/api/features/{first.id}").json()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert page["density"] > 0 and page["top"] and page["explanations"]
