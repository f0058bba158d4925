"""Open the example dataset's report in headless Chromium: images load, links resolve, no errors.

Chromium comes from ``scripts/ci/install_chromium.sh`` (Debian ``chromium``); without it the
test is skipped. A check script is injected into a *copy* of the report (next to it, so the
relative links still work): after the load event it writes into ``document.title`` how many
images there are, which did not load, which ``#anchors`` have no target and every error seen
(failed resources and ``console.error``). ``--dump-dom`` then prints the page with that title.
A screenshot of the real report is saved (set ``BIDS_DENOISE_SCREENSHOT`` to keep a copy).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.reports.test_html import check_links
from tests.system.test_reports_example import build_example_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")
CHECK_SCRIPT = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__errors.push(t && t !== window ? "failed to load " + (t.src || t.href) : "error: " + e.message);
}, true);
var __consoleError = console.error;
console.error = function () {
  window.__errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
  __consoleError.apply(console, arguments);
};
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.getAttribute("src"); });
  var anchors = Array.prototype.slice.call(document.querySelectorAll('a[href^="#"]'))
                     .map(function (a) { return a.getAttribute("href").slice(1); })
                     .filter(function (id) { return !document.getElementById(id); });
  document.title = "CHECK " + JSON.stringify({images: images.length, broken: broken, anchors: anchors,
                                              errors: window.__errors,
                                              height: document.documentElement.scrollHeight});
});
</script>"""

if CHROMIUM is None:
    pytestmark.append(pytest.mark.skip(reason="chromium is not installed (scripts/ci/install_chromium.sh)"))


def _chromium(*args, timeout=120):
    with tempfile.TemporaryDirectory(prefix="bids_denoise-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def browser_check(report: Path) -> dict:
    """Load a copy of ``report`` with :data:`CHECK_SCRIPT` and return what the script found."""
    copy = report.with_name(report.stem + ".browsercheck.html")
    copy.write_text(report.read_text(encoding="utf-8").replace("<head>", "<head>" + CHECK_SCRIPT, 1),
                    encoding="utf-8")
    try:
        result = _chromium("--virtual-time-budget=15000", "--dump-dom", copy.as_uri())
    finally:
        copy.unlink()
    match = re.search(r"<title>CHECK (.*?)</title>", result.stdout, re.S)
    assert match, f"the check did not run:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    found = json.loads(match.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    found["stderr"] = result.stderr
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = build_example_report(tmp_path_factory.mktemp("browser"))
    return out / "sub-02.html"


def test_the_harness_sees_a_broken_image(tmp_path):
    page = tmp_path / "sub-99.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body><a href="#nowhere">a</a>'
                    '<img src="missing.png" alt="m"></body></html>')
    found = browser_check(page)
    assert found["broken"] == ["missing.png"] and found["anchors"] == ["nowhere"]
    assert any("missing.png" in error for error in found["errors"])


def test_report_renders_in_chromium(report, tmp_path):
    check_links(report)  # every href/src resolves on disk, every #anchor exists
    found = browser_check(report)
    assert found["images"] == 8, found  # the multishell run: brain mask, b0 and all-DWI mosaics, FA, four plots
    assert found["broken"] == [] and found["anchors"] == [] and found["errors"] == [], found
    assert "Uncaught" not in found["stderr"]

    screenshot = tmp_path / "sub-02.png"
    height = max(800, min(int(found["height"]), 12000))
    result = _chromium(f"--screenshot={screenshot}", f"--window-size=1280,{height}", report.as_uri())
    assert screenshot.is_file(), result.stderr[-2000:]
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.shape == (height, 1280)
    assert pixels[:30].mean() < 128  # the dark navigation bar
    assert len(np.unique(pixels[:3000])) > 50  # text and figures, not a blank page
    keep = os.environ.get("BIDS_DENOISE_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
