"""The app client (``bucketbrush.client.Studio``) and the CLI built on it, against the real stack."""

from __future__ import annotations

import hashlib
import io
import json
import time

import pytest
import urllib3

from bucketbrush.cli import main
from bucketbrush.client import Studio, post_upload, raise_for_status
from bucketbrush.errors import (
    EmptyInput,
    InvalidImage,
    InvalidState,
    JobCancelled,
    JobError,
    UnknownRecipe,
    WaitTimedOut,
    error_for_code,
)
from bucketbrush.manifest import ErrorInfo, Manifest, Progress
from bucketbrush.progress import ByteProgress, JobProgress
from tests.helpers import png_bytes

# -- no servers --------------------------------------------------------------------------------


def test_error_codes_map_back_to_their_classes():
    assert type(error_for_code("invalid_image", "x")) is InvalidImage
    assert type(error_for_code("unknown_recipe", "x")) is UnknownRecipe
    assert type(error_for_code("cancelled", "x")) is JobCancelled
    other = error_for_code("something_new", "x")
    assert type(other) is JobError and other.code == "something_new"


def test_raise_for_status():
    failed = Manifest(job_id="j", status="failed", recipe="filter",
                      error=ErrorInfo(code="invalid_image", message="not an image"))
    with pytest.raises(InvalidImage, match="job j failed: not an image"):
        raise_for_status(failed)
    with pytest.raises(InvalidState, match="running"):
        raise_for_status(Manifest(job_id="j", status="running", recipe="filter"))
    ok = Manifest(job_id="j", status="succeeded", recipe="filter")
    assert raise_for_status(ok) is ok


def test_progress_is_plain_lines_without_a_terminal_and_a_bar_with_one():
    plain = io.StringIO()
    show = JobProgress("abc", plain)
    for status, step in (("queued", 0), ("running", 1), ("running", 2), ("running", 5), ("succeeded", 10)):
        show(Manifest(job_id="abc", status=status, recipe="filter", progress=Progress(step=step, total=10,
                                                                                      fraction=step / 10)))
    assert plain.getvalue().splitlines() == [
        "  queued        0%", "  running      10%", "  running      20%", "  running      50%", "  succeeded   100%"]
    assert "\r" not in plain.getvalue()
    bar = io.StringIO()
    with JobProgress("abc", bar, tty=True) as show:
        show(Manifest(job_id="abc", status="running", recipe="filter", progress=Progress(step=1, total=2,
                                                                                         fraction=0.5)))
    assert "job abc running" in bar.getvalue() and "50%" in bar.getvalue() and "\r" in bar.getvalue()
    lines = io.StringIO()
    download = ByteProgress("job abc", lines)
    for done in (10, 50, 100):
        download(done, 100)
    assert lines.getvalue().splitlines() == ["  job abc: 10 of 100 bytes", "  job abc: 50 of 100 bytes",
                                             "  job abc: 100 of 100 bytes"]


def test_the_bar_shows_on_a_terminal_that_reports_no_size(monkeypatch):
    """A pty without a window size (e.g. `script` run from a pipe) says 0x0: tqdm alone
    would draw nothing there."""
    import os
    import pty

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    master, slave = pty.openpty()
    with open(slave, "w", closefd=True) as stream:
        monkeypatch.setattr("sys.stderr", stream)  # tqdm sizes only sys.stderr / sys.stdout
        assert stream.isatty() and os.get_terminal_size(slave).columns == 0
        with JobProgress("abc") as show:
            show(Manifest(job_id="abc", status="running", recipe="filter",
                          progress=Progress(step=3, total=4, fraction=0.75)))
    # Read to the end (EIO once the closed slave's data is drained): the kernel hands pty output
    # over asynchronously, so a single read may see only its first part on a busy machine.
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    written = b"".join(chunks).decode()
    assert "job abc running" in written and "75%" in written


# -- against the stack ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def studio(settings) -> Studio:
    return Studio.from_settings(settings)


def test_submit_wait_outputs_download(studio, tmp_path):
    job = studio.submit(png_bytes(), "filter", filename="scene.png", style="sepia")
    seen = []
    manifest = job.wait(timeout=60, on_progress=lambda m: seen.append(m.status))
    assert manifest.status == "succeeded" and seen[-1] == "succeeded"
    [out] = job.outputs()
    assert out.key.endswith("sepia.png") and job.url(out).startswith("http")
    progress = []
    [path] = job.download(tmp_path, on_progress=lambda done, total: progress.append((done, total)))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == out.sha256
    assert progress[-1] == (out.bytes, out.bytes)
    assert studio.job(job.job_id).manifest.status == "succeeded"


def test_failed_and_cancelled_jobs_raise_their_typed_errors(studio, tmp_path):
    bad = studio.submit(b"not an image", "filter", filename="bad.png")
    assert bad.wait(timeout=60).error.code == "invalid_image"
    with pytest.raises(InvalidImage):
        bad.download(tmp_path)
    with pytest.raises(EmptyInput):
        studio.submit(b"", "filter")
    slow = studio.submit(png_bytes(), "test-slow", seconds=30, steps=600)
    with pytest.raises(WaitTimedOut):
        slow.wait(timeout=0)

    asked = []

    def cancel_once_running(m: Manifest) -> None:
        # Once: a second cancel could meet the job already cancelled (InvalidState).
        if m.status == "running" and m.progress.step > 0 and not asked:
            asked.append(slow.cancel())

    assert slow.wait(timeout=60, on_progress=cancel_once_running).status == "cancelled"
    with pytest.raises(JobCancelled):
        slow.outputs()
    with pytest.raises(InvalidState, match="already cancelled"):
        slow.cancel()


def test_cli_submit_and_download_print_plain_progress_without_a_terminal(settings, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BUCKETBRUSH_S3_ENDPOINT_URL", settings.s3_endpoint_url)
    monkeypatch.setenv("BUCKETBRUSH_BUCKET", settings.bucket)
    monkeypatch.setenv("BUCKETBRUSH_S3_ACCESS_KEY", settings.s3_access_key)
    monkeypatch.setenv("BUCKETBRUSH_S3_SECRET_KEY", settings.s3_secret_key.get_secret_value())
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes())
    assert main(["submit", str(image), "--recipe", "filter", "--param", "style=noir"]) == 0
    out, err = capsys.readouterr()
    assert "  succeeded   100%" in err.splitlines() and "\r" not in err
    job_id = out.split()[1].rstrip(":")  # "job <id>: succeeded (...)"
    assert main(["jobs", "download", job_id, "--dest", str(tmp_path / "dl")]) == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith("noir.png") and " of " in err and "bytes" in err


def test_presign_reply_carries_a_manifest_url_a_browser_can_poll(studio):
    upload = studio.presign("filter", filename="m.png", params={"style": "hdr"})
    post_upload(upload, png_bytes(), "m.png", "image/png")
    deadline = time.monotonic() + 60
    while (answer := urllib3.request("GET", upload.manifest_url, retries=False)).status == 404:
        assert time.monotonic() < deadline, "no manifest after 60 s"
        time.sleep(0.1)
    assert answer.status == 200 and answer.headers["Cache-Control"] == "no-store"
    assert json.loads(answer.data)["job_id"] == upload.job_id
