"""The status page in a real browser: headless Chromium (selenium, Debian's chromium-driver)
against ``tuf-exporter serve`` probing a simulated repository whose mirror fails.

It asserts what a person sees, with JavaScript turned off: the failing mirror first with its
reason, a runbook link that opens the runbook, the endpoint page's request log, a layout that
fits a phone. Screenshots go to pytest's ``tmp_path`` and, when ``TUF_EXPORTER_SCREENSHOTS``
names a folder, there too. ``./scripts/test`` installs ``chromium`` and ``chromium-driver``;
without them the tests are skipped, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import requests
import yaml
from support import Sim, free_port, poll, serve, stop_process

from exporter.simulator import SNAPSHOT, SimulatedRepository

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run")

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()) and not os.environ.get("CI"):
    pytest.skip("chromium and chromium-driver are not installed (./scripts/test installs "
                "them; in CI these tests fail instead)", allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only once the browser is known to exist
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402


class _Runbooks(SimpleHTTPRequestHandler):
    """Serves docs/runbooks/ on loopback, Markdown as text so the browser shows it."""

    extensions_map: ClassVar[dict[str, str]] = {**SimpleHTTPRequestHandler.extensions_map,
                                                 ".md": "text/plain; charset=utf-8"}

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def runbooks() -> Iterator[str]:
    handler = functools.partial(_Runbooks, directory=str(ROOT / "docs" / "runbooks"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def failing_mirror(tmp_path: Path) -> Iterator[Sim]:
    """A healthy primary (snapshot far from its expiry alert) and a mirror serving an expired
    timestamp."""
    repo = SimulatedRepository(expiry={SNAPSHOT: timedelta(days=30)})
    repo.add_target("files/a.txt", b"hello from a\n")
    for sim in serve(repo, tmp_path):
        sim.server.add_mirror("mirror1")
        sim.server.inject("expired-timestamp", endpoint="mirror1")
        yield sim


@pytest.fixture
def exporter(failing_mirror: Sim, runbooks: str, tmp_path: Path) -> Iterator[str]:
    primary = failing_mirror.server.endpoint_urls("primary")
    mirror = failing_mirror.server.endpoint_urls("mirror1")
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "jitter": 0,
        "repositories": [{
            "name": "sim", "metadata_url": primary[0], "targets_url": primary[1],
            "trusted_root": str(failing_mirror.trusted_root), "interval": "2s", "timeout": "5s",
            "mirrors": [{"name": "mirror1", "metadata_url": mirror[0],
                         "targets_url": mirror[1]}],
        }],
    }))
    options = tmp_path / "alert-options.yml"
    options.write_text(yaml.safe_dump({"runbook_base_url": runbooks}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
         "--alerts.config", str(options), "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        def probed() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            try:
                page = requests.get(url, timeout=2).text
            except requests.ConnectionError:
                return False
            # the endpoints table (the client views' table follows it) has its verdicts,
            # and the failing mirror's view pass ran
            endpoints, _, views = page.partition("<h2>Client views</h2>")
            return (endpoints.count('<tr class="failing">') == 1
                    and '<tr class="ok">' in endpoints and '<tr class="failing">' in views)

        poll(probed, timeout=60, interval=0.2)
        yield url
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="tuf-exporter-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,900")
    # what a person sees without JavaScript: the page must not need it
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    """Save a full-page screenshot under tmp_path (and TUF_EXPORTER_SCREENSHOTS, if set)."""
    width = driver.find_element(By.TAG_NAME, "html").rect["width"]
    height = driver.find_element(By.TAG_NAME, "html").rect["height"]
    original = driver.get_window_size()
    driver.set_window_size(original["width"], max(int(height) + 150, original["height"]))
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    keep = os.environ.get("TUF_EXPORTER_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    driver.set_window_size(original["width"], original["height"])
    assert path.stat().st_size > 10_000 and width > 0
    return path


def _rows(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#endpoints tbody tr")


def test_a_person_sees_the_failing_mirror_first_and_can_follow_it(
    exporter: str, browser: webdriver.Chrome, runbooks: str, tmp_path: Path
) -> None:
    browser.get(exporter)
    assert browser.title == "TUF Exporter"
    rows = _rows(browser)
    assert len(rows) == 2
    first, second = (row.text for row in rows)
    assert first.startswith("FAILING") and "mirror1" in first, first
    assert "expired" in first and "timestamp" in first, first
    assert second.startswith("OK") and "primary" in second, second
    summary = browser.find_element(By.CSS_SELECTOR, ".summary").text
    assert summary == "2 endpoints: 1 failing, 0 warning, 0 not probed yet, 1 ok", summary
    # every client view too (issue 16): the failing mirror fails a new client as well, first
    views = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#views tbody tr")]
    assert views and views[0].startswith("FAILING") and "mirror1" in views[0], views
    assert " new " in f" {views[0]} " and "expired" in views[0], views
    assert any(v.startswith("OK") and "primary" in v for v in views), views
    shot = _screenshot(browser, tmp_path, "status-page")

    # the runbook link of the failure reason opens the runbook
    link = rows[0].find_element(By.CSS_SELECTOR, "a.runbook")
    assert link.text == "runbook"
    assert link.get_attribute("href") == f"{runbooks}tuf-metadata-expired.md"
    link.click()
    poll(lambda: "# TufMetadataExpired" in browser.find_element(By.TAG_NAME, "body").text,
         timeout=10)
    assert "## Mitigation" in browser.find_element(By.TAG_NAME, "body").text
    browser.back()

    # the endpoint page: the last probe's request log, and the endpoint's failures with times
    _rows(browser)[0].find_element(By.LINK_TEXT, "mirror1").click()
    poll(lambda: browser.title == "sim / mirror1", timeout=10)
    last = browser.find_element(By.CSS_SELECTOR, "details.probe[open]")
    assert "expired, role timestamp" in last.find_element(By.TAG_NAME, "summary").text
    log = last.find_element(By.CSS_SELECTOR, "table.requests")
    lines = [row.text for row in log.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert any("/mirror1/" in line and "timestamp.json" in line and " 200 " in f" {line} "
               for line in lines), lines
    heading = next(h.text for h in browser.find_elements(By.TAG_NAME, "h2")
                   if h.text.startswith("Last failures of this endpoint"))
    assert heading != "Last failures of this endpoint (0)", heading
    assert "expired" in browser.find_element(By.CSS_SELECTOR, "pre.message").text
    _screenshot(browser, tmp_path, "endpoint-page")
    assert shot.is_file()


def test_the_page_fits_a_phone(exporter: str, browser: webdriver.Chrome,
                               tmp_path: Path) -> None:
    browser.set_window_size(390, 844)
    browser.get(exporter)
    rows = _rows(browser)
    assert rows[0].text.startswith("FAILING") and "mirror1" in rows[0].text, rows[0].text
    # one card per endpoint, each cell labelled (::before) instead of a header row
    assert not browser.find_element(By.CSS_SELECTOR, "#endpoints thead").is_displayed()
    viewport = browser.find_element(By.TAG_NAME, "body").rect["width"]
    for cell in browser.find_elements(By.CSS_SELECTOR, "#endpoints td"):
        assert cell.rect["x"] >= 0 and cell.rect["x"] + cell.rect["width"] <= viewport + 1
    # nothing to scroll sideways (the page's JavaScript is off; WebDriver's is not)
    assert browser.execute_script(
        "return [...document.querySelectorAll('.scroll')]"
        ".every(e => e.scrollWidth <= e.clientWidth)")
    _screenshot(browser, tmp_path, "status-page-phone")
