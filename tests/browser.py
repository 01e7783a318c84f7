"""The system Chromium for the studio page's tests and bench, driven by Playwright for Python.

Never ``playwright install`` (it downloads a browser): the browser is the one at
``BUCKETBRUSH_TEST_BROWSER``, else ``chromium`` on PATH (``make test`` installs Debian's
``chromium`` when it can: as root with apt-get).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def browser_path() -> str:
    path = os.environ.get("BUCKETBRUSH_TEST_BROWSER") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("no browser for the studio page tests: `apt-get install -y chromium` (make test does it "
                           "as root), or set BUCKETBRUSH_TEST_BROWSER to a Chromium or Chrome executable")
    return path


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=browser_path(), args=ARGS)
