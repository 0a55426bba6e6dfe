"""What the browser tests share: the API as its own process, headless chromium through
chromium-driver and Selenium, and small waits (the fixtures are in this folder's conftest)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO, require
from tests.integration.api.conftest import TOKENS, TRUSTED_TOKEN
from tests.integration.redis_server import free_port
from tests.integration.service.conftest import Service, wait_for_api

SCREENSHOTS = REPO / ".ci" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


class ApiProcess:
    """``python -m api`` as its own process on a free loopback port."""

    def __init__(self, service: Service) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**service.env(), "SANDPIT_API_TOKENS": TOKENS}
        self.log = open(service.tmp / "api.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(self.port), "--log-level", "warning"],
                                     env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_api(self.base, self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def submit(self, pipeline: str, **fields: Any) -> str:
        response = httpx.post(f"{self.base}/api/v1/runs", json={"pipeline": pipeline, **fields},
                              headers={"Authorization": f"Bearer {TRUSTED_TOKEN}"}, timeout=30)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


def started_api(service: Service) -> Iterator[ApiProcess]:
    service.start_worker(concurrency=2)
    process = ApiProcess(service)
    try:
        yield process
    finally:
        process.stop()


def headless_chromium(tmp_path: Path) -> Iterator[Any]:
    require(shutil.which("chromium") is not None and Path(DRIVER).exists(),
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    # the driver path is given, so Selenium Manager never looks for (or downloads) a driver
    driver = webdriver.Chrome(service=DriverService(DRIVER), options=options)
    driver.downloads = downloads
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # an element not there yet, or replaced under us
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def log_in(driver: Any, base: str, token: str) -> None:
    """Open the runs list, be sent to the login form, log in with ``token``."""
    driver.get(f"{base}/ui/runs")
    wait_for(lambda: "/ui/login" in driver.current_url, what="the login redirect")
    css(driver, "#token")[0].send_keys(token)
    css(driver, "#token-login button[type=submit]")[0].click()
    wait_for(lambda: driver.current_url.endswith("/ui/runs"), what="the runs list after login")
