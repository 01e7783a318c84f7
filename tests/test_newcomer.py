"""What a newcomer trips over (issue 17), end to end on the session's real stack: manifest
links for apps, validation before the upload, listing, status and dead letters, messages,
spec names, job identity under versioning."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bucketbrush import deadletters, gallery
from bucketbrush.broker import build_broker
from bucketbrush.cli import main
from bucketbrush.client import post_upload
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.management import list_jobs
from bucketbrush.manifest import RunnerStatus
from bucketbrush.presign import presign_upload
from bucketbrush.samples import landscape
from bucketbrush.store import s3_client
from functions.events import S3Record
from functions.handler import Handler
from gpu_runner.recipes import validate_params
from tests.helpers import drop, png_bytes, wait_final

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli(settings, monkeypatch, capsys):
    """Run ``bucketbrush ARGS`` in process against the session's stack: (exit code, out, err)."""
    monkeypatch.setenv("BUCKETBRUSH_BUCKET", settings.bucket)
    monkeypatch.setenv("BUCKETBRUSH_MAX_UPLOAD_BYTES", str(settings.max_upload_bytes))

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def inbox_keys(bucket) -> set[str]:
    pages = bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix="inbox/")
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def wait_until(check, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} not seen after {timeout}s"
        time.sleep(0.1)
    return result


# -- 1. an app polls its own manifest and downloads its outputs without credentials -----------

def test_app_polls_its_manifest_and_gets_output_links(settings, bucket, cli):
    up = presign_upload(s3_client(settings, public=True), settings, recipe="filter", filename="cat.png",
                        params={"style": "sepia"}, validate=validate_params)
    assert up.manifest_key == f"manifests/{up.job_id}.json"
    # Private: no anonymous read; the presigned GET answers 404 until the manifest exists.
    assert httpx.get(f"{settings.s3_endpoint_url}/{bucket.name}/{up.manifest_key}").status_code in (401, 403)
    assert httpx.get(up.manifest_url).status_code == 404
    post_upload(up, png_bytes(), "cat.png", "image/png")
    manifest = wait_until(lambda: (m := httpx.get(up.manifest_url)).status_code == 200
                          and m.json()["status"] in ("succeeded", "failed") and m.json(), "final manifest")
    assert manifest["status"] == "succeeded", manifest["error"]
    [out] = manifest["outputs"]
    assert manifest["urls_expire_at"] > time.time()
    image = httpx.get(out["url"])
    assert image.status_code == 200 and len(image.content) == out["bytes"]
    # Renewal: a fresh manifest link and one link per output.
    code, stdout, _ = cli("presign-get", up.job_id, "--expires", "120")
    link = json.loads(stdout)
    assert code == 0 and httpx.get(link["manifest_url"]).json()["job_id"] == up.job_id
    assert httpx.get(link["outputs"][out["key"]]).content == image.content
    code, stdout, _ = cli("presign-get", out["key"])
    assert code == 0 and httpx.get(stdout.strip()).content == image.content


# -- 2. validation before anything is uploaded -------------------------------------------------

def test_presign_and_submit_refuse_bad_recipe_and_params_before_uploading(bucket, cli, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes())
    before = inbox_keys(bucket)
    for argv, code in (
        (["presign", "nosuch"], "unknown_recipe"),
        (["presign", "filter", "--param", "style=bogus"], "invalid_params"),
        (["presign", "filter", "--param", "strength=1"], "invalid_params"),  # unknown param
        (["submit", str(photo), "--recipe", "nosuch"], "unknown_recipe"),
        (["submit", str(photo), "--recipe", "filter", "--param", "style=bogus"], "invalid_params"),
        (["submit", str(photo), "--recipe", "filter", "--param", "intensity=3"], "invalid_params"),
    ):
        status, _, err = cli(*argv)
        assert status == 2 and err.startswith(f"error [{code}]: "), (argv, err)
    assert inbox_keys(bucket) == before  # nothing was stored
    status, out, _ = cli("presign", "filter", "--param", "style=noir")
    assert status == 0 and json.loads(out)["manifest_url"]


# -- 5. jobs list: newest first, filters before the limit, stable cursors ---------------------

def test_jobs_list_newest_first_filters_then_limits(bucket, cli):
    ok = [drop(bucket, f"inbox/filter/newest/ok{i}.png", png_bytes(), Metadata={"style": "sepia"}) for i in range(2)]
    bad = []
    for i in range(3):
        bad.append(drop(bucket, f"inbox/filter/newest/bad{i}.png", b"not an image %d" % i))
        wait_final(bucket, bad[-1])  # one at a time: submission order is known
    for job_id in ok:
        wait_final(bucket, job_id)
    failed = list_jobs(bucket, status="failed", limit=3)
    # The three newest failed jobs are ours, newest first, however many others came before.
    assert [m.job_id for m in failed.jobs] == bad[::-1]
    first = list_jobs(bucket, status="failed", limit=2)
    assert [m.job_id for m in first.jobs] == bad[:0:-1] and first.next_cursor
    assert list_jobs(bucket, status="failed", limit=1, cursor=first.next_cursor).jobs[0].job_id == bad[0]
    # Paging through everything: no job twice, submission times never increase.
    seen, times, cursor = [], [], None
    while True:
        page = list_jobs(bucket, limit=7, cursor=cursor)
        assert len(page.jobs) <= 7
        seen += [m.job_id for m in page.jobs]
        times += [bucket.index.parse(bucket.index.key(m)).submitted_at for m in page.jobs]
        if not (cursor := page.next_cursor):
            break
    assert len(seen) == len(set(seen)) and set(ok) | set(bad) <= set(seen)
    assert times == sorted(times, reverse=True)
    recent = list_jobs(bucket, since=time.time() - 600, recipe="filter", limit=1000).jobs
    assert set(bad) <= {m.job_id for m in recent}
    code, out, _ = cli("jobs", "list", "--status", "failed", "--limit", "2")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == bad[:0:-1]


def test_jobs_list_into_a_closed_pipe_prints_no_traceback(settings, tmp_path):
    env = {"BUCKETBRUSH_BUCKET": settings.bucket, "PATH": "/usr/bin:/bin",
           "BUCKETBRUSH_STATE_DIR": str(settings.state_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "bucketbrush.cli", "jobs", "list", "--limit", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=Path(__file__).parent.parent)
    proc.stdout.close()  # like `| head` that has already gone
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# -- 6. status: every part, stale heartbeats pruned, dead letters ----------------------------

def test_status_shows_every_part_and_prunes_dead_heartbeats(bucket, cli):
    now = time.time()
    ghost = RunnerStatus(runner_id="ghost-1", host="ghost", pid=1, queue="q", started_at=now - 9000,
                         updated_at=now - 7200)
    ghost_key = bucket.layout.heartbeat_key("ghost-1")
    bucket.s3.put_object(Bucket=bucket.name, Key=ghost_key, Body=ghost.model_dump_json().encode())
    code, out, _ = cli("status")
    assert code == 0, out
    assert "store " in out and "broker " in out and "queue " in out and "local stack" in out
    assert "events  seaweedfs" in out and "[ok," in out  # the event source's heartbeat
    assert "runner  " in out and "ghost-1" in out.split("removed")[1]  # pruned, and said so
    assert not bucket.exists(ghost_key)
    code, out, _ = cli("status")
    assert "ghost-1" not in out
    report = json.loads(cli("status", "--json")[1])
    assert report["ok"] and all(p["running"] for p in report["local_stack"]["processes"])


def test_dead_letters_list_retry_purge(settings, bucket, cli):
    broker = build_broker(settings)
    missing = "inbox/filter/dead/arrives-late.png"
    fixable = "dead-fixable"  # a spec whose input is not there yet: input_missing, dead-lettered
    bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{fixable}.json", Body=json.dumps(
        {"recipe": "filter", "input": missing, "params": {"style": "sepia"}}))
    hopeless = drop(bucket, "inbox/filter/dead/hopeless.png", b"never an image")
    assert wait_final(bucket, fixable).error.code == "input_missing"
    wait_final(bucket, hopeless)
    wait_until(lambda: {fixable, hopeless} <= {d.job_id for d in deadletters.list_dead(broker, settings)},
               "both messages dead-lettered")
    code, out, err = cli("jobs", "dead", "list")
    assert code == 0 and "dead-lettered message" in err
    assert any(fixable in line and "failed input_missing" in line for line in out.splitlines()), out
    drop(bucket, missing, png_bytes(), Metadata={"style": "nope"})  # its own job fails; the spec's is fine
    code, out, _ = cli("jobs", "dead", "retry", fixable)
    assert code == 0 and f"job {fixable}" in out and "queued again" in out, out
    assert wait_final(bucket, fixable).status == "succeeded"
    code, out, _ = cli("jobs", "dead", "purge", hopeless)
    assert code == 0 and out.strip() == "purged 1 dead-lettered message"
    assert not {fixable, hopeless} & {d.job_id for d in deadletters.list_dead(broker, settings)}
    code, _, err = cli("jobs", "dead", "purge", hopeless)
    assert code == 2 and "job_not_found" in err


# -- 7. every command says what it did -------------------------------------------------------

def test_commands_say_what_they_did(bucket, cli):
    job_id = drop(bucket, "inbox/filter/words/a.png", png_bytes(), Metadata={"style": "noir"})
    wait_final(bucket, job_id)
    code, out, _ = cli("jobs", "delete", job_id)
    assert code == 0 and out.startswith(f"deleted job {job_id}: 3 objects\n"), out
    assert "cancel/" not in out  # no cancel marker existed
    gallery.enable_versioning(bucket)
    job_id = drop(bucket, "inbox/filter/words/b.png", png_bytes(), Metadata={"style": "noir"})
    wait_final(bucket, job_id)
    code, out, _ = cli("gallery", "delete", job_id)
    assert out.startswith(f"soft-deleted job {job_id}: 3 objects hidden behind delete markers")
    code, out, err = cli("gallery", "deleted")
    assert job_id in out.split() and "soft-deleted job" in err
    code, out, _ = cli("gallery", "purge", job_id)
    assert code == 0 and out.startswith(f"purged job {job_id}: ") and "object versions" in out, out


# -- 3. a job spec under a name that is no job id leaves a trace --------------------------------

def test_spec_with_an_invalid_name_fails_under_a_derived_id(stack, bucket):
    key = "jobs/bad id!.json"
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=b'{"recipe": "filter"}')
    job_id = job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"')))
    manifest = wait_final(bucket, job_id)
    assert manifest.status == "failed" and manifest.error.code == "invalid_spec"
    assert "'bad id!.json' is not a job id" in manifest.error.message and job_id in manifest.error.message
    log = Path(stack.read_state().process("events").log).read_text()
    assert f"job spec {key!r} rejected" in log


# -- 4. one upload is one job, with versioning on, whatever the transport sends ----------------

def test_versioning_keeps_one_upload_one_job(settings, bucket):
    gallery.enable_versioning(bucket)
    key = "inbox/filter/versioned/a.png"
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=png_bytes(landscape(64, 48)),
                               Metadata={"style": "sepia"})
    assert put.get("VersionId") not in (None, "null")
    etag = put["ETag"].strip('"')
    job_id = job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=etag))
    assert wait_final(bucket, job_id).status == "succeeded"  # the filer event made this job
    handler = Handler.from_settings(settings)
    for version_id in (put["VersionId"], None):
        ref = ObjectRef(bucket=bucket.name, key=key, etag=etag, version_id=version_id)
        outcome = handler.handle_record(S3Record.created("test", ref))
        assert (outcome.action, outcome.job_id) == ("duplicate", job_id), outcome


# -- 10. a hard time limit: the recipe runs in a child process that is killed -------------------

def test_hard_time_limit_kills_the_recipe_process(bucket):
    big = "inbox/filter/hard/big.jpg"
    drop(bucket, big, png_bytes(landscape(1800, 1350), "JPEG"), Metadata={"style": "nope"})
    drop(bucket, "inbox/filter/hard/small.png", png_bytes(), Metadata={"style": "nope"})
    specs = {
        "hard-ok": {"recipe": "filter", "input": "inbox/filter/hard/small.png", "params": {"style": "sepia"},
                    "hard_time_limit": True},
        "hard-killed": {"recipe": "filter", "input": big, "params": {"style": "watercolor"},
                        "time_limit_s": 1, "hard_time_limit": True},
    }
    for job_id, doc in specs.items():
        bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json", Body=json.dumps(doc))
        manifest = wait_final(bucket, job_id, timeout=90)
        if job_id == "hard-ok":  # the result came back from the child process whole
            assert manifest.status == "succeeded", manifest.error
            assert manifest.progress.fraction == 1.0 and manifest.outputs[0].width == 128
    assert manifest.status == "failed" and manifest.error.code == "timed_out", manifest.error
    assert "process was killed (hard time limit)" in manifest.error.message and manifest.outputs == []
    after = drop(bucket, "inbox/filter/hard/after.png", png_bytes(), Metadata={"style": "noir"})
    assert wait_final(bucket, after).status == "succeeded"  # the runner goes on
