"""The JSON API over real HTTP against a running server process, including hostile input."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.atlas.conftest import DENSE_LATENTS, RECOMMENDED, WIDTH, magnitude
from tests.serve.conftest import (
    DEAD,
    MASSIVE,
    MASSIVE_VALUE,
    NEURON_HOOK,
    OTHER_DEAD,
    OTHER_HOOK,
    OTHER_MASSIVE,
    OTHER_MASSIVE_VALUE,
    POSITIONAL,
    REPORT_WIDTHS,
    TOKEN,
    TOKEN_UNIT,
)


def test_overview_endpoints_describe_the_atlas(server: str) -> None:
    meta = httpx.get(f"{server}/api/meta").json()
    assert (
        meta["d_latent"] == WIDTH
        and meta["hook_in"] == "layers.1.resid_post"
        and meta["kind"] == "dictionary"
    )
    page = httpx.get(f"{server}/api/features", params={"sort": "max_activation", "limit": 5}).json()
    assert page["total"] == WIDTH
    assert [item["max_activation"] for item in page["items"]] == [magnitude(j) for j in range(31, 26, -1)]
    second = httpx.get(
        f"{server}/api/features", params={"sort": "id", "order": "asc", "offset": 5, "limit": 3}
    ).json()
    assert [item["id"] for item in second["items"]] == [5, 6, 7]
    densities = httpx.get(f"{server}/api/densities").json()
    assert sum(densities["counts"]) + densities["dead"] == WIDTH


def test_features_come_in_the_recommended_order_unless_asked_otherwise(ordered_server: str) -> None:
    page = httpx.get(f"{ordered_server}/api/features", params={"limit": 32}).json()
    assert page["sort"] == "recommended" and [item["id"] for item in page["items"]] == RECOMMENDED
    assert "at least 10 times" in page["rule"]
    densest = httpx.get(f"{ordered_server}/api/features", params={"sort": "density", "limit": 3}).json()
    assert [item["id"] for item in densest["items"]] == list(DENSE_LATENTS) and densest["rule"] == ""


def test_feature_and_search_return_what_the_atlas_holds(server: str) -> None:
    feature = httpx.get(f"{server}/api/features/9").json()
    assert feature["id"] == 9 and feature["max_activation"] == magnitude(9)
    centre = feature["top"][0]
    assert centre["token_ids"][centre["centre"]] == 9 and centre["activations"][
        centre["centre"]
    ] == magnitude(9)
    (explanation,) = feature["explanations"]
    assert explanation["method"] == "baseline" and explanation["detection_balanced_accuracy"] >= 0.9
    word = next(text for text, _ in feature["top_tokens"])
    hits = httpx.get(f"{server}/api/search", params={"q": word}).json()["results"]
    assert any(hit["id"] == 9 for hit in hits) or not word.isalnum()


def test_try_your_own_text_shows_the_planted_features(server: str) -> None:
    response = httpx.post(f"{server}/api/activations", json={"text": "a b c the of"}, timeout=120)
    assert response.status_code == 200, response.text
    tokens = response.json()["tokens"]
    assert tokens and all(len(t["features"]) <= 5 for t in tokens)


def test_steering_with_zero_strength_changes_nothing(server: str) -> None:
    request = {"prompt": "the value of", "features": [{"id": 3, "strength": 0.0}], "max_new_tokens": 12}
    null = httpx.post(f"{server}/api/steer", json=request, timeout=120).json()
    assert null["baseline"] == null["steered"]
    clamp = httpx.post(
        f"{server}/api/steer", json={**request, "features": [], "mode": "clamp"}, timeout=120
    ).json()
    assert clamp["baseline"] == clamp["steered"] == null["baseline"]
    strong = {**request, "features": [{"id": 3, "strength": 200.0}]}
    steered = httpx.post(f"{server}/api/steer", json=strong, timeout=120).json()
    assert steered["steered"] != steered["baseline"]


def test_bad_requests_get_a_4xx_with_a_message(server: str) -> None:
    cases = [
        ("GET", "/api/features/32", None, 404),
        ("GET", "/api/features/-1", None, 404),
        ("GET", "/api/features/abc", None, 422),
        ("GET", "/api/features?limit=100000", None, 422),
        ("GET", "/api/features?sort=password", None, 422),
        ("POST", "/api/activations", {"text": "x" * 2001}, 422),
        ("POST", "/api/activations", {"text": ""}, 422),
        ("POST", "/api/steer", {"prompt": "a", "features": [{"id": 1, "strength": 1e9}]}, 422),
        ("POST", "/api/steer", {"prompt": "a", "features": [{"id": 99, "strength": 1}]}, 404),
        ("POST", "/api/steer", {"prompt": "a", "features": [], "max_new_tokens": 100000}, 422),
        ("POST", "/api/steer", {"prompt": "a", "features": [{"id": 1, "strength": False}]}, 422),
        ("POST", "/api/steer", {"prompt": "a", "features": [{"id": "1", "strength": 1}]}, 422),
        ("POST", "/api/steer", {"prompt": "a", "features": [], "colour": "red"}, 422),
        ("GET", "/api/nothing", None, 404),
    ]
    for method, path, body, status in cases:
        response = httpx.request(method, f"{server}{path}", json=body, timeout=60)
        assert response.status_code == status, (path, body, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail, (
            path,
            detail,
        )  # the documented form
    broken = httpx.post(
        f"{server}/api/activations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code in (400, 422) and isinstance(broken.json()["detail"], str)
    whole = {"prompt": "a", "features": [{"id": 1.0, "strength": 0}], "max_new_tokens": 2.0}
    assert httpx.post(f"{server}/api/steer", json=whole, timeout=120).status_code == 200  # JSON integers


def test_no_url_reaches_a_file_outside_the_app(server: str) -> None:
    netloc = urlsplit(server).netloc
    for path in (
        "/static/../../../../etc/passwd",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/app.py",
        "/../atlas.sqlite",
        "/static//etc/passwd",
    ):
        connection = http.client.HTTPConnection(netloc, timeout=10)
        connection.request("GET", path)  # sent as written: no client-side normalisation
        response = connection.getresponse()
        body = response.read()
        assert response.status == 404, path
        assert b"root:" not in body and b"SQLite" not in body


def test_requests_while_the_model_loads_get_429_never_a_500(fresh_server: str) -> None:
    def post(_: int) -> int:
        return httpx.post(f"{fresh_server}/api/activations", json={"text": "hello"}, timeout=120).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(post, range(6)))
    assert set(statuses) <= {200, 429} and 200 in statuses, statuses
    assert post(0) == 200


def test_openapi_fuzzing_finds_no_contract_violation(circuit_server: str, tmp_path: Path) -> None:
    """Every schemathesis check (server errors, undocumented status codes, replies that break the
    schema, invalid data accepted, valid data rejected), over every endpoint including the circuit and
    the neuron report."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{circuit_server}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--generation-deterministic",
            "--request-timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_the_circuit_view_links_nodes_to_atlas_pages(
    circuit_server: str, server: str, circuit_dir: Path
) -> None:
    graph = httpx.get(f"{circuit_server}/api/circuit").json()
    written = json.loads((circuit_dir / "circuit.json").read_text())
    assert [node["id"] for node in graph["nodes"]] == [node["id"] for node in written["nodes"]]
    features = [node for node in graph["nodes"] if node["kind"] == "feature"]
    assert len(features) == 3 and all(node["page"] == node["index"] for node in features)
    assert all(node["page"] is None for node in graph["nodes"] if node["kind"] == "head")
    assert (
        graph["atlas_hook"] == "layers.1.resid_post"
        and httpx.get(f"{circuit_server}/api/meta").json()["circuit"]
    )
    missing = httpx.get(f"{server}/api/circuit")
    assert missing.status_code == 404 and "--circuit" in missing.json()["detail"]
    assert httpx.get(f"{server}/api/meta").json()["circuit"] is False


def test_serving_a_file_that_is_not_a_circuit_is_one_line(atlas_path: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "circuit.json"
    bogus.write_text('{"nodes": []}')
    command = [
        sys.executable,
        "-m",
        "featurelens.cli.main",
        "serve",
        str(atlas_path),
        "--circuit",
        str(bogus),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "is not a circuit file" in result.stderr


def test_the_neuron_view_shows_the_planted_units_linked_to_the_neuron_atlas(neuron_server: str) -> None:
    meta = httpx.get(f"{neuron_server}/api/meta").json()
    assert meta["neurons"] and meta["kind"] == "neurons" and meta["hook_in"] == NEURON_HOOK
    report = httpx.get(f"{neuron_server}/api/neurons").json()
    assert report["meta"]["rows"] == 32 * 64 and report["meta"]["source"] == "synthetic"
    assert [(row["hook"], row["width"]) for row in report["layers"]] == list(REPORT_WIDTHS.items())
    first = report["layers"][0]
    assert (
        first["dead"] == 1
        and first["massive_units"] == 1
        and first["massive_entries"] == {"100x": 1, "1000x": 1}
    )
    notable = {group["kind"]: group["units"] for group in report["notable"]}
    found = {kind: [(u["hook"], u["unit"], u["page"]) for u in units] for kind, units in notable.items()}
    assert found["dead"] == [(NEURON_HOOK, DEAD, DEAD), (OTHER_HOOK, OTHER_DEAD, None)]
    assert found["massive"] == [(NEURON_HOOK, MASSIVE, MASSIVE), (OTHER_HOOK, OTHER_MASSIVE, None)]
    assert (
        found["token"] == [(NEURON_HOOK, TOKEN_UNIT, TOKEN_UNIT)]
        and notable["token"][0]["token_text"] == f"<{TOKEN}>"
    )
    assert found["positional"] == [(NEURON_HOOK, POSITIONAL, POSITIONAL)]
    massive = [(m["hook"], m["unit"], m["value"], m["page"]) for m in report["massive"]]
    assert massive == [
        (NEURON_HOOK, MASSIVE, MASSIVE_VALUE, MASSIVE),
        (OTHER_HOOK, OTHER_MASSIVE, OTHER_MASSIVE_VALUE, None),
    ]
    maps = {m["point"]: m for m in report["maps"]}
    assert set(maps) == {"mlp_neurons", "resid_post"} and maps["mlp_neurons"]["layers"] == [1, 2]
    mlp = maps["mlp_neurons"]
    assert {MASSIVE, OTHER_MASSIVE} <= set(mlp["channels"]) and len(mlp["channels"]) <= 16
    assert mlp["ratio"][0][mlp["channels"].index(MASSIVE)] == first["max_over_median"]
    page = httpx.get(f"{neuron_server}/api/features/{DEAD}").json()  # the linked page is that neuron's
    assert page["id"] == DEAD and page["count"] > 0


def test_the_neuron_view_is_404_without_a_report_and_links_nothing_in_a_dictionary_atlas(
    server: str, circuit_server: str
) -> None:
    missing = httpx.get(f"{server}/api/neurons")
    assert missing.status_code == 404 and "--neurons" in missing.json()["detail"]
    assert "\n" not in missing.json()["detail"] and httpx.get(f"{server}/api/meta").json()["neurons"] is False
    report = httpx.get(f"{circuit_server}/api/neurons").json()  # beside the dictionary atlas of resid_post
    units = [u for group in report["notable"] for u in group["units"]] + report["massive"]
    assert units and all(u["page"] is None for u in units) and report["atlas_kind"] == "dictionary"


def test_serving_a_folder_that_is_not_a_neuron_report_is_one_line(atlas_path: Path, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "featurelens.cli.main",
        "serve",
        str(atlas_path),
        "--neurons",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "not a neuron report" in result.stderr
