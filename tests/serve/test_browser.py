"""The pages in a real headless Chromium (Debian's, driven by Playwright), offline: every request that
does not go to the local server is blocked and counted."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.atlas.conftest import DEAD_LATENTS, DENSE_LATENTS, RECOMMENDED
from tests.serve.conftest import (
    ARTIFACTS,
    DEAD,
    NEURON_HOOK,
    OTHER_DEAD,
    OTHER_HOOK,
    PROBED_UNIT,
    start_server,
)
from tests.serve.test_compare_view import NOT_SIGNIFICANT, NOT_SIGNIFICANT_P, plant_compare

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OFFLINE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which("chromium"), "the browser tests need Debian's chromium: apt-get install chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=OFFLINE_FLAGS)
        yield chromium
        chromium.close()


@contextmanager
def local_tab(browser: Browser, server: str) -> Iterator[Page]:
    """A tab that may only reach ``server``; it must end with no outside request and no script error."""
    outside: list[str] = []

    def local_only(route: Route) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    tab.route("**/*", local_only)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert outside == [], f"the app tried to reach {outside}"
    assert errors == [], errors


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    with local_tab(browser, server) as tab:
        yield tab


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_overview_search_and_feature_page(page: Page, server: str) -> None:
    page.goto(server)
    page.wait_for_selector("#features tbody tr")
    assert page.locator("#features tbody tr").count() == 32
    assert "null" not in page.inner_text("main")
    assert "fires on" in page.locator("#features tbody tr td.explanation").first.inner_text()
    assert page.locator("svg.histogram rect").count() > 0
    shot(page, "overview")
    page.click("th[data-sort=max_activation]")
    page.wait_for_selector("th[data-sort=max_activation]:has-text('↓')")
    assert page.locator("#features tbody tr").first.locator("td").first.inner_text() == "#31"

    page.goto(f"{server}/#/feature/9")
    page.wait_for_selector("#top-contexts .context")
    highlighted = page.locator("#top-contexts .tok[data-activation]")
    assert highlighted.count() >= 6
    assert float(highlighted.first.get_attribute("data-activation") or 0) == 3.25  # magnitude(9)
    assert "activation 3.25" in (highlighted.first.get_attribute("title") or "")
    assert page.locator("svg.histogram rect").count() == 1  # one activation value, one bin
    assert page.locator("#quantiles .context").count() > 0
    assert "baseline" in page.inner_text("#explanations")
    shot(page, "feature")

    word = page.locator("#top-contexts .tok.centre").first.inner_text()
    page.fill("#search", word)
    page.press("#search", "Enter")
    page.wait_for_selector("#search-results, .muted:has-text('no feature matches')")
    if word.isalnum():
        assert page.locator("#search-results a", has_text="#9").count() == 1
    shot(page, "search")


def test_the_first_screen_opens_on_the_recommended_features(browser: Browser, ordered_server: str) -> None:
    with local_tab(browser, ordered_server) as tab:
        tab.goto(ordered_server)
        tab.wait_for_selector("#features tbody tr")
        first_ids = tab.locator("#features tbody tr td:first-child").all_inner_texts()
        assert first_ids[:4] == [f"#{j}" for j in RECOMMENDED[:4]]  # the best-explained of the middle band
        assert tab.locator("#sort").input_value() == "recommended"
        assert "at least 10 times" in tab.inner_text("#sort-rule")
        shot(tab, "overview-recommended")

        tab.select_option("#sort", "density")
        tab.wait_for_selector("th[data-sort=density]:has-text('↓')")
        first_ids = tab.locator("#features tbody tr td:first-child").all_inner_texts()
        assert first_ids[:3] == [f"#{j}" for j in DENSE_LATENTS]
        assert tab.locator("#sort-rule").count() == 0

        tab.click("th[data-sort=density]")  # the column header reverses it: the dead ones, rarest first
        tab.wait_for_selector("th[data-sort=density]:has-text('↑')")
        assert tab.locator("#features tbody tr td:first-child").first.inner_text() == f"#{DEAD_LATENTS[0]}"
        assert tab.locator("#sort").input_value() == "density"


def test_try_your_own_text_and_steering(page: Page, server: str) -> None:
    page.goto(f"{server}/#/try")
    page.fill("#try-text", "the value of a class")
    page.click("#try-run")
    page.wait_for_selector("#try-output .tok", timeout=120_000)
    assert page.locator("#try-output .tok").count() > 3
    page.locator("#try-output .tok").nth(2).click()
    page.wait_for_selector("#try-details h2")
    shot(page, "try")

    page.goto(f"{server}/#/steer")
    page.fill("#steer-prompt", "the value of")
    page.fill(".steer-id", "3")
    page.fill(".steer-strength", "0")
    page.click("#steer-run")
    page.wait_for_selector("#steer-steered", timeout=120_000)
    assert page.inner_text("#steer-baseline") == page.inner_text("#steer-steered")
    page.fill(".steer-strength", "200")
    page.click("#steer-run")
    changed = "(s => s && s.innerText !== document.querySelector('#steer-baseline').innerText)"
    page.wait_for_function(f"{changed}(document.querySelector('#steer-steered'))", timeout=120_000)
    shot(page, "steer")


def test_the_circuit_view_draws_the_graph_and_opens_feature_pages(
    browser: Browser, circuit_server: str
) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(f"{circuit_server}/#/circuit")
    tab.wait_for_selector("svg.circuit g.node")
    graph = httpx.get(f"{circuit_server}/api/circuit").json()
    assert tab.locator("svg.circuit g.node").count() == len(graph["nodes"])
    assert tab.locator("svg.circuit line.edge").count() >= len(
        graph["nodes"]
    )  # every node reaches the logits
    assert tab.locator("#circuit-link").count() == 1
    shot(tab, "circuit")
    head = next(node for node in graph["nodes"] if node["kind"] == "head")
    tab.locator(f'svg.circuit g.node[data-id="{head["id"]}"]').click()
    assert "no page in this atlas" in tab.locator("#circuit-note").inner_text()
    feature = next(node for node in graph["nodes"] if node["kind"] == "feature")
    tab.locator(f'svg.circuit g.node[data-id="{feature["id"]}"]').click()
    tab.wait_for_function(f"location.hash === '#/feature/{feature['page']}'")
    tab.wait_for_selector("#top-contexts")  # the feature page has rendered (the hash changes first)
    assert tab.locator("h1").inner_text() == f"Feature {feature['page']}"
    context.close()
    assert errors == [], errors


def test_the_neuron_view_draws_its_tables_and_opens_unit_pages(browser: Browser, neuron_server: str) -> None:
    report = httpx.get(f"{neuron_server}/api/neurons").json()
    with local_tab(browser, neuron_server) as tab:
        tab.goto(neuron_server)
        tab.wait_for_selector("#neurons-link")
        tab.click("#neurons-link")
        tab.wait_for_selector("table.notable")
        assert tab.locator("table.neuron-layers").count() == 2  # mlp_neurons and resid_post
        assert tab.locator("table.neuron-layers[data-point=mlp_neurons] tbody tr").count() == 2
        cells = sum(len(m["layers"]) * len(m["channels"]) for m in report["maps"])
        assert tab.locator("svg.heatmap rect.cell").count() == cells
        assert tab.locator("#massive tbody tr").count() == len(report["massive"])
        assert tab.locator("table.notable").count() == len(report["notable"])
        assert "null" not in tab.inner_text("main") and "undefined" not in tab.inner_text("main")
        dead = tab.locator("table.notable[data-kind=dead]")
        assert (
            dead.locator(f'tr[data-hook="{OTHER_HOOK}"][data-unit="{OTHER_DEAD}"] a').count() == 0
        )  # no page
        shot(tab, "neurons")
        dead.locator(f'tr[data-hook="{NEURON_HOOK}"][data-unit="{DEAD}"] a.unit-link').click()
        tab.wait_for_function(f"location.hash === '#/feature/{DEAD}'")
        tab.wait_for_selector("#top-contexts")
        assert tab.locator("h1").inner_text() == f"Feature {DEAD}"


def test_the_probe_view_draws_its_charts_and_opens_unit_pages(browser: Browser, probe_server: str) -> None:
    served = httpx.get(f"{probe_server}/api/probe").json()
    with local_tab(browser, probe_server) as tab:
        tab.goto(probe_server)
        tab.wait_for_selector("#probe-link")
        tab.click("#probe-link")
        tab.wait_for_selector("svg.probe-chart")
        targets = [target for probe in served["probes"] for target in probe["targets"]]
        assert tab.locator("svg.probe-chart").count() == len(targets) == 2
        for chart, target in zip(tab.locator("svg.probe-chart").all(), targets, strict=True):
            ks = [s["k"] for s in target["scores"] if s["k"] is not None]
            assert chart.locator("circle.sparse").count() == len(ks)
            assert chart.locator("line.baseline").count() == 3  # dense, majority, shuffled
        main = tab.inner_text("main")
        assert "null" not in main and "undefined" not in main and "NaN" not in main
        linked = tab.locator(f'section.probe[data-hook="{NEURON_HOOK}"] table.probe-units a.unit-link')
        unlinked = tab.locator(f'section.probe[data-hook="{OTHER_HOOK}"] table.probe-units a')
        assert linked.count() == len(served["probes"][0]["targets"][0]["units"]) and unlinked.count() == 0
        shot(tab, "probe")
        tab.locator(
            f'section.probe[data-hook="{NEURON_HOOK}"] tr[data-unit="{PROBED_UNIT}"] a.unit-link'
        ).click()
        tab.wait_for_function(f"location.hash === '#/feature/{PROBED_UNIT}'")
        tab.wait_for_selector("#top-contexts")
        assert tab.locator("h1").inner_text() == f"Feature {PROBED_UNIT}"


@pytest.fixture(scope="module")
def compare_server(atlas_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The planted atlas beside the planted comparison folder of tests/serve/test_compare_view.py."""
    folder = plant_compare(tmp_path_factory.mktemp("compare") / "maps")
    process, url = start_server(atlas_path, "--compare", str(folder))
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_the_compare_view_draws_every_cell_and_marks_the_one_not_significant(
    browser: Browser, compare_server: str
) -> None:
    served = httpx.get(f"{compare_server}/api/compare").json()
    cells = sum(len(m["hooks_a"]) * len(m["hooks_b"]) for m in served["maps"])  # per measure
    map_name, measure, row, col = NOT_SIGNIFICANT
    with local_tab(browser, compare_server) as tab:
        tab.goto(compare_server)
        tab.wait_for_selector("#compare-link")
        tab.click("#compare-link")
        tab.wait_for_selector("svg.compare-map")
        assert tab.locator("svg.compare-map").count() == len(served["maps"])
        assert tab.locator(f'svg.compare-map[data-measure="{measure}"] rect.cell').count() == cells
        assert tab.locator("rect.cell.not-significant").count() == 1
        assert tab.locator("svg.compare-map circle.ns").count() == 1
        unmarked = tab.locator("rect.cell:not(.not-significant)").first.locator("title").text_content() or ""
        assert "p = 0.0100 (significant at 0.05)" in unmarked
        marked = tab.locator(f'svg.compare-map[data-map="{map_name}"] rect.cell.not-significant')
        assert (marked.get_attribute("data-row"), marked.get_attribute("data-col")) == (str(row), str(col))
        title = marked.locator("title").text_content() or ""
        assert f"p = {NOT_SIGNIFICANT_P}" in title and "not significant" in title
        assert "layers.2.resid_post × layers.1.resid_post" in title and "null 0.00300 ± 0.00400" in title
        assert tab.locator("svg.compare-map rect.cell.unknown").count() == 0  # every cka value is finite
        stats = tab.inner_text("#compare-stats")
        assert "20,000 rows" in stats and "100 permutations of 512 rows" in stats
        assert "same tokenizer: identical rows" in stats
        info = tab.inner_text("#compare-measure-info")
        assert "debiased linear CKA" in info and "similarity (higher = more alike)" in info
        main = tab.inner_text("main")
        assert (
            "null" not in main.replace("null model", "").replace("null:", "")
            and "undefined" not in main
            and "NaN" not in main
        )
        assert tab.locator('a[href="/api/compare/png/a-a_cka.png"]').count() == 1
        shot(tab, "compare")

        tab.select_option("#compare-measure", "procrustes")
        tab.wait_for_selector('svg.compare-map[data-measure="procrustes"]')
        assert tab.locator("svg.compare-map rect.cell").count() == cells
        assert (
            tab.locator("svg.compare-map rect.cell.unknown").count() == 2
        )  # the NaN cell and the absent one
        assert tab.locator("rect.cell.not-significant").count() == 0
        assert "distance (lower = more alike), a metric" in tab.inner_text("#compare-measure-info")
