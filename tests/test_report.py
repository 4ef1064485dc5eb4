"""The workflow's HTML report (`snakemake --report`) of the smoke-test study: every figure
embedded with a caption, the metrics table, and the configuration.

The report is a single self-contained HTML page whose results are a JSON object in
the page (`var results = {...}`, images as data URIs); the first tests read that object.
The others open the page in Chromium through Playwright and click through it as a user
does (tests/report_browser.py), saving screenshots in test-artefacts/report/; without
Chromium or Playwright they skip (fail under CI, ONEPIXEL_REQUIRE_COMPONENTS=1)."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import report_browser
from components import artefacts, missing, need_module
from conftest import check_tool
from report_browser import Console, Report, Shown, slug, table_rows

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.slow


def _js_value(page: str, script_id: str, name: str):
    start = page.index(f'<script id="{script_id}">')
    at = page.index(f"var {name} = ", start) + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(page, at)[0]


def _embedded(entry: dict) -> bytes:
    head, data = entry["data_uri"].split(",", 1)
    assert head.endswith(";base64"), head
    return base64.b64decode(data)


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


@pytest.fixture(scope="module")
def report(study, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("report") / "report.html"
    check_tool(["snakemake", "--report", str(path)], study.repo)
    page = path.read_text()
    return {
        "path": path,
        "page": page,
        "results": _js_value(page, "results", "results"),
        "categories": _js_value(page, "categories", "categories"),
        "description": _js_value(page, "workflow-desc", "workflow_desc"),
    }


def test_report_embeds_every_figure_of_the_study(study, report):
    figures = sorted(str(p.relative_to(study.repo)) for p in (study.results / "figures").rglob("*.png"))
    assert len(figures) >= 6
    missing = [figure for figure in figures if figure not in report["results"]]
    assert not missing, f"figures not in the report: {missing}"
    for figure in figures:
        entry = report["results"][figure]
        assert entry["mime_type"] == "image/png"
        assert _embedded(entry) == (study.repo / figure).read_bytes(), figure


def test_every_report_entry_has_a_caption_that_explains_it(report):
    for name, entry in report["results"].items():
        words = _text(entry["caption"]).split()
        assert len(words) >= 20, f"{name}: caption too short to explain what it shows: {' '.join(words)}"


def test_report_has_the_metrics_table_of_every_model(study, report):
    entry = report["results"][f"results/{study.config['dataset']['name']}/plots/metrics.html"]
    assert entry["mime_type"] == "text/html"
    assert "Metrics" in report["categories"]
    table = _embedded(entry).decode()
    summary = json.loads((study.results / "summary.json").read_text())
    for model, row in summary["models"].items():
        cells = re.search(rf"<tr><td>{model}</td>(.*?)</tr>", table).group(1)
        values = _text(cells.replace("</td><td>", "|")).split("|")
        assert values[0] == f"{100 * row['test_accuracy']:.1f} %"
        assert values[1] == str(row["attacked"])
        assert values[2] == f"{100 * row['attack_success_rate']:.1f} %"
        assert values[3] == f"{row['mean_queries']:.0f}"
        assert values[4] == f"{100 * row['locality_d1']:.1f} %"
    assert json.loads((study.results / "provenance.json").read_text())["provenance"]["config_digest"] in table


def test_report_shows_the_configuration_of_the_run(study, report):
    shown = _text(report["description"])
    config = json.loads(shown[shown.index("{") : shown.rindex("}") + 1])
    assert config["attack"]["population"] == study.config["attack"]["population"]
    assert config["models"] == study.config["models"]
    assert config["attack"]["seed"] == study.config["attack"]["seed"]
    assert {"Metrics", "Propagation maps", "Locality", "Attacks compared"} <= set(report["categories"])


# --- the report in a real browser -----------------------------------------------------------
# One Chromium for the module (Playwright driving Debian's chromium, see tests/report_browser.py)
# clicks through the page once, as a user does: the landing page, every category and
# subcategory of the page's `categories`, every result opened in the right pane, Workflow,
# Statistics and About. The tests below check what that walk saw; its screenshots are in
# test-artefacts/report/ (tests/components.py::artefacts) for people to look at.

VIEWPORT = {"width": 1440, "height": 900}
# warnings of Snakemake's own page, not of this workflow's results (Snakemake 9.27)
KNOWN_WARNINGS = (
    # it embeds Tailwind's Play CDN script, which builds the page's styles in the browser (no request)
    "cdn.tailwindcss.com should not be used in production",
    # Statistics: its runtime and timeline charts declare Vega-Lite v3 specs, drawn by the v5 it embeds
    "The input spec uses Vega-Lite v3",
)


@dataclass
class Opened:
    """One result opened with its eye button, as the right pane showed it."""

    category: str
    subcategory: str
    path: str
    mime_type: str
    screenshot: Path | None = None
    image: Shown | None = None  # a figure: the <img> of the pane
    rows: list[list[str]] = field(default_factory=list)  # an HTML result: its first table's data rows
    problem: str = ""  # what went wrong opening it


@dataclass
class Walk:
    categories: dict[str, dict[str, list[str]]]
    subcategories: dict[str, list[str]] = field(default_factory=dict)  # what each category listed
    listed: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # what each subcategory listed
    images: dict[str, list[Shown]] = field(default_factory=dict)  # view -> every <img> of the page
    opened: list[Opened] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # views that did not open
    captions: dict[str, str] = field(default_factory=dict)  # result path -> its caption as the panel shows it
    landing: dict[str, Any] = field(default_factory=dict)
    console: Console = field(default_factory=Console)


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Browser]:
    need_module("playwright", install="playwright")
    executable = report_browser.chromium()
    if executable is None:
        chosen = os.environ.get(report_browser.CHROMIUM)
        missing(
            f"no Chromium at ${report_browser.CHROMIUM}={chosen!r}"
            if chosen
            else f"Chromium not installed (Debian: apt-get install chromium), or name one in ${report_browser.CHROMIUM}"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def walk(report, chromium_browser) -> Iterator[Walk]:
    from playwright.sync_api import Error as PlaywrightError

    folder = artefacts("report")
    for old in folder.glob("*.png"):
        old.unlink()
    page = chromium_browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(30_000)
    seen = Walk(categories={})
    seen.console.listen(page)
    shown = Report(page, report["path"].as_uri())

    def shoot(name: str) -> Path:
        seen.screenshots.append(shown.screenshot(folder / f"{len(seen.screenshots):02d}-{name}.png"))
        return seen.screenshots[-1]

    shown.open()
    seen.categories = shown.categories()
    seen.landing = shown.landing_pane()
    seen.images["landing page"] = shown.images()
    shoot("landing")
    for category in sorted(seen.categories):
        for subcategory in sorted(seen.categories[category]):
            try:
                listed = seen.listed[category, subcategory] = shown.subcategory(category, subcategory)
            except PlaywrightError as error:
                seen.problems.append(f"{category} / {subcategory} did not open: {error.message.splitlines()[0]}")
                continue
            for path in listed:
                entry = report["results"][path]
                opened = Opened(category, subcategory, path, entry["mime_type"])
                try:
                    shown.view(path)
                    if entry["mime_type"].startswith("image/"):
                        opened.image = shown.shown_image(entry["data_uri"])
                    elif entry["mime_type"] == "text/html":
                        opened.rows = table_rows(shown.shown_frame(entry["data_uri"]))
                    seen.images[path] = shown.images()
                except PlaywrightError as error:
                    opened.problem = error.message.splitlines()[0]
                opened.screenshot = shoot(f"{slug(category)}-{slug(subcategory)}-{slug(Path(path).stem)}")
                seen.opened.append(opened)
            try:  # the caption of the result the pane shows: the last one opened
                seen.captions[listed[-1]] = shown.caption(listed[-1])
                shoot(f"{slug(category)}-{slug(subcategory)}-{slug(Path(listed[-1]).stem)}-caption")
            except PlaywrightError as error:
                seen.problems.append(f"caption of {listed[-1]} did not open: {error.message.splitlines()[0]}")
        try:  # the category's own view: its subcategories, the pane still showing its last result
            seen.subcategories[category] = shown.category(category)
            seen.images[f"category {category}"] = shown.images()
            shoot(f"category-{slug(category)}")
        except PlaywrightError as error:
            seen.problems.append(f"category {category} did not open: {error.message.splitlines()[0]}")
    for item in ("Workflow", "Statistics", "About"):
        try:
            shown.general(item)
            page.wait_for_timeout(300)  # Vega draws the rule graph and the statistics after React renders
            seen.images[item] = shown.images()
            shoot(slug(item))
        except PlaywrightError as error:
            seen.problems.append(f"{item} did not open: {error.message.splitlines()[0]}")
    yield seen
    page.close()


def test_browser_visits_every_category_and_every_image_it_shows_is_displayed(walk):
    assert not walk.problems, walk.problems
    assert {"Metrics", "Propagation maps", "Locality"} <= set(walk.categories)
    for category, subcategories in walk.categories.items():
        # a category with one subcategory lists its results at once
        assert sorted(walk.subcategories[category]) == ([] if len(subcategories) == 1 else sorted(subcategories))
        for subcategory, paths in subcategories.items():
            assert sorted(walk.listed[category, subcategory]) == sorted(paths), (category, subcategory)
    for view, images in walk.images.items():
        assert images, f"{view}: no <img> at all (not even the Snakemake logo): the page did not render"
        broken = [image.describe() for image in images if not image.displayed]
        assert not broken, f"{view}: images not displayed: {broken}"
    for screenshot in walk.screenshots:
        assert screenshot.stat().st_size > 10_000, f"{screenshot}: an empty screenshot"


def test_every_figure_opens_in_the_report_and_displays_whole_width(study, walk):
    assert len(walk.opened) == sum(len(paths) for subs in walk.categories.values() for paths in subs.values())
    for category in walk.categories:
        assert any(opened.category == category and not opened.problem for opened in walk.opened), category
    figures = [opened for opened in walk.opened if opened.mime_type.startswith("image/")]
    assert len(figures) >= 6
    for opened in figures:
        assert not opened.problem, f"{opened.path}: {opened.problem}"
        image = opened.image
        assert image is not None and image.displayed, f"{opened.path}: {image and image.describe()}"
        assert (image.natural_width, image.natural_height) == _png_size(study.repo / opened.path), opened.path
        # scaled down to the pane's width (Tailwind's img {max-width: 100%}): nothing cut off sideways
        assert image.left >= 0 and image.left + image.width <= image.pane_width + 1, image.describe()


def test_captions_show_in_the_result_panel(walk, report):
    for category, subcategories in walk.categories.items():
        for subcategory, paths in subcategories.items():
            assert set(paths) & set(walk.captions), f"{category} / {subcategory}: no caption opened"
    for path, shown in walk.captions.items():
        assert shown.split() == _text(report["results"][path]["caption"]).split(), path


def test_html_results_show_their_tables_in_the_browser(study, walk):
    tables = [opened for opened in walk.opened if opened.mime_type == "text/html"]
    assert {Path(opened.path).name for opened in tables} >= {"metrics.html", "locality_table.html"}
    for opened in tables:
        assert not opened.problem, f"{opened.path}: {opened.problem}"
        assert opened.rows, f"{opened.path}: no table rows shown"
    (metrics,) = [opened for opened in tables if Path(opened.path).name == "metrics.html"]
    assert metrics.category == "Metrics"
    # the first table of metrics.html: one row per model of the study, in its order
    assert [row[0] for row in metrics.rows] == study.config["models"]
    summary = json.loads((study.results / "summary.json").read_text())
    for row in metrics.rows:
        assert row[1] == f"{100 * summary['models'][row[0]]['test_accuracy']:.1f} %"


def test_report_logs_no_errors_in_the_browser_and_loads_nothing_from_the_network(walk):
    console = walk.console
    assert not console.exceptions, f"uncaught exceptions in the report: {console.exceptions}"
    assert not console.errors, f"console errors in the report: {console.errors}"
    # the page is self-contained, to be read offline: no script, style or font fetched
    assert not console.remote_requests, console.remote_requests
    others = [warning for warning in console.warnings if not any(known in warning for known in KNOWN_WARNINGS)]
    assert not others, others


def test_tall_content_of_the_report_can_be_scrolled_to_its_top(walk):
    """Snakemake 9 centres the right pane's content, so what is taller than the window overflowed
    above its top, out of reach (the study's description, tall figures); workflow/report/style.css
    (the report stylesheet of profiles/default) centres it "safe"."""
    assert walk.landing["cut_off_top"] == 0, walk.landing
    cut = [opened.path for opened in walk.opened if opened.image is not None and opened.image.top < 0]
    assert not cut, f"figures whose top is cut off: {cut}"
