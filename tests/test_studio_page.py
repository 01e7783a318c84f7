"""The studio page in a real browser (system Chromium through Playwright) against the real stack.

The page is served by the functions app in a real uvicorn server; it uploads straight to
SeaweedFS with the presigned POST, the filer event source makes the job, the runner runs it,
and the page follows the manifest through its presigned GET. Screenshots go to
``test-artifacts/studio/`` (gitignored).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright
from pydantic import SecretStr

from bucketbrush import gallery
from bucketbrush.cli import main
from functions.http import create_app
from gpu_runner.recipes import catalog
from gpu_runner.video_samples import sample_clip
from tests.browser import launch
from tests.test_http import running

pytestmark = pytest.mark.e2e

TOKEN = "studio-tok-5b2e9c0d71f4"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "studio"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def server(settings) -> Iterator[str]:
    # The page published into the bucket (test_published_page) calls this host from the store's origin.
    app_settings = settings.model_copy(update={"functions_token": SecretStr(TOKEN),
                                               "studio_origins": [settings.s3_endpoint_url.rstrip("/")]})
    with running(create_app(app_settings, recipes=catalog(testing=True))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, server) -> Iterator[Page]:
    """One page for the module, token given through the page's own dialog."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "/")
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible(timeout=WAIT_MS)  # the gallery answered 401: the page asks
    page.get_by_role("textbox", name="Token").fill(TOKEN)
    page.get_by_role("button", name="Save").click()
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photo (scikit-image's Chelsea the cat, 451x300), as a JPEG."""
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=90)
    return path


def start_job(page: Page, file: Path, recipe: str, **fields: str) -> str:
    previous = page.locator("#job-id").inner_text()
    page.get_by_label("Recipe", exact=True).select_option(recipe)
    if fields:
        details = page.locator("#params-box")
        if details.get_attribute("open") is None:
            page.get_by_text("Settings", exact=True).click()
        for name, value in fields.items():
            field = page.locator(f"#param-{name}")
            if field.evaluate("e => e.tagName") == "SELECT":
                field.select_option(value)
            else:
                field.fill(value)
    page.locator("#file").set_input_files(str(file))
    page.get_by_role("button", name="Start").click()
    job_id = page.locator("#job-id")
    expect(job_id).not_to_have_text(re.compile(f"^{previous}$"), timeout=WAIT_MS)
    return job_id.inner_text()


def test_recipes_are_json_schemas(server):
    recipes = {r["name"]: r for r in httpx.get(server + "/recipes").json()["recipes"]}
    style = recipes["filter"]["schema"]["properties"]["style"]
    assert style["enum"][:2] == ["sketch", "sepia"] and style["default"] == "sketch"
    assert recipes["filter"]["schema"]["properties"]["intensity"]["maximum"] == 1.0
    assert recipes["test-slow"]["needs_input"] and not recipes["txt2img"]["needs_input"]
    assert recipes["video"]["accept"] == "video/*,image/gif" and recipes["filter"]["accept"] == "image/*"
    assert httpx.get(server + "/studio/jobs").status_code == 401  # the API keeps the token


def test_cors_preflight_against_seaweedfs(server, settings):
    up = httpx.post(server + "/presign", headers={"Authorization": f"Bearer {TOKEN}"},
                    json={"recipe": "filter", "filename": "a.png"}).json()
    for url, method in ((up["url"], "POST"), (up["manifest_url"], "GET")):
        answer = httpx.options(url, headers={"Origin": server, "Access-Control-Request-Method": method,
                                             "Access-Control-Request-Headers": "content-type"})
        assert answer.status_code in (200, 204), answer.text
        assert answer.headers["access-control-allow-origin"] in ("*", server)
        assert answer.headers["access-control-allow-methods"] in ("*", "GET, HEAD, POST, PUT")
    # The object path answers with the rule `infra apply` set (its exposed headers), not a default.
    assert answer.headers["access-control-expose-headers"] == "ETag, x-amz-version-id"


def test_upload_a_photo_and_see_the_output(page, photo, bucket):
    page.locator("#recipe").focus()
    page.keyboard.press("Tab")  # keyboard: from the recipe to the image chooser
    assert page.evaluate("document.activeElement.id") == "file"
    job_id = start_job(page, photo, "filter", style="watercolor")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT_MS)
    manifest = bucket.read_manifest(job_id)
    assert manifest.status == "succeeded" and manifest.params["style"] == "watercolor"
    out = page.locator("#job-outputs img")
    expect(out).to_have_count(1)
    out.evaluate("img => img.decode()")
    assert out.evaluate("img => img.naturalWidth") == manifest.outputs[0].width == 451
    expect(page.locator(f'#gallery li[data-job-id="{job_id}"] img')).to_be_visible(timeout=WAIT_MS)
    page.screenshot(path=ARTIFACTS / "succeeded.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.screenshot(path=ARTIFACTS / "succeeded-phone.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    page.set_viewport_size({"width": 1280, "height": 900})


def test_a_corrupt_file_shows_its_error_code(page, tmp_path, bucket):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    job_id = start_job(page, broken, "filter")
    expect(page.locator("#job-status")).to_have_text("failed", timeout=WAIT_MS)
    expect(page.locator("#job-error-code")).to_have_text("invalid_image")
    assert bucket.read_manifest(job_id).error.code == "invalid_image"
    page.screenshot(path=ARTIFACTS / "failed.png", full_page=True)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 1 s H.264 + AAC clip, 96x64 at 12 fps (a panning scene and a moving ball)."""
    path = tmp_path_factory.mktemp("clips") / "pan.mp4"
    path.write_bytes(sample_clip(1.0, fps=12, size=(96, 64)))
    return path


def test_upload_a_clip_and_play_the_output(page, clip, bucket):
    page.locator("#file").set_input_files([])
    page.get_by_label("Recipe", exact=True).select_option("video")
    assert page.locator("#file").get_attribute("accept") == "video/*,image/gif"
    expect(page.locator("#drop-noun")).to_have_text("a video")
    page.locator("#file").set_input_files(str(clip))
    preview = page.locator("#preview-video")
    expect(preview).to_be_visible()  # the chosen clip plays in the drop box
    page.wait_for_function("() => document.getElementById('preview-video').readyState >= 2", timeout=WAIT_MS)
    assert not page.locator("#form-error").is_visible()
    job_id = start_job(page, clip, "video", style="sepia")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT_MS)
    manifest = bucket.read_manifest(job_id)
    assert [o.content_type for o in manifest.outputs] == ["video/mp4", "image/png"]
    video = page.locator("#job-outputs video")
    expect(video).to_have_count(1)
    assert video.get_attribute("controls") is not None
    # Playable: the browser fetched the MP4 through its presigned GET and decoded a frame.
    page.wait_for_function("() => document.querySelector('#job-outputs video').readyState >= 2", timeout=WAIT_MS)
    shown = video.evaluate("v => ({duration: v.duration, width: v.videoWidth, height: v.videoHeight, "
                           "src: v.currentSrc, poster: v.poster})")
    assert abs(shown["duration"] - 1.0) < 0.2 and (shown["width"], shown["height"]) == (96, 64), shown
    assert f"/outputs/{job_id}/video.mp4" in shown["src"] and f"/outputs/{job_id}/poster.png" in shown["poster"]
    links = page.locator("#job-outputs figcaption a")
    assert [links.nth(i).get_attribute("download") for i in range(2)] == ["video.mp4", "poster.png"]
    assert links.nth(0).get_attribute("href") == shown["src"]
    assert httpx.get(shown["src"]).content[4:8] == b"ftyp"  # the link serves the MP4 itself
    expect(page.locator("#job-outputs img")).to_have_count(1)  # the poster
    expect(page.locator(f'#gallery li[data-job-id="{job_id}"] img')).to_be_visible(timeout=WAIT_MS)
    page.screenshot(path=ARTIFACTS / "video.png", full_page=True)


def test_a_non_video_file_is_refused_for_the_video_recipe(page, clip, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n")
    presigns: list[str] = []

    def seen(request) -> None:
        if request.url.endswith("/presign"):
            presigns.append(request.url)

    page.on("request", seen)
    previous = page.locator("#job-id").inner_text()
    page.get_by_label("Recipe", exact=True).select_option("video")
    page.locator("#file").set_input_files(str(notes))
    error = page.locator("#form-error")
    expect(error).to_have_text("The video recipe takes a video (MP4, MOV, WebM, MKV, AVI) or a GIF; "
                               "“notes.txt” is text/plain.")
    page.get_by_role("button", name="Start").click()
    expect(error).to_contain_text("The video recipe takes a video")
    # Switching to an image recipe keeps the rule: a clip is refused for `filter`, by the accept list too.
    page.get_by_label("Recipe", exact=True).select_option("filter")
    assert page.locator("#file").get_attribute("accept") == "image/*"
    page.locator("#file").set_input_files(str(clip))
    expect(error).to_have_text("The filter recipe takes an image; “pan.mp4” is video/mp4.")
    page.get_by_role("button", name="Start").click()
    expect(error).to_be_visible()
    page.screenshot(path=ARTIFACTS / "refused.png", full_page=True)
    # Nothing was asked of the host: no presign request left the page, the job card did not change.
    page.remove_listener("request", seen)
    assert presigns == [] and page.locator("#job-id").inner_text() == previous
    page.locator("#file").set_input_files([])
    expect(error).to_be_hidden()
    expect(page.locator("#drop-noun")).to_have_text("an image")


def test_cancel_a_slow_job(page, photo, bucket):
    job_id = start_job(page, photo, "test-slow", seconds="60", steps="600")
    # Live progress: the status shows a running percentage above zero before the cancel.
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^running — [1-9]\d?%$"), timeout=WAIT_MS)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=WAIT_MS)
    expect(page.locator("#job-error-code")).to_have_text("cancelled")
    manifest = bucket.read_manifest(job_id)
    assert manifest.status == "cancelled" and manifest.outputs == [] and manifest.progress.step < 600
    page.screenshot(path=ARTIFACTS / "cancelled.png", full_page=True)


def test_soft_delete_and_restore_from_the_gallery(page, photo, bucket):
    gallery.enable_versioning(bucket)
    job_id = start_job(page, photo, "filter", style="noir")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=WAIT_MS)
    card = page.locator(f'#gallery li[data-job-id="{job_id}"]')
    expect(card).to_be_visible(timeout=WAIT_MS)
    card.get_by_role("button", name=f"Delete job {job_id}").click()
    expect(card).to_have_count(0, timeout=WAIT_MS)
    assert bucket.read_manifest(job_id) is None and job_id in gallery.list_deleted(bucket)
    page.get_by_text("Deleted jobs").click()
    restore = page.get_by_role("button", name=f"Restore job {job_id}")
    expect(restore).to_be_visible(timeout=WAIT_MS)
    page.screenshot(path=ARTIFACTS / "deleted.png", full_page=True)
    restore.click()
    expect(card.locator("img")).to_be_visible(timeout=WAIT_MS)
    restored = bucket.read_manifest(job_id)
    assert restored.status == "succeeded"
    data = bucket.s3.get_object(Bucket=bucket.name, Key=restored.outputs[0].key)["Body"].read()
    assert Image.open(io.BytesIO(data)).size == (451, 300)


def test_publish_uploads_the_page_and_the_api_lets_its_origin_in(server, settings, bucket, capsys, monkeypatch):
    monkeypatch.setenv("BUCKETBRUSH_BUCKET", settings.bucket)  # the stack's endpoint comes from its state file
    assert main(["studio", "publish", "--api", server + "/"]) == 0
    assert "uploaded studio/config.json" in capsys.readouterr().out
    index = bucket.s3.get_object(Bucket=bucket.name, Key="studio/index.html")
    app = bucket.s3.get_object(Bucket=bucket.name, Key="studio/app.js")
    config = bucket.s3.get_object(Bucket=bucket.name, Key="studio/config.json")["Body"].read()
    assert index["ContentType"] == "text/html" and app["ContentType"] == "text/javascript"
    assert b'type="module"' in index["Body"].read() and json.loads(config) == {"api": server}
    # The page, loaded from the store's origin, calls the functions host cross-origin.
    origin = settings.s3_endpoint_url.rstrip("/")
    answer = httpx.options(server + "/studio/jobs", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == origin
    refused = httpx.options(server + "/studio/jobs", headers={
        "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "GET"})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
