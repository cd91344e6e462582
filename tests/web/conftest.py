"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
server process. Screenshots go to the test's tmp dir and to ``screenshots/`` (git-ignored)."""

from __future__ import annotations

import re
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support import Server

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"


def admin_password(server: Server) -> str:
    """Printed once, at the data dir's first start (``corral serve``)."""
    found = re.search(r"admin password:\s+(\S+)", server.log())
    assert found, "the first start printed no admin password"
    return found.group(1)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
    try:
        yield context.new_page()
    finally:
        context.close()


class Shots:
    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        SCREENSHOTS.mkdir(exist_ok=True)

    def __call__(self, name: str) -> None:
        path = self.directory / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SCREENSHOTS / path.name)


@pytest.fixture
def shots(page: Page, tmp_path: Path) -> Shots:
    return Shots(page, tmp_path / "screenshots")


def sign_in(page: Page, server: Server, path: str | None = None) -> None:
    """Fill the sign-in form (of ``path``, or of the page shown)."""
    if path is not None:
        page.goto(server.url + path)
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", admin_password(server))
    page.click("button[type=submit]")


class Client:
    """A signed-in HTTP client of the dashboard (no browser): forms as a browser posts them."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = requests.Session()
        # Its pooled TLS connections are closed when the client goes, not left to the GC.
        weakref.finalize(self, self.http.close)
        form = self.get("/signin")
        self.post(
            "/signin",
            {
                "csrf": csrf(form.text),
                "username": "admin",
                "password": admin_password(server),
                "next": "/",
            },
        )
        self.csrf = csrf(self.get("/tokens").text)

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.server.url + path, verify=str(self.server.ca), timeout=30)

    def post(self, path: str, data: dict[str, str]) -> requests.Response:
        return self.http.post(
            self.server.url + path,
            data=data,
            verify=str(self.server.ca),  # per call: a Session's verify loses to REQUESTS_CA_BUNDLE
            timeout=30,
            allow_redirects=False,
        )


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)
