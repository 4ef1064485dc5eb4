"""The workflow's HTML report (`snakemake --report`) of the smoke-test study: every figure
embedded with a caption, the metrics table, and the configuration.

The report is a single self-contained HTML page whose results are a JSON object in
the page (`var results = {...}`, images as data URIs); the tests read that object.
With a Chromium on PATH the page is also rendered headless and its DOM checked."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess

import pytest

from conftest import check_tool

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
    assert {"Metrics", "Propagation maps", "Locality"} <= set(report["categories"])


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="no Chromium on PATH: the page is checked as data above",
)
def test_report_renders_in_a_headless_browser(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            f"--user-data-dir={tmp_path}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            report["path"].as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    for category in ("Metrics", "Propagation maps", "Locality"):
        assert category in dom
