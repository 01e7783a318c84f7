"""Outbound webhooks: per-job targets, subscriptions, signing, retries, 410, the SSRF guard.

The e2e tests run jobs on the session stack and a real receiver process (loopback; the stack
allows private destinations) that verifies every request with the standardwebhooks verifier.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import boto3
import httpx
import pytest
import redis
from standardwebhooks import Webhook, WebhookVerificationError

from bucketbrush.errors import InvalidWebhook
from bucketbrush.jobs import ObjectRef, WebhookTarget, job_id_for
from bucketbrush.management import cancel_job
from bucketbrush.manifest import Manifest
from bucketbrush.presign import presign_upload
from bucketbrush.settings import Settings, WebhookSubscription
from bucketbrush.webhooks import (
    Deliverer,
    Delivery,
    DestinationRefused,
    Endpoint,
    check_address,
    endpoints_for,
    event_type,
    read_deliveries,
    resolve_checked,
    webhook_id,
)
from infra import procs
from tests.helpers import png_bytes, wait_final
from tests.test_recipes_e2e import spec

HERE = Path(__file__).parent


# -- no servers ----------------------------------------------------------------------------

def test_target_parse_accepts_lists_and_metadata_strings():
    t = WebhookTarget.parse("https://hooks.example.com/x", "progress, started", InvalidWebhook)
    assert t.events == ("started", "progress", "completed")
    assert WebhookTarget.parse("http://h.example/", None, InvalidWebhook).events == ("completed",)
    for url, events in [("ftp://h.example/", None), ("not a url", None), (42, None),
                        ("https://h.example/", ["finished"]), ("https://h.example/", {"a": 1})]:
        with pytest.raises(InvalidWebhook):
            WebhookTarget.parse(url, events, InvalidWebhook)
    assert InvalidWebhook("x").code == "invalid_webhook"


def test_presign_signs_the_webhook_into_the_policy():
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s",
                      endpoint_url="http://127.0.0.1:1")
    up = presign_upload(s3, Settings(), recipe="filter", webhook="https://h.example/hook",
                        webhook_events=["progress"])
    assert up.fields["x-amz-meta-webhook"] == "https://h.example/hook"
    assert up.fields["x-amz-meta-webhook-events"] == "progress,completed"
    policy = json.loads(base64.b64decode(up.fields["policy"]))
    assert {"x-amz-meta-webhook": "https://h.example/hook"} in policy["conditions"]
    assert {"x-amz-meta-webhook-events": "progress,completed"} in policy["conditions"]
    with pytest.raises(InvalidWebhook):
        presign_upload(s3, Settings(), recipe="filter", webhook="file:///etc/passwd")
    with pytest.raises(InvalidWebhook):
        presign_upload(s3, Settings(), recipe="filter", webhook_events=["started"])


def test_endpoints_follow_events_and_recipes():
    settings = Settings(webhook_subscriptions=[
        {"url": "https://all.example/", "secret": "whsec_AAAA"},
        {"url": "https://done.example/", "secret": "whsec_AAAA", "events": [], "recipes": ["upscale"]},
    ])
    target = WebhookTarget.parse("https://job.example/", ["started"], InvalidWebhook)
    urls = lambda event, recipe, t=target: [e.url for e in endpoints_for(settings, event, recipe, t)]  # noqa: E731
    assert urls("started", "filter") == ["https://job.example/", "https://all.example/"]
    assert urls("progress", "filter") == ["https://all.example/"]
    assert urls("completed", "filter") == ["https://job.example/", "https://all.example/"]
    assert urls("completed", "upscale") == ["https://job.example/", "https://all.example/", "https://done.example/"]
    assert urls("started", "upscale", None) == ["https://all.example/"]


def test_ids_and_types_are_stable():
    m = Manifest(job_id="j1", status="failed", recipe="filter")
    assert (event_type("completed", m), webhook_id("completed", m)) == ("job.failed", "j1.failed")
    m.status = "cancelled"
    assert event_type("completed", m) == "job.cancelled"
    m.status, m.progress.step = "running", 3
    assert (event_type("progress", m), webhook_id("progress", m)) == ("job.progress", "j1.progress.3")
    assert webhook_id("started", m) == "j1.started"


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "169.254.1.1",
                                     "::1", "fe80::1", "fc00::1", "100.64.0.1", "0.0.0.0", "::ffff:127.0.0.1"])
def test_private_addresses_are_refused_unless_allowed(address):
    with pytest.raises(DestinationRefused):
        check_address(ipaddress.ip_address(address), allow_private=False)


def test_metadata_services_are_refused_even_when_private_is_allowed():
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"):
        with pytest.raises(DestinationRefused, match="metadata"):
            check_address(ipaddress.ip_address(address), allow_private=True)
    check_address(ipaddress.ip_address("10.0.0.5"), allow_private=True)
    check_address(ipaddress.ip_address("93.184.215.14"), allow_private=False)


def test_names_are_checked_after_resolution():
    # "localhost" is a name, not an address: the guard must look at what it resolves to.
    with pytest.raises(DestinationRefused, match="127.0.0.1|::1"):
        resolve_checked("http://localhost:9/hook", allow_private=False)
    assert resolve_checked("http://localhost:9/hook", allow_private=True) in ("127.0.0.1", "::1")
    assert resolve_checked("https://93.184.215.14/hook", allow_private=False) == "93.184.215.14"


# -- a real receiver -------------------------------------------------------------------------

class Receiver:
    def __init__(self, tmp: Path, secret: str) -> None:
        self.log = tmp / "received.jsonl"
        self.log.touch()
        port_file = tmp / "port"
        self.popen, self.proc = procs.spawn("webhook-receiver", [sys.executable, str(HERE / "webhook_receiver.py"),
                                                                 secret, str(self.log), str(port_file)], tmp)
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert self.popen.poll() is None and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{port_file.read_text()}"

    def requests(self, path_prefix: str) -> list[dict]:
        lines = self.log.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["path"].startswith(path_prefix)]

    def wait(self, path_prefix: str, until, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.requests(path_prefix)
            if until(got):
                return got
            time.sleep(0.1)
        seen = [(r["status"], r["headers"].get("webhook-id")) for r in got]
        raise AssertionError(f"receiver at {path_prefix}: {seen}")


@pytest.fixture(scope="module")
def receiver(settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    r = Receiver(tmp_path_factory.mktemp("receiver"), settings.webhook_job_secret.get_secret_value())
    yield r
    procs.terminate(r.proc, 10)


def types(requests: list[dict]) -> list[str]:
    return [json.loads(r["body"])["type"] for r in requests]


def wait_record(bucket, job_id: str, until, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_deliveries(bucket, job_id)
        if record and until(record["deliveries"]):
            return record["deliveries"]
        time.sleep(0.1)
    raise AssertionError(f"delivery record of {job_id}: {read_deliveries(bucket, job_id)}")


def test_every_event_type_arrives_signed(settings, bucket, receiver):
    secret = settings.webhook_job_secret.get_secret_value()
    hook = f"{receiver.base}/ok/"
    every = ["started", "progress"]
    # A long job, cancelled once its first progress webhook has arrived: started, progress, cancelled.
    slow = spec(bucket, "hook-slow", {"recipe": "txt2img", "webhook": hook + "slow", "webhook_events": every,
                                      "params": {"prompt": "slow", "steps": 150, "width": 256, "height": 256}})
    receiver.wait("/ok/slow", lambda got: "job.progress" in types(got), timeout=120)
    cancel_job(bucket, slow)
    assert wait_final(bucket, slow, timeout=60).status == "cancelled"
    got = receiver.wait("/ok/slow", lambda got: "job.cancelled" in types(got))
    # Deliveries run in parallel, so arrival order is not promised (docs/subscribers.md): the
    # body's timestamp is, and it puts started first and cancelled last.
    ordered = sorted(got, key=lambda r: datetime.fromisoformat(json.loads(r["body"])["timestamp"]))
    assert types(ordered)[0] == "job.started" and types(ordered)[-1] == "job.cancelled"
    # A quick one that succeeds, and one that fails on its params.
    ok = spec(bucket, "hook-ok", {"recipe": "txt2img", "webhook": hook + "ok",
                                  "params": {"prompt": "a red house", "steps": 2, "seed": 7}})
    bad = spec(bucket, "hook-bad", {"recipe": "filter", "input": "inbox/filter/missing.png", "webhook": hook + "bad"})
    [done] = receiver.wait("/ok/ok", lambda got: len(got) >= 1)
    [failed] = receiver.wait("/ok/bad", lambda got: len(got) >= 1)
    assert types([done, failed]) == ["job.succeeded", "job.failed"]  # completed only: no started
    # This test's paths only: the module's receiver also holds other tests' deliveries under /ok/.
    mine = [r for path in ("/ok/slow", "/ok/ok", "/ok/bad") for r in receiver.requests(path)]
    assert len(mine) >= 5  # started, progress, cancelled, succeeded, failed
    for request in mine:
        assert request["verified"], request["error"]
        assert request["headers"]["webhook-id"].startswith(("hook-slow.", "hook-ok.", "hook-bad."))
    body = json.loads(done["body"])
    assert body["data"]["job_id"] == ok and body["data"]["status"] == "succeeded"
    assert json.loads(failed["body"])["data"]["error"]["code"] == "input_missing" and bad
    # The outputs come with presigned GET links that work.
    [out] = body["data"]["outputs"]
    data = httpx.get(out["url"]).content
    assert hashlib.sha256(data).hexdigest() == out["sha256"]
    # Tampering with a signed body is caught by the verifier.
    verifier = Webhook(secret)
    verifier.verify(done["body"], done["headers"])
    tampered = done["body"].replace('"succeeded"', '"failed"', 1)
    assert tampered != done["body"]
    with pytest.raises(WebhookVerificationError):
        verifier.verify(tampered, done["headers"])
    # The app can see each attempt.
    record = wait_record(bucket, ok, lambda d: any(e["outcome"] == "delivered" for e in d))
    assert record[-1]["status_code"] == 204 and record[-1]["webhook_id"] == f"{ok}.succeeded"


def test_presigned_upload_carries_its_webhook(settings, bucket, receiver):
    upload = presign_upload(bucket.public_s3, settings, recipe="filter", params={"style": "noir"},
                            webhook=f"{receiver.base}/ok/presigned", webhook_events=["started"])
    response = httpx.post(upload.url, data=upload.fields, files={"file": ("a.png", png_bytes(), "image/png")})
    assert response.status_code in (200, 204), response.text
    got = receiver.wait("/ok/presigned", lambda got: {"job.started", "job.succeeded"} <= set(types(got)))
    # Delivery threads work in parallel: a fast job's events may arrive in either order.
    assert sorted(types(got)) == ["job.started", "job.succeeded"]
    [final] = [r for r in got if json.loads(r["body"])["type"] == "job.succeeded"]
    assert json.loads(final["body"])["data"]["job_id"] == upload.job_id


def test_failing_receiver_gets_the_retries_then_recovers(bucket, receiver):
    job = spec(bucket, "hook-flaky", {"recipe": "txt2img", "webhook": f"{receiver.base}/flaky/2/",
                                      "params": {"prompt": "x", "steps": 2, "seed": 1}})
    got = receiver.wait("/flaky/2/", lambda got: any(r["status"] == 204 for r in got))
    assert [r["status"] for r in got] == [503, 503, 204]
    assert len({r["headers"]["webhook-id"] for r in got}) == 1  # the same message each time
    assert all(r["verified"] for r in got)
    record = wait_record(bucket, job, lambda d: d and d[-1]["outcome"] == "delivered")
    assert [(e["attempt"], e["outcome"]) for e in record] == [(1, "retrying"), (2, "retrying"), (3, "delivered")]


def test_gone_disables_the_endpoint(settings, bucket, receiver):
    url = f"{receiver.base}/gone/x"
    first = spec(bucket, "hook-gone-1", {"recipe": "txt2img", "webhook": url, "params": {"prompt": "x", "steps": 2}})
    assert wait_record(bucket, first, lambda d: bool(d))[-1]["outcome"] == "disabled"
    second = spec(bucket, "hook-gone-2", {"recipe": "txt2img", "webhook": url, "params": {"prompt": "y", "steps": 2}})
    [entry] = wait_record(bucket, second, lambda d: bool(d))
    assert entry["outcome"] == "skipped"
    assert len(receiver.requests("/gone/x")) == 1  # the 410 itself, nothing after it
    # The CLI shows it, and enables it again.
    assert url in cli(settings, "webhooks", "list")["disabled"]
    assert cli(settings, "webhooks", "show", second)["deliveries"][0]["outcome"] == "skipped"
    assert "enabled again" in cli(settings, "webhooks", "enable", url, raw=True)
    assert url not in cli(settings, "webhooks", "list")["disabled"]


def cli(settings, *args: str, raw: bool = False):
    env = {**os.environ, "BUCKETBRUSH_BUCKET": settings.bucket, "BUCKETBRUSH_STATE_DIR": str(settings.state_dir)}
    done = subprocess.run([sys.executable, "-m", "bucketbrush.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout if raw else json.loads(done.stdout)


def _delivery(url: str, kind: str = "job") -> Delivery:
    manifest = Manifest(job_id=f"direct-{os.urandom(4).hex()}", status="succeeded", recipe="filter")
    return Delivery(webhook_id=f"{manifest.job_id}.succeeded", type="job.succeeded", timestamp=time.time(),
                    job_id=manifest.job_id, endpoint=Endpoint(url=url, kind=kind),
                    manifest=manifest.model_dump(mode="json"))


def test_private_address_refused_when_not_allowed(settings, bucket, receiver):
    strict = settings.model_copy(update={"webhook_allow_private": False})
    delivery = _delivery(f"{receiver.base}/ok/private")
    assert Deliverer(strict, bucket, redis.Redis.from_url(settings.redis_url)).attempt(delivery, attempt=1) is None
    [entry] = read_deliveries(bucket, delivery.job_id)["deliveries"]
    assert entry["outcome"] == "refused" and "127.0.0.1" in entry["error"]
    assert receiver.requests("/ok/private") == []


def test_subscription_is_signed_with_its_own_secret(settings, bucket, receiver):
    own = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    url = f"{receiver.base}/ok/subscription"
    subscribed = settings.model_copy(update={"webhook_subscriptions": [WebhookSubscription(url=url, secret=own)]})
    delivery = _delivery(url, kind="subscription")
    assert Deliverer(subscribed, bucket, redis.Redis.from_url(settings.redis_url)).attempt(delivery, attempt=1) is None
    [request] = receiver.requests("/ok/subscription")
    assert not request["verified"]  # the receiver checks with the per-job secret...
    assert Webhook(own).verify(request["body"], request["headers"])["type"] == "job.succeeded"  # ...not this one


def test_bad_webhooks_fail_the_job_with_a_code(bucket):
    key = "inbox/filter/bad-hook.png"
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=png_bytes(), Metadata={"webhook": "gopher://h.example/"})
    # The version id counts when the bucket is versioned (test_jobs' gallery test turns it on).
    upload_job = job_id_for(ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"], version_id=put.get("VersionId")))
    spec_job = spec(bucket, "hook-bad-events", {"recipe": "filter", "input": key,
                                                "webhook": "https://h.example/", "webhook_events": ["done"]})
    for job in (upload_job, spec_job):
        manifest = wait_final(bucket, job)
        assert manifest.status == "failed" and manifest.error.code == "invalid_webhook", manifest.error
