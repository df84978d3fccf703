"""report.html in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
loads it from disk with the network cut off, every image decodes, the metric tables have their
rows, and the page logs no errors."""

import contextlib
import shutil
from pathlib import Path

import pytest
from test_recipe import TINY

from latentforge.cli import main


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "this test needs Debian's chromium: `apt-get install chromium` (.ci/run installs it)"
    return path


@contextlib.contextmanager
def report_page(html: Path):
    """A loaded page of `html` in headless Chromium with the network cut off (a CDN would fail
    here), and the lists its listeners fill: problems (console errors and warnings, page errors,
    failed requests) and every URL requested."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        problems, requests = [], []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
        page.on("request", lambda r: requests.append(r.url))
        page.route("http*://**", lambda route: route.abort())
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        try:
            yield page, problems, requests
        finally:
            browser.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory, shapes_probe):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", "configs/shapes_sg2im.yaml", "--no-progress", f"out_dir={out}", "name=tiny", *TINY]) == 0
    assert main(["eval", str(out / "tiny"), "--n", "40", "--no-progress"]) == 0
    return out / "tiny" / "report.html"


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report):
    with report_page(report) as (page, problems, requests):
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
        metric_rows = page.eval_on_selector_all("tr[id^=metric-]", "els => els.map(e => e.id)")
        dist_rows = page.eval_on_selector_all("tr[id^=dist-]", "els => els.map(e => e.id)")
        headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
    assert [alt for alt, *_ in images] == ["samples", "real", "reconstructions", "training curves"]
    assert all(complete and width > 0 for _, complete, width in images), images
    for row in ("metric-tokenizer-psnr", "metric-tokenizer-ssim", "metric-tokenizer-codebook_usage",
                "metric-generator-scene_exact", "metric-generator-count_acc", "metric-generator-samples_per_s"):
        assert row in metric_rows
    assert {"dist-fid", "dist-kid", "dist-precision", "dist-recall"} <= set(dist_rows)
    assert headings[:3] == ["Metrics", "Sample quality", "Samples"]
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert problems == []
