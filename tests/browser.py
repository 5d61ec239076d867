"""Chromium for the tests that look at pages: Debian's `chromium`, driven by Playwright.

Playwright's own browser download cannot be fetched on these machines, so the system browser is
launched by path. The tests never skip: a missing browser fails them, saying how to install it
(.ci/run does: apt-get install chromium).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("RNN_TRAIN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.contextmanager
def chromium():
    """A headless Chromium for the duration of the block."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed ({CHROMIUM} is missing): the page tests need a real browser; "
                    f"install it with `apt-get install -y chromium` (or set RNN_TRAIN_CHROMIUM to its path)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -r requirements.txt")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Opened:
    """A page, and what it did: console messages and page errors, and every request it made."""

    page: object
    errors: list = field(default_factory=list)
    requests: list = field(default_factory=list)


def open_page(browser, url: str, viewport=(1280, 900), block_network: bool = True) -> Opened:
    """Open `url` in a fresh page. With block_network, every request but `url` itself is recorded
    and refused, so a page that tries to fetch anything is caught and never reaches out."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    opened = Opened(page)
    page.on("console", lambda m: opened.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: opened.errors.append(f"page error: {e}"))
    page.on("request", lambda r: opened.requests.append(r.url))
    if block_network:
        page.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
    page.goto(url)
    return opened
