"""Real Chromium, driven through Playwright against pytest-django's live server.

Every test in this folder is marked `browser`. The tests use Debian's chromium (or CHROMIUM_PATH);
nothing is ever downloaded, and the folder is skipped only when that binary is missing.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, expect, sync_playwright

from tests.conftest import PASSWORD

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
HERE = Path(__file__).resolve().parent

# A broken page should fail in seconds, not after Playwright's default 30 s.
TIMEOUT_MS = 10_000


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items; mark only the ones collected from this folder.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.browser)


def chromium_available() -> bool:
    return os.path.isfile(CHROMIUM_PATH) or shutil.which(CHROMIUM_PATH) is not None


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """Playwright for this folder only: started before its first test, stopped after its last.

    Playwright's sync API keeps an asyncio event loop running in the main thread for as long as it
    is started. Django sees that loop and refuses ORM calls made from this thread (fixtures, test
    assertions) with SynchronousOnlyOperation, although they are plain blocking calls that never run
    inside the loop; DJANGO_ALLOW_ASYNC_UNSAFE turns that check off, which is safe here because the
    loop only carries Playwright's own messages. Both are scoped to this package, not set at import:
    the variable leaks into subprocesses, and `manage.py check --deploy` (tests/config) warns about it.
    """
    if not chromium_available():
        pytest.skip(f"Chromium not found at {CHROMIUM_PATH}; install it or set CHROMIUM_PATH.")
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            yield p
    finally:
        if previous is None:
            del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(autouse=True)
def csp_violations(browser: Browser, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fails the test when Chromium reports a Content-Security-Policy violation on any page it opened.

    Chromium logs each refused inline script or style (and each refused URL) to the console. Every
    context the test opens, the `page` fixture's and any a test opens itself, reports here.
    """
    violations: list[str] = []
    new_context = browser.new_context

    def new_reporting_context(*args, **kwargs) -> BrowserContext:
        context = new_context(*args, **kwargs)

        def note(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                violations.append(f"{message.page.url if message.page else '?'}: {message.text}")

        context.on("console", note)
        return context

    monkeypatch.setattr(browser, "new_context", new_reporting_context)
    yield violations
    assert not violations, "Content-Security-Policy violations:\n" + "\n".join(violations)


@pytest.fixture
def page(browser: Browser, live_server, csp_violations: list[str]) -> Iterator[Page]:
    """A fresh browser context per test: no cookies or session leak from one test to the next.

    Requesting live_server also makes the test use a transactional database, so the server thread
    sees the test's data and on_commit callbacks (the invitation email) really fire.
    """
    context = browser.new_context(viewport=DESKTOP, base_url=live_server.url)
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG under test-artifacts/screenshots/ for a human to look at."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def login(page: Page, live_server, email: str, password: str = PASSWORD) -> None:
    """Sign in through the real allauth form and wait for the home page."""
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label(re.compile(r"^Password:?$")).fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}/")
