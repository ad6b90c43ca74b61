"""The probe view: planted probe results served over real HTTP beside a neuron atlas of their hook (the best
units known, linked to their pages), the 404 without results, one line for a folder that is not a probe
result, and the link rule for a dictionary's features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from featurelens.errors import ProbeError
from featurelens.serve.probe import probe_views, read_probe
from tests.cli.test_cli import assert_one_line_error
from tests.serve.conftest import (
    NEURON_HOOK,
    OTHER_HOOK,
    OTHER_PROBE_FOLDS,
    OTHER_PROBE_KS,
    OTHER_PROBED_UNITS,
    PROBE_KS,
    PROBED_UNIT,
    plant_probe,
)

BASELINES = ["dense", "majority", "shuffled"]


def serve_with_probe(atlas: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "featurelens.cli.main", "serve", str(atlas), "--probe", str(folder)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_probe_view_shows_the_planted_units_linked_to_the_neuron_atlas(probe_server: str) -> None:
    meta = httpx.get(f"{probe_server}/api/meta").json()
    assert meta["probe"] and meta["kind"] == "neurons" and meta["hook_in"] == NEURON_HOOK
    served = httpx.get(f"{probe_server}/api/probe").json()
    assert served["atlas_hook"] == NEURON_HOOK and served["atlas_kind"] == "neurons"
    store, other = served["probes"]  # in the order of the --probe flags

    assert (store["hook"], store["source"], store["unit_kind"], store["units"]) == (
        NEURON_HOOK,
        "store",
        "neuron",
        24,
    )
    (target,) = store["targets"]
    assert [s["probe"] for s in target["scores"]] == BASELINES + [f"k={k}" for k in PROBE_KS]
    means = {s["probe"]: s["mean"] for s in target["scores"]}
    assert means["k=1"] > 0.95 and means["dense"] > 0.9 and means["majority"] == 0.5
    assert target["largest_k"] == max(PROBE_KS) and target["folds"] == 5
    best = target["units"][0]
    assert (best["rank"], best["unit"], best["page"]) == (0, PROBED_UNIT, PROBED_UNIT)
    assert best["folds_picked"] == target["folds"]  # every fold picked it
    assert all(u["page"] == u["unit"] for u in target["units"])  # all 24 channels are in the 64-neuron atlas
    linked = httpx.get(f"{probe_server}/api/features/{best['page']}").json()
    assert linked["id"] == PROBED_UNIT and linked["count"] > 0

    assert other["hook"] == OTHER_HOOK and other["source"] == "synthetic"
    (planted,) = other["targets"]
    assert planted["largest_k"] == max(OTHER_PROBE_KS) and planted["folds"] == OTHER_PROBE_FOLDS
    assert len(planted["units"]) == max(OTHER_PROBE_KS)  # fewer than the 16 shown: every ranked unit
    top = planted["units"][: len(OTHER_PROBED_UNITS)]
    assert {u["unit"] for u in top} == set(OTHER_PROBED_UNITS)
    assert all(u["folds_picked"] == OTHER_PROBE_FOLDS for u in top)
    assert all(u["page"] is None for u in planted["units"])  # the atlas maps another hook
    assert planted["units"][4]["score"] is None  # NaN in results.json
    shuffled = next(s for s in planted["scores"] if s["probe"] == "shuffled")
    assert shuffled["std"] is None and shuffled["mean"] is not None


def test_the_probe_view_is_404_without_results_and_links_nothing_in_a_dictionary_atlas(
    server: str, circuit_server: str
) -> None:
    missing = httpx.get(f"{server}/api/probe")
    detail = missing.json()["detail"]
    assert missing.status_code == 404 and "--probe" in detail and "\n" not in detail
    assert httpx.get(f"{server}/api/meta").json()["probe"] is False
    assert httpx.get(f"{circuit_server}/api/meta").json()["probe"] is True
    (probe,) = httpx.get(f"{circuit_server}/api/probe").json()["probes"]  # beside resid_post's dictionary
    units = [u for target in probe["targets"] for u in target["units"]]
    assert units and all(u["page"] is None for u in units)


def test_serving_a_folder_that_is_not_a_probe_result_is_one_line(
    atlas_path: Path, neuron_report_dir: Path, tmp_path: Path
) -> None:
    assert_one_line_error(serve_with_probe(atlas_path, tmp_path), "is not a probe result folder")
    assert_one_line_error(serve_with_probe(atlas_path, neuron_report_dir), "is not a probe result folder")
    (tmp_path / "results.json").write_text(json.dumps({"format": "featurelens.neurons"}))
    assert_one_line_error(serve_with_probe(atlas_path, tmp_path), "not a featurelens probe result")
    (tmp_path / "results.json").write_text(json.dumps({"format": "featurelens.probe", "hook": "x"}))
    assert_one_line_error(serve_with_probe(atlas_path, tmp_path), "not a readable probe result", "units")


def test_a_dictionary_probe_links_its_features_only_to_an_atlas_of_that_dictionary(tmp_path: Path) -> None:
    hook = "layers.1.resid_post"
    (tmp_path / "sae").mkdir()
    (tmp_path / "other-sae").mkdir()
    folder = plant_probe(tmp_path / "probe", hook=hook, dictionary=str(tmp_path / "sae"))
    atlas = {"kind": "dictionary", "hook_in": hook, "d_latent": 64, "dictionary": str(tmp_path / "sae")}

    def pages(atlas_meta: dict[str, object]) -> list[int | None]:
        (probe,) = probe_views([folder / "results.json"], atlas_meta).probes
        assert probe.unit_kind == "feature" and probe.dictionary == str(tmp_path / "sae")
        return [u.page for u in probe.targets[0].units]

    units = [unit for unit, _ in read_probe(folder).targets[0].units]
    assert pages(atlas) == units
    assert pages({**atlas, "d_latent": 16}) == [u if u < 16 else None for u in units]
    assert pages({**atlas, "dictionary": "/nowhere/sae"}) == units  # not found here: the hook decides
    assert pages({**atlas, "dictionary": str(tmp_path / "other-sae")}) == [None] * len(units)
    assert pages({**atlas, "kind": "neurons"}) == [None] * len(units)  # feature i is not neuron i
    assert pages({**atlas, "hook_in": "layers.2.resid_post"}) == [None] * len(units)
    with pytest.raises(ProbeError, match="not a probe result folder"):
        read_probe(tmp_path / "sae")
