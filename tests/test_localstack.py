"""The AWS flavour on real LocalStack (S3, SQS, SNS) and a private Redis: the SQS poller, the
Lambda entry points, recorded LocalStack payloads, and S3 -> SQS -> runner end to end.

The session fixture installs LocalStack into .venv-localstack/ when it is missing (about
three minutes, once) and starts it on a free loopback port (5-15 s).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bucketbrush.credentials import ensure_dev_credentials
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket, s3_client
from functions import aws_lambda
from functions.events import InvalidEvent, S3Record, parse_records
from functions.handler import Handler
from functions.sources.sqs import SqsPoller, records_from_body, sqs_client
from infra.aws import setup_event_route, sns_client, subscribe_queue
from infra.bucket import apply_bucket
from infra.procs import start_redis, start_with_retries, terminate, wait_until
from localstack.server import LocalStackServer, ensure_venv
from tests.helpers import EVENTS, png_bytes, refused_port, wait_final

RECORDED = EVENTS / "localstack"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


# -- servers ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def localstack_endpoint(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("localstack")

    def start() -> LocalStackServer:
        # A port picked free can be taken before LocalStack binds it: then a fresh one.
        server = LocalStackServer(ensure_venv(), workdir)
        server.start()
        return server

    server = start_with_retries(start)
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory):
    import redis

    # infra.procs.start_redis starts it again on a fresh port if the one it picked was taken.
    data = tmp_path_factory.mktemp("redis")
    proc, url = start_redis(data, data, name="private-redis")
    try:
        assert redis.Redis.from_url(url).ping()
        yield url
    finally:
        terminate(proc, 10)


def make_settings(endpoint: str, redis_url: str, bucket: str, state_dir: Path) -> Settings:
    # A broker namespace per bucket: each test's queue and claims are its own, so a runner
    # never picks up jobs another test left behind.
    return Settings(s3_endpoint_url=endpoint, s3_access_key="test", s3_secret_key="test", redis_url=redis_url,
                    bucket=bucket, state_dir=state_dir, broker_namespace=f"bb-{bucket}")


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "BUCKETBRUSH_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "BUCKETBRUSH_S3_ACCESS_KEY": "test",
        "BUCKETBRUSH_S3_SECRET_KEY": "test",
        "BUCKETBRUSH_REDIS_URL": settings.redis_url,
        "BUCKETBRUSH_BUCKET": settings.bucket,
        "BUCKETBRUSH_BROKER_NAMESPACE": settings.broker_namespace,
        "BUCKETBRUSH_STATE_DIR": str(settings.state_dir),
    }


@pytest.fixture
def env(localstack_endpoint, private_redis, tmp_path):
    """A fresh bucket with an object, a fresh queue, and settings for both."""
    settings = make_settings(localstack_endpoint, private_redis, f"bb-{uuid.uuid4().hex[:10]}", tmp_path)
    s3 = s3_client(settings)
    apply_bucket(s3, settings)
    sqs = sqs_client(settings, localstack_endpoint)
    queue_url = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    return settings, s3, sqs, queue_url


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{refused_port()}/0"  # every connection refused


def s3_event(settings: Settings, s3, key: str, body: bytes = b"\x89PNG fake") -> str:
    """Put ``key`` and return the S3 event JSON for it, as S3 -> SQS would deliver it."""
    etag = s3.put_object(Bucket=settings.bucket, Key=key, Body=body)["ETag"]
    record = S3Record.created("aws:s3", ObjectRef(bucket=settings.bucket, key=key, etag=etag, size=len(body)))
    return json.dumps({"Records": [record.model_dump(mode="json", by_alias=True)]})


def sns_envelope(message: str) -> str:
    envelope = json.loads(recorded("sns_envelope_put.json"))
    return json.dumps({**envelope, "Message": message})


def queue_depth(sqs, queue_url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def handler_for(settings: Settings, redis_url: str | None = None) -> Handler:
    if redis_url:
        settings = settings.model_copy(update={"redis_url": redis_url})
    return Handler.from_settings(settings)


# -- recorded LocalStack payloads ---------------------------------------------------------

def test_recorded_localstack_keys_decode_once():
    [space] = parse_records(recorded("put_space.json"))
    assert space.key == "inbox/filter/my photo (1).png"  # sent as my%20photo%20%281%29.png
    [nested] = parse_records(recorded("put_nested.json"))
    assert nested.key == "inbox/filter/2026/11/21/a+b.png"  # a literal '+' arrives as %2B
    [multipart] = parse_records(recorded("multipart_complete.json"))
    assert multipart.event_name == "ObjectCreated:CompleteMultipartUpload" and multipart.is_created
    assert multipart.key == "inbox/filter/big upload.png"
    assert multipart.ref.etag.endswith("-2") and multipart.ref.size == 5 * 1024 * 1024 + 1024
    assert parse_records(recorded("test_event.json")) == []


def test_message_bodies_raw_envelope_and_garbage():
    raw = recorded("put_nested.json")
    assert records_from_body(raw) == parse_records(raw)
    [via_sns] = records_from_body(recorded("sns_envelope_put.json"))
    assert via_sns.key == "jobs/sns-job.json"
    assert records_from_body(sns_envelope(recorded("test_event.json"))) == []
    for body in ["not json", "[]", json.dumps({"Type": "SubscriptionConfirmation", "Message": "hi"}),
                 sns_envelope("not an event"), json.dumps({"Type": "Notification", "Message": {"Records": []}})]:
        with pytest.raises(InvalidEvent):
            records_from_body(body)


# -- the SQS poller on real LocalStack SQS ------------------------------------------------

def test_poller_handles_then_batch_deletes(env):
    settings, s3, sqs, queue_url = env
    event = s3_event(settings, s3, "inbox/filter/a.png")
    for body in [recorded("test_event.json"), "garbage", sns_envelope(event), event]:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    handler = handler_for(settings)  # as sqs_source wires it: the batch handed over at once
    poller = SqsPoller(sqs, queue_url, handler.handle, submit=handler.submit, wait_time_s=1)
    result = poller.poll_once()
    while result.received < 4:  # SQS may split a small queue over receives
        more = poller.poll_once()
        assert more.received, "messages went missing"
        for name in ("received", "handled", "dropped", "failed"):
            setattr(result, name, getattr(result, name) + getattr(more, name))
        result.outcomes += more.outcomes
    assert (result.handled, result.dropped, result.failed) == (2, 2, 0)
    assert sorted(o.action for o in result.outcomes) == ["duplicate", "enqueued"]
    assert queue_depth(sqs, queue_url) == (0, 0)
    manifest = Bucket(settings).read_manifest(result.outcomes[0].job_id)
    assert manifest is not None and manifest.status == "queued"


def test_poller_leaves_messages_it_could_not_enqueue(env):
    settings, s3, sqs, queue_url = env
    sqs.send_message(QueueUrl=queue_url, MessageBody=s3_event(settings, s3, "inbox/filter/b.png"))
    dead = handler_for(settings, dead_redis_url())
    down = SqsPoller(sqs, queue_url, dead.handle, submit=dead.submit, wait_time_s=1, visibility_timeout_s=1)
    result = down.poll_once()
    assert (result.received, result.failed, result.handled) == (1, 1, 0)
    assert queue_depth(sqs, queue_url) == (0, 1)  # in flight, not deleted
    up = SqsPoller(sqs, queue_url, handler_for(settings).handle, wait_time_s=5)
    result = up.poll_once()  # redelivered once the 1 s visibility timeout ran out
    assert result.handled == 1 and [o.action for o in result.outcomes] == ["enqueued"]
    assert queue_depth(sqs, queue_url) == (0, 0)


def test_run_loop_backs_off_and_stops(env):
    settings, s3, sqs, queue_url = env
    sqs.send_message(QueueUrl=queue_url, MessageBody=s3_event(settings, s3, "inbox/filter/c.png"))
    calls: list[float] = []

    def failing(records):
        calls.append(time.monotonic())
        raise ConnectionError("broker down")

    stop = threading.Event()
    poller = SqsPoller(sqs, queue_url, failing, wait_time_s=1, visibility_timeout_s=0)
    thread = threading.Thread(target=poller.run, args=(stop,), kwargs={"max_backoff_s": 1})
    thread.start()
    deadline = time.monotonic() + 30
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert len(calls) >= 4  # retried...
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    # ...with backoff 0.5 s, then doubling up to max_backoff_s (1 s), never in a tight loop:
    # lower bounds only (a timer never fires early), so a slow machine cannot fail this.
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95 and gaps[2] >= 0.95, gaps
    assert sum(queue_depth(sqs, queue_url)) == 1  # never deleted


# -- the Lambda entry points --------------------------------------------------------------

@pytest.fixture
def lambda_env(env, monkeypatch):
    settings = env[0]
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    aws_lambda.get_handler.cache_clear()
    yield env
    aws_lambda.get_handler.cache_clear()


def lambda_sqs_event(sqs, queue_url: str, want: int) -> dict:
    """Real SQS messages in the shape Lambda's event source mapping delivers them."""
    records = []
    while len(records) < want:
        for m in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            records.append({"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                            "attributes": {}, "messageAttributes": {}, "eventSource": "aws:sqs"})
    return {"Records": records}


def test_lambda_sqs_partial_batch_response(lambda_env, monkeypatch):
    settings, s3, sqs, queue_url = lambda_env
    for body in [s3_event(settings, s3, "inbox/filter/d.png"), "garbage", recorded("test_event.json")]:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    assert aws_lambda.sqs_handler(lambda_sqs_event(sqs, queue_url, 3), None) == {"batchItemFailures": []}
    handler = aws_lambda.get_handler()
    assert aws_lambda.get_handler() is handler  # built once per container

    monkeypatch.setenv("BUCKETBRUSH_REDIS_URL", dead_redis_url())
    aws_lambda.get_handler.cache_clear()
    sqs.send_message(QueueUrl=queue_url, MessageBody=s3_event(settings, s3, "inbox/filter/e.png"))
    sqs.send_message(QueueUrl=queue_url, MessageBody="garbage")
    event = lambda_sqs_event(sqs, queue_url, 2)
    [good] = [r["messageId"] for r in event["Records"] if r["body"] != "garbage"]
    assert aws_lambda.sqs_handler(event, None) == {"batchItemFailures": [{"itemIdentifier": good}]}


def test_lambda_s3_direct_and_via_sns(lambda_env, monkeypatch):
    settings, s3, *_ = lambda_env
    event = json.loads(recorded("put_nested.json"))
    event["Records"][0]["s3"]["bucket"]["name"] = settings.bucket
    first = aws_lambda.s3_handler(event, None)["outcomes"]
    assert [o["action"] for o in first] == ["enqueued"]
    assert first[0]["key"] == "inbox/filter/2026/11/21/a+b.png"
    sns_event = {"Records": [{"EventSource": "aws:sns", "Sns": {"Message": json.dumps(event)}}]}
    assert [o["action"] for o in aws_lambda.s3_handler(sns_event, None)["outcomes"]] == ["duplicate"]
    assert aws_lambda.s3_handler({"not": "an event"}, None)["outcomes"] == []
    # Broker down: raise, so that Lambda retries the asynchronous invocation.
    monkeypatch.setenv("BUCKETBRUSH_REDIS_URL", dead_redis_url())
    aws_lambda.get_handler.cache_clear()
    event["Records"][0]["s3"]["object"]["key"] = "inbox/filter/other.png"
    with pytest.raises(Exception, match="(?i)connect"):
        aws_lambda.s3_handler(event, None)


# -- end to end ---------------------------------------------------------------------------

@pytest.mark.e2e
def test_s3_to_sqs_to_runner_end_to_end(localstack_endpoint, private_redis, tmp_path):
    # Unique names: every LocalStack on a machine keeps S3 data in one fixed folder per bucket name
    # under the system temp dir, whatever it is configured with.
    name = f"bb-e2e-{uuid.uuid4().hex[:8]}"
    # Its own Redis namespace too: jobs other tests enqueued (no runner took them) are not its own.
    settings = make_settings(localstack_endpoint, private_redis, name, tmp_path).model_copy(
        update={"broker_namespace": name})
    s3, sqs = s3_client(settings), sqs_client(settings, localstack_endpoint)
    sns = sns_client(settings, localstack_endpoint)
    # The job events go S3 -> SQS; manifests go to a topic with two subscriber queues: one
    # read here, one for `bucketbrush watch`.
    route = setup_event_route(settings, s3, sqs, queue_name=f"{name}-events", sns=sns, via_sns=False,
                              manifests_topic=f"{name}-manifests", manifests_queue=f"{name}-sub",
                              report=lambda _: None)
    watch_url, _ = subscribe_queue(sqs, sns, route.manifests_topic_arn, f"{name}-watch")

    ready = tmp_path / "runner.ready"
    ensure_dev_credentials(settings.state_dir)  # the runner signs its outputs (Content Credentials)
    with open(tmp_path / "runner.log", "wb") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "bucketbrush.cli", "runner", "--ready-file", str(ready)],
            env={**os.environ, **settings_env(settings), "BUCKETBRUSH_BROKER_NAMESPACE": name, "PYTHONUNBUFFERED": "1"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    outcomes = []
    handler = handler_for(settings)
    poller = SqsPoller(sqs, route.queue_url, lambda records: outcomes.extend(handler.handle(records)) or [],
                       wait_time_s=1)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    body = png_bytes(landscape(96, 64))
    job_id = job_id_for(ObjectRef(bucket=settings.bucket, key="inbox/filter/x.png", etag=hashlib.md5(body).hexdigest()))
    watch = subprocess.Popen(
        [sys.executable, "-m", "bucketbrush.cli", "watch", "--job", job_id, "--json", "--queue-url", watch_url,
         "--endpoint-url", localstack_endpoint],
        env={**os.environ, **settings_env(settings)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until("runner", ready.exists, 60, runner, tmp_path / "runner.log")
        assert "watching manifests/" in watch.stderr.readline()
        etag = s3.put_object(Bucket=settings.bucket, Key="inbox/filter/x.png", Body=body,
                             ContentType="image/png", Metadata={"style": "sepia"})["ETag"]
        assert job_id == job_id_for(ObjectRef(bucket=settings.bucket, key="inbox/filter/x.png", etag=etag))
        bucket = Bucket(settings)
        manifest = wait_final(bucket, job_id, timeout=60)
        assert manifest.status == "succeeded", manifest.error
        assert manifest.params["style"] == "sepia"
        [out] = manifest.outputs
        data = s3.get_object(Bucket=settings.bucket, Key=out.key)["Body"].read()
        image = Image.open(io.BytesIO(data)).convert("RGB")
        r, g, b = (int(np.asarray(c, dtype=np.int64).sum()) for c in image.split())
        assert image.size == (96, 64) and r > g > b
        # A canary written after the runner's own writes: once its event is handled, any event
        # for those writes (sent earlier) would have been too.
        s3.put_object(Bucket=settings.bucket, Key="jobs/canary.txt", Body=b"not a spec")
        deadline = time.monotonic() + 30
        while "jobs/canary.txt" not in {o.key for o in outcomes} and time.monotonic() < deadline:
            time.sleep(0.05)
        # outputs/ and manifests/ never notify; the canary is ignored (not jobs/<id>.json).
        assert [o.key for o in outcomes] == ["inbox/filter/x.png", "jobs/canary.txt"]
        assert outcomes[1].action == "ignored"
        # The poller deletes a message once its records are handled: just after the outcome.
        deadline = time.monotonic() + 30
        while (depth := queue_depth(sqs, route.queue_url)) != (0, 0):
            assert time.monotonic() < deadline, f"messages left in the event queue: {depth}"
            time.sleep(0.1)
        # Subscribers: one message per manifest write, exactly one of them for the final manifest.
        final_etag = s3.head_object(Bucket=settings.bucket, Key=f"manifests/{job_id}.json")["ETag"].strip('"')
        received = []
        while batch := sqs.receive_message(QueueUrl=route.manifests_queue_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages", []):
            received += [r for m in batch for r in records_from_body(m["Body"])]
            sqs.delete_message_batch(QueueUrl=route.manifests_queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
        assert {r.key for r in received} == {f"manifests/{job_id}.json"}
        assert [r.ref.etag for r in received].count(final_etag) == 1, [r.ref.etag for r in received]
        assert len(received) >= 2  # queued, running...: each its own message
        # `bucketbrush watch --job` saw the job end through its own queue, and exited with 0.
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, err
        states = [json.loads(line) for line in out.splitlines()]
        assert states[-1]["status"] == "succeeded" and states[-1]["job_id"] == job_id
    finally:
        if watch.poll() is None:
            watch.terminate()
            watch.communicate(timeout=30)
        stop.set()
        thread.join(5)
        runner.terminate()
        runner.wait(30)
