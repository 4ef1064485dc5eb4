"""Drive Snakemake 9's HTML report (`snakemake --report`) in a real Chromium through Playwright.

The report is one React page. Its left panel (the navbar) starts with a menu: General
(Workflow, Statistics, About) and Results, one entry per category. Clicking a category lists
its subcategories (here: ``Other`` and one per model), or its results directly when it has
only one; a subcategory lists its results as a table of file paths, each with an eye button
that shows the result in the right pane (a PNG as an ``<img>``, an HTML file in an
``<iframe>`` of its data URI) and an (i) button that shows its caption in the panel. There are
no thumbnails: a figure is shown only once its eye button is clicked. Breadcrumbs at the top
of the panel (home, Results, category, subcategory) lead back.

Playwright's own browser download is not used: it drives an installed Chromium (Debian's
``chromium``, or the one ``ONEPIXEL_CHROMIUM`` names)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # playwright is optional: the tests skip (or fail under CI) without it
    from playwright.sync_api import ConsoleMessage, Frame, Locator, Page, Request

CHROMIUM = "ONEPIXEL_CHROMIUM"
# the right-hand pane that shows an opened result (and, on the landing page, the workflow description)
PANE = "div.grow.h-screen.overflow-auto"
# measures an <img> against the pane it is shown in; "fits" = no part outside the pane's scrollable area
_MEASURE = """img => {
    const pane = img.closest('.overflow-auto') || document.documentElement;
    const box = img.getBoundingClientRect(), at = pane.getBoundingClientRect();
    return {src: img.currentSrc || img.src, complete: img.complete,
            natural_width: img.naturalWidth, natural_height: img.naturalHeight,
            width: box.width, height: box.height,
            top: box.top - at.top + pane.scrollTop, left: box.left - at.left + pane.scrollLeft,
            pane_width: pane.clientWidth, pane_height: pane.clientHeight};
}"""


def chromium() -> str | None:
    """The Chromium to drive: ``$ONEPIXEL_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH."""
    chosen = os.environ.get(CHROMIUM)
    if chosen:
        return shutil.which(chosen) or (chosen if Path(chosen).is_file() else None)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def slug(text: str) -> str:
    """A file-name-safe form of a category, subcategory or result path."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


@dataclass
class Shown:
    """One ``<img>`` of the page as the browser shows it (sizes in CSS pixels)."""

    src: str
    complete: bool
    natural_width: int
    natural_height: int
    width: float
    height: float
    top: float  # within the pane's scrollable area: below 0 is cut off and cannot be scrolled to
    left: float
    pane_width: float
    pane_height: float

    @property
    def displayed(self) -> bool:
        """Loaded, decoded and laid out with a size (a broken image is complete with naturalWidth 0)."""
        return self.complete and self.natural_width > 0 and self.width > 0 and self.height > 0

    def describe(self) -> str:
        return (
            f"{self.src[:60]}… complete={self.complete} natural={self.natural_width}x{self.natural_height} "
            f"shown={self.width:.0f}x{self.height:.0f} at ({self.left:.0f}, {self.top:.0f}) "
            f"in a {self.pane_width:.0f}x{self.pane_height:.0f} pane"
        )


@dataclass
class Console:
    """What the page said: console errors and warnings, uncaught exceptions, requests off this machine."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)

    def listen(self, page: Page) -> None:
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.exceptions.append(str(error)))
        page.on("request", self._request)

    def _message(self, message: ConsoleMessage) -> None:
        where = message.location
        text = f"{message.text} ({where.get('url', '')[:60]}:{where.get('lineNumber', '?')})"
        if message.type == "error":
            self.errors.append(text)
        elif message.type == "warning":
            self.warnings.append(text)

    def _request(self, request: Request) -> None:
        if request.url.split(":", 1)[0] not in ("file", "data", "blob", "about"):
            self.remote_requests.append(request.url)


class Report:
    """The report open in a Playwright page, navigated as a user clicks through it."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url

    def open(self) -> None:
        self.page.goto(self.url)
        self.page.get_by_role("link", name="Workflow", exact=True).wait_for()

    def categories(self) -> dict[str, dict[str, list[str]]]:
        """The page's own ``categories`` object: category -> subcategory -> result paths."""
        return self.page.evaluate("categories")

    @property
    def _panel(self) -> Locator:
        """The navbar: menu, breadcrumbs and result lists."""
        return self.page.locator("nav").first

    def menu(self) -> None:
        """Back to the menu by the ``Results`` breadcrumb (the home one also resets the right pane)."""
        back = self.page.locator("nav nav").get_by_role("link", name="Results", exact=True)
        if back.count():
            back.click()
        self._panel.get_by_role("link", name="Workflow", exact=True).wait_for()

    def general(self, item: str) -> None:
        """Workflow, Statistics or About of the menu."""
        self.menu()
        self._panel.get_by_role("link", name=item, exact=True).click()

    def category(self, name: str) -> list[str]:
        """Open a category from the menu; the subcategories it lists (none: it lists its results)."""
        self.menu()
        self._panel.get_by_role("link", name=name, exact=True).click()
        self.page.locator("nav nav").get_by_text(name, exact=True).wait_for()
        if self._panel.locator("tbody").count():
            return []
        return [text.strip() for text in self._panel.locator("ul li").all_inner_texts()]

    def subcategory(self, category: str, name: str) -> list[str]:
        """Open a subcategory (through its category); the result paths it lists."""
        if self.category(category):
            self._panel.get_by_role("link", name=name, exact=True).click()
        self._panel.locator("tbody tr").first.wait_for()
        return [text.strip() for text in self._panel.locator("tbody tr td:first-child").all_inner_texts()]

    def view(self, path: str) -> None:
        """Click the eye button of a listed result."""
        row = self._panel.locator("tbody tr").filter(has=self.page.get_by_role("cell", name=path, exact=True))
        row.locator("a[iconname=eye]").click()

    def caption(self, path: str) -> str:
        """Click the (i) button of a listed result; the caption ("Description") the panel then shows."""
        row = self._panel.locator("tbody tr").filter(has=self.page.get_by_role("cell", name=path, exact=True))
        row.locator("a[iconname=information-circle]").click()
        caption = self._panel.locator("li.prose")
        caption.wait_for()
        return caption.inner_text()

    def images(self, timeout_ms: float = 15_000) -> list[Shown]:
        """Every ``<img>`` in the page, measured once each has finished loading (or the time is up)."""
        from playwright.sync_api import Error

        with contextlib.suppress(Error):  # measured as they are: the caller reports the incomplete ones
            self.page.wait_for_function(
                "() => [...document.images].every(img => img.complete)", timeout=timeout_ms, polling=100
            )
        return [Shown(**shown) for shown in self.page.evaluate(f"() => [...document.images].map({_MEASURE})")]

    def shown_image(self, data_uri: str, timeout_ms: float = 15_000) -> Shown:
        """The figure in the right pane once it shows the image of ``data_uri``."""
        image = self.page.locator(f"{PANE} img")
        self.page.wait_for_function(
            "([pane, src]) => { const img = document.querySelector(pane + ' img'); return img && img.src === src; }",
            arg=[PANE, data_uri],
            timeout=timeout_ms,
        )
        from playwright.sync_api import Error

        with contextlib.suppress(Error):  # decode() rejects for a broken image: measured as it is
            image.evaluate("img => img.decode()")
        return Shown(**image.evaluate(_MEASURE))

    def shown_frame(self, data_uri: str, timeout_ms: float = 15_000) -> Frame:
        """The frame of the right pane's ``<iframe>`` once it shows ``data_uri``, loaded."""
        self.page.wait_for_function(
            "([pane, src]) => { const f = document.querySelector(pane + ' iframe'); return f && f.src === src; }",
            arg=[PANE, data_uri],
            timeout=timeout_ms,
        )
        handle = self.page.locator(f"{PANE} iframe").element_handle()
        frame = handle.content_frame() if handle else None
        assert frame is not None, "the report's iframe has no frame"
        frame.wait_for_load_state("load")
        return frame

    def landing_pane(self) -> dict[str, Any]:
        """The right pane of the page as opened: how much of the workflow description lies above
        its scrollable area (cut off: the pane centres its content vertically)."""
        return self.page.evaluate(
            """pane => { const el = document.querySelector(pane); el.scrollTop = 0;
                const box = el.firstElementChild.getBoundingClientRect(), at = el.getBoundingClientRect();
                return {cut_off_top: Math.max(0, at.top - box.top), height: box.height,
                        pane_height: el.clientHeight, text: el.innerText.slice(0, 200)}; }""",
            PANE,
        )

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=path, full_page=True)
        return path


def table_rows(frame: Frame, selector: str = "table") -> list[list[str]]:
    """The data rows (rows with ``<td>`` cells) of the first table matching ``selector`` in a frame."""
    return frame.locator(selector).first.evaluate(
        "t => [...t.rows].filter(r => r.querySelector('td')).map(r => [...r.cells].map(c => c.innerText.trim()))"
    )
