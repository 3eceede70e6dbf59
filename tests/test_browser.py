"""The report of `learnpos inspect` in a real browser: headless Chromium (Debian's `chromium`,
driven by playwright) opens report.html from disk, every image decodes (naturalWidth > 0), the
page logs no console error, and a screenshot is saved. Skipped, with the reason, only where
Chromium or playwright is absent on a developer's machine; under CI (CI=1, as `.ci/run` sets)
their absence is a failure."""

from __future__ import annotations

import os
import shutil

import pytest

from learnpos.config import load_config
from learnpos.inspection import inspect_run
from learnpos.train import train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

MISSING = ("Debian's chromium is not installed (apt-get install chromium)" if not CHROMIUM else
           "playwright is not installed (pip install -e '.[test]')" if sync_playwright is None else "")


@pytest.fixture
def browser():
    if MISSING:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run in CI: {MISSING}")
        pytest.skip(MISSING)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_report_opens_offline_with_every_image_and_no_console_error(tmp_path, browser):
    cfg = load_config("demo", {"train.out_dir": str(tmp_path / "run"), "train.max_iters": "12",
                               "train.eval_interval": "6", "train.log_interval": "3", "train.warmup_iters": "0",
                               "train.position_stats": "true", "model.n_embd": "32", "model.n_layer": "1"})
    train(cfg, quiet=True)
    report = inspect_run(tmp_path / "run")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.as_uri(), wait_until="load")
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 7 and min(widths) > 0, widths
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # offline: nothing fetched
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
