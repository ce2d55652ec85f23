"""Finding and launching the chromium that the browser tests drive (Debian's, found on PATH).

A machine without chromium skips the browser tests with a reason that says how to install it;
with ``EMBPROJ_REQUIRE_BROWSER=1`` (set by CI) a missing browser is a test failure instead, so
the browser tests can never be skipped silently where they are meant to run.

Example:
    >>> with launch_chromium() as browser:          # doctest: +SKIP
    ...     page = browser.new_page()
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import pytest

REQUIRE_ENV = "EMBPROJ_REQUIRE_BROWSER"
INSTALL_HINT = "apt-get install chromium"
SKIPPED = "browser test skipped:"
NAMES = ("chromium", "chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium() -> str | None:
    """The chromium executable on PATH, or None."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when EMBPROJ_REQUIRE_BROWSER=1."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"browser test failed: {reason}, and {REQUIRE_ENV}=1 says the browser tests "
                    "must run here", pytrace=False)
    pytest.skip(f"{SKIPPED} {reason}")


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """A playwright Browser on the PATH's chromium; skips or fails (see ``missing``) without one."""
    path = find_chromium()
    if path is None:
        missing(f"chromium not found on PATH (install it: {INSTALL_HINT})")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the `playwright` package is missing (pip install -e '.[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
