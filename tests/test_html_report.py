"""The study's HTML page: ``python -m diagnostics.report RUNS --html OUT``, checked as a file (self-
contained, every figure inline, links that resolve, the same bytes on a rerun) and in a real headless Chromium
(loads without console errors, every figure in the rendered DOM, a screenshot that is not blank).

    python3 -m pytest tests/test_html_report.py     # the browser test skips where no chromium is installed
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import records_factory as factory
from plots.registry import FIGURES

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


class Page(HTMLParser):
    """What a page holds: links, sources, figures and the SVGs inside them."""

    def __init__(self) -> None:
        super().__init__()
        self.links, self.sources, self.figures, self.svgs_in = [], [], [], {}
        self._figure = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.links.append(attrs.get("href", ""))
        if "src" in attrs or (tag == "link" and "href" in attrs):
            self.sources.append(attrs.get("src") or attrs.get("href"))
        if tag == "figure":
            self._figure = attrs.get("id", "")
            self.figures.append(self._figure)
        if tag == "svg" and self._figure:
            self.svgs_in[self._figure] = self.svgs_in.get(self._figure, 0) + 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    factory.example_runs(folder / "records")
    out = folder / "site" / "report.html"  # a folder that does not exist yet
    done = subprocess.run([sys.executable, "-m", "diagnostics.report", str(folder / "records"), "--early",
                           "--html", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_page_is_self_contained_with_every_figure_and_working_links(page):
    text = page.read_text()
    parsed = Page()
    parsed.feed(text)
    assert parsed.figures == [f"figure-{name}" for name in FIGURES]  # the example records allow every figure
    assert all(parsed.svgs_in.get(f) == 1 for f in parsed.figures)
    assert parsed.sources == []  # nothing is fetched: the only URLs are the SVGs' namespace names
    assert {attribute.split(":")[0] for attribute in re.findall(r'([\w:]+)="https?://', text)} == {"xmlns"}
    records = [link for link in parsed.links if link.endswith(".h5")]
    assert len(records) == 24 and all((page.parent / link).is_file() for link in records)
    assert "failed" in text and "succeeded" in text and "precision" in text


@pytest.mark.slow
def test_rerun_gives_the_same_page_and_needs_overwrite(page):
    before = page.read_bytes()
    runs = page.parent.parent / "records"
    refused = subprocess.run([sys.executable, "-m", "diagnostics.report", str(runs), "--early", "--html", str(page)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr and refused.stderr.count("\n") == 1
    again = subprocess.run([sys.executable, "-m", "diagnostics.report", str(runs), "--early", "--html", str(page),
                            "--overwrite"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert page.read_bytes() == before


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no headless browser: apt-get install chromium (Debian) to run it")
def test_page_in_headless_chromium(page, tmp_path):
    def chromium(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args,
                               page.as_uri()], capture_output=True, text=True, timeout=180)

    dom = chromium("--enable-logging=stderr", "--v=0", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr, dom.stderr  # no script error, no failed load reported by the page
    rendered = Page()
    rendered.feed(dom.stdout)
    assert rendered.figures == [f"figure-{name}" for name in FIGURES]
    assert all(rendered.svgs_in.get(f) == 1 for f in rendered.figures)
    shot = tmp_path / "report.png"
    done = chromium("--window-size=1100,4000", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.1  # not a blank page
    failed_rows = np.all(np.abs(pixels - np.array([0xFB, 0xE9, 0xE7]) / 255) < 0.01, axis=-1)
    assert failed_rows.sum() > 1000  # the failed runs' rows are shaded
    vermillion = np.all(np.abs(pixels - np.array([0xD5, 0x5E, 0x00]) / 255) < 0.05, axis=-1)
    assert vermillion.sum() > 200  # the gradients figure's head line and the failed runs are drawn
