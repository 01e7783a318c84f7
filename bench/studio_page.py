"""The studio page: click Start -> the output image decoded and shown, in a real browser.

A private local stack (SeaweedFS, Redis, filer event source, one runner), the functions app
with the page in a uvicorn server, and the system Chromium through Playwright (see
tests/browser.py). Each run uploads a real photo (scikit-image's Chelsea, 451x300 JPEG) with
the ``filter`` recipe and reads the page's own performance marks: ``submit`` (the click),
``uploaded`` (presign + POST to the store done), ``final`` (the polled manifest is final),
``rendered`` (the output ``<img>`` decoded). Usage: python -m bench.studio_page [--n 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from PIL import Image
from pydantic import SecretStr

from bench.stack import pct, private_stack
from bucketbrush.store import Bucket
from functions.http import create_app
from gpu_runner.recipes import catalog
from tests.browser import launch
from tests.test_http import running

TOKEN = "bench-token"


def main() -> None:
    from playwright.sync_api import expect, sync_playwright
    from skimage import data

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--style", default="sepia")
    args = ap.parse_args()
    photo = Path(tempfile.mkdtemp()) / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(photo, quality=90)
    rows = []
    with private_stack() as stack, sync_playwright() as p:
        settings = stack.settings_for_clients().model_copy(update={"functions_token": SecretStr(TOKEN)})
        bucket = Bucket(settings)
        with running(create_app(settings, recipes=catalog())) as url:
            browser = launch(p)
            page = browser.new_page()
            page.goto(url + "/")
            page.evaluate(f"sessionStorage.setItem('bucketbrush-token', {TOKEN!r})")
            page.reload()
            expect(page.locator("body")).to_have_attribute("data-ready", "true")
            page.locator("#recipe").select_option("filter")
            page.get_by_text("Settings", exact=True).click()
            page.locator("#param-style").select_option(args.style)
            page.locator("#file").set_input_files(str(photo))
            for i in range(args.n + 1):
                page.get_by_role("button", name="Start").click()
                page.wait_for_function("performance.getEntriesByName('rendered').length === 1", timeout=60_000)
                marks = page.evaluate("Object.fromEntries(performance.getEntriesByType('mark')"
                                      ".map(m => [m.name, performance.timeOrigin + m.startTime]))")
                marks = {name: ms / 1000 for name, ms in marks.items()}  # epoch seconds, this machine's clock
                t = bucket.read_manifest(page.locator("#job-id").inner_text()).timings
                if i:  # the first run warms connections and the runner's first import
                    rows.append({k: v * 1000 for k, v in {
                        "upload (presign + POST to the store)": marks["uploaded"] - marks["submit"],
                        "event + handler (upload done -> queued manifest)": t["queued_at"] - marks["uploaded"],
                        "queue wait (-> runner starts)": t["queue_wait_s"],
                        "processing (the recipe)": t["processing_s"],
                        "runner's I/O: S3 round trips, decode, encode (start -> final - processing)":
                            t["finished_at"] - t["started_at"] - t["processing_s"],
                        "final manifest written -> seen by the page (poll)": marks["final"] - t["finished_at"],
                        "final -> output rendered (job view, GET, decode)": marks["rendered"] - marks["final"],
                        "**click -> output rendered**": marks["rendered"] - marks["submit"],
                    }.items()})
            browser.close()
    print(f"### Studio page: click -> rendered output ({args.n} sequential runs, filter/{args.style}, "
          "451x300 JPEG)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"command: `python -m bench.studio_page --n {args.n}`\n")
    print("| stage | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    for name in rows[0]:
        values = [r[name] for r in rows]
        print(f"| {name} | {pct(values, 50):.0f} | {pct(values, 95):.0f} |")


if __name__ == "__main__":
    main()
