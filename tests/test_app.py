"""The web app in a real browser: headless Debian Chromium driven by Playwright.

Skipped, with the reason, where Playwright is missing or no Chromium is there and none can be
installed (installing needs root and apt-get, as the Slurm tests' harness does). Screenshots of
every tab go to $BRIDGESCOPE_SCREENSHOTS (default logs/app_screenshots) for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from src.data.io import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SHOTS = Path(os.environ.get("BRIDGESCOPE_SCREENSHOTS", REPO_ROOT / "logs" / "app_screenshots"))


def ensure_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("no /usr/bin/chromium, and installing it needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=900)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env,
                   timeout=1800)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    ensure_chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield b
        b.close()


def serve(results: Path, perturber=None):
    """Build and start the app in this process on a free port; -> (demo, url, seconds)."""
    from src.app.gallery import build_gallery
    from src.app.live import LivePerturber
    from src.app.ui import build_app

    t0 = time.perf_counter()
    demo = build_app(results, build_gallery(None, n_scenes=2),
                     perturber or LivePerturber(device="cpu"))  # fmt: skip
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/", time.perf_counter() - t0


@pytest.fixture(scope="module")
def app():
    from src.app.live import LivePerturber

    perturber = LivePerturber(device="cpu")
    demo, url, started = serve(REPO_ROOT / "sample" / "results", perturber)
    yield url, perturber, started
    demo.close()


def open_tab(page, title: str) -> None:
    page.get_by_role("tab", name=title).click()
    page.wait_for_timeout(300)


def test_every_tab_shows_its_figures_and_values(browser, app):
    from src.app.tabs import TABS, tab_figures

    url, perturber, started = app
    page = browser.new_page(viewport={"width": 2200, "height": 1000})
    t0 = time.perf_counter()
    page.goto(url)
    page.get_by_role("tab", name=TABS[0].title).wait_for()
    paint = page.evaluate(
        "performance.getEntriesByName('first-contentful-paint').map(e => e.startTime)[0]"
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    timings = {"build_and_launch_s": started, "page_ready_s": time.perf_counter() - t0,
               "first_contentful_paint_ms": paint}  # fmt: skip
    results = REPO_ROOT / "sample" / "results"
    for tab in TABS:
        open_tab(page, tab.title)
        panel = page.get_by_role("tabpanel")
        name = tab.title.replace(" & ", "_and_").replace(" ", "_")
        if not tab.plots:  # a tab of pictures a stage drew: every one of them is shown
            pictures = panel.locator("#pictures img")
            pictures.first.wait_for(timeout=30_000)
            assert pictures.count() == len(list(results.glob(tab.images))) > 0, tab.title
            page.screenshot(path=str(SHOTS / f"tab_{name}.png"), full_page=True)
            continue
        figures = panel.locator("[id^=fig-] img")
        figures.first.wait_for(timeout=30_000)
        first = next(s for s in tab_figures(results, tab) if s.plot is not None).plot
        assert figures.count() >= 1, tab.title
        # the figure's values are in the page: the first number of its table, as pandas has it
        panel.get_by_text("values of this figure").first.click()
        values = panel.locator(f"#values-{first.name}")
        values.wait_for()
        number = next(v for v in first.data.iloc[0] if isinstance(v, float))
        assert str(number) in values.inner_text(), (tab.title, number)
        page.screenshot(path=str(SHOTS / f"tab_{name}.png"), full_page=True)
    assert not perturber.loaded, "opening the page must not load a model"
    (SHOTS / "timings.json").write_text(json.dumps(timings, indent=1))
    page.close()


def test_upload_and_live_perturbation(browser, app, tmp_path):
    from src.app.gallery import _scene

    url, perturber, _ = app
    im, _ = _scene(5)
    path = tmp_path / "my_scene.png"
    im.save(path)
    page = browser.new_page(viewport={"width": 2200, "height": 1100})
    page.goto(url)
    open_tab(page, "Captions & perturbations")
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.locator("#status").get_by_text("uploaded my_scene.png").wait_for(timeout=30_000)
    page.get_by_label("lowrank").check()
    t0 = time.perf_counter()
    page.locator("#run").click()
    page.locator("#status").get_by_text("done").wait_for(timeout=600_000)
    live_s = time.perf_counter() - t0
    shown = page.locator("#caption-perturbed textarea").input_value()
    clean = page.locator("#caption-clean textarea").input_value()
    # what the page shows is what the library gives for the same image, mode, level and key
    expected = perturber.run(im.convert("RGB"), "lowrank", 0.5, "my_scene")
    assert (clean, shown) == (expected.caption, expected.perturbed_caption)
    assert clean.strip()
    scores = page.locator("#scores").inner_text()
    assert "bertscore_f1 perturbed vs unperturbed caption" in scores
    page.screenshot(path=str(SHOTS / "live_perturbation.png"), full_page=True)
    timings = (
        json.loads((SHOTS / "timings.json").read_text())
        if (SHOTS / "timings.json").exists()
        else {}
    )
    (SHOTS / "timings.json").write_text(
        json.dumps({**timings, "live_perturbation_s": live_s}, indent=1)
    )
    page.close()


def test_errors_are_messages_in_the_page(browser, app, tmp_path):
    url, _, _ = app
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    page = browser.new_page(viewport={"width": 2200, "height": 1000})
    page.goto(url)
    open_tab(page, "Captions & perturbations")
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    msg = page.locator("#status").get_by_text("notes.png cannot be used")
    msg.wait_for(timeout=30_000)
    assert "not an image" in msg.inner_text()
    page.screenshot(path=str(SHOTS / "error_upload.png"), full_page=True)
    page.close()


def test_missing_tables_are_named_in_the_page(browser, tmp_path):
    empty = tmp_path / "results"
    empty.mkdir()
    demo, url, _ = serve(empty)
    try:
        page = browser.new_page(viewport={"width": 2200, "height": 1000})
        page.goto(url)
        open_tab(page, "Geometry")
        from src.app.tabs import TABS, tab_figures

        msg = page.get_by_role("tabpanel").locator(".missing").first
        msg.wait_for(timeout=30_000)
        expected = tab_figures(empty, TABS[0])[0].message
        assert expected in msg.inner_text() and "run src.extract.extract_knn" in expected
        page.screenshot(path=str(SHOTS / "error_missing_tables.png"), full_page=True)
        page.close()
    finally:
        demo.close()
