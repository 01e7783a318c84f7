"""The functions' HTTP service in a real uvicorn server, against the session's real stack.

The filer event source is stopped for this module, so every job here was enqueued by an HTTP
request; it is restarted (and replays, harmlessly, as duplicates) at the end. Only SNS's
certificate host cannot run here: the test signs with its own key and serves the certificate
through the app's injectable fetcher, behind the same URL checks a real one passes.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote_plus

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from bucketbrush.broker import build_broker
from bucketbrush.client import post_upload
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.presign import PresignedUpload
from functions.handler import Handler
from functions.http import create_app
from gpu_runner.recipes import validate_params
from tests.helpers import EVENTS, metric_samples, metric_value, png_bytes, refused_port, wait_final

pytestmark = pytest.mark.e2e

TOKEN = "tok-3c1f0e6b9a7d4e25b8f1"
TOPIC = "arn:aws:sns:us-east-1:123456789012:bucketbrush-events"
OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:someone-else"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000test.pem"
SUBSCRIBE_URL = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=t"
MAX_BODY = 64 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# -- servers and fakes ------------------------------------------------------------------------

@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on a free loopback port; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class FakeSns:
    """Signs messages like SNS with a self-made key; serves its certificate to the app."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
                .sign(self.key, hashes.SHA256()))
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if url == CERT_URL:
            return self.pem
        if url == SUBSCRIBE_URL:
            return b"<ConfirmSubscriptionResponse/>"
        raise OSError(f"unexpected fetch {url}")

    def sign(self, message: dict, version: str = "2", key: rsa.RSAPrivateKey | None = None) -> dict:
        # Written from the SNS docs, independently of functions.sns.
        fields = (["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
                  if message["Type"] == "Notification" else
                  ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"])
        text = "".join(f"{f}\n{message[f]}\n" for f in fields if f in message)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(text.encode(), padding.PKCS1v15(), algorithm)
        return {**message, "SignatureVersion": version, "SigningCertURL": CERT_URL,
                "Signature": base64.b64encode(signature).decode()}


@pytest.fixture(scope="module")
def http_settings(settings):
    # model_copy(update=) also works before these fields exist on Settings.
    return settings.model_copy(update={
        "functions_token": SecretStr(TOKEN), "sns_topic_arns": [TOPIC], "functions_max_body_bytes": MAX_BODY,
    })


@pytest.fixture(scope="module")
def no_event_source(stack):
    assert stack.stop_process("events")
    yield
    stack.restart_process("events")


@pytest.fixture(scope="module")
def sns() -> FakeSns:
    return FakeSns()


@pytest.fixture(scope="module")
def server(http_settings, no_event_source, sns) -> Iterator[str]:
    with running(create_app(http_settings, fetch=sns.fetch, validate=validate_params)) as url:
        yield url


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


# -- helpers ----------------------------------------------------------------------------------

def upload(bucket, key: str, **kwargs) -> tuple[ObjectRef, str]:
    put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=png_bytes(), ContentType="image/png", **kwargs)
    ref = ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'), version_id=put.get("VersionId"))
    return ref, job_id_for(ref)


def minio_event(ref: ObjectRef, *, encoded_key: str | None = None) -> dict:
    """The recorded MinIO webhook payload, pointed at an object in the test bucket."""
    event = json.loads((EVENTS / "minio" / "put_documented.json").read_text())
    key = encoded_key or quote_plus(ref.key)  # MinIO form-encodes keys like AWS
    event["Key"] = f"{ref.bucket}/{ref.key}"
    record = event["Records"][0]
    record["s3"]["bucket"].update(name=ref.bucket, arn=f"arn:aws:s3:::{ref.bucket}")
    record["s3"]["object"].update(key=key, eTag=ref.etag, size=len(png_bytes()))
    if ref.version_id:
        record["s3"]["object"]["versionId"] = ref.version_id
    return event


def s3_notification(ref: ObjectRef) -> dict:
    event = minio_event(ref)
    record = event["Records"][0]
    record.update(eventSource="aws:s3", eventName="ObjectCreated:Put", awsRegion="us-east-1")
    return {"Records": [record]}


def claims(settings) -> int:
    """How many job claims Redis holds: every enqueue takes one first."""
    redis = build_broker(settings).client
    return sum(1 for _ in redis.scan_iter(f"{settings.broker_namespace}:claim:*"))


def sns_time(age_s: float = 0) -> str:
    """An SNS Timestamp (ISO 8601, milliseconds, Z) ``age_s`` seconds ago."""
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def notification(ref: ObjectRef, topic: str = TOPIC) -> dict:
    return {
        "Type": "Notification", "MessageId": "5c1b1a4e-0000-4000-8000-000000000001", "TopicArn": topic,
        "Subject": "Amazon S3 Notification", "Message": json.dumps(s3_notification(ref)),
        "Timestamp": sns_time(),
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    }


def sns_post(client: httpx.Client, message: dict) -> httpx.Response:
    return client.post("/events/sns", content=json.dumps(message),
                       headers={"x-amz-sns-message-type": message["Type"], "Content-Type": "text/plain; charset=UTF-8"})


# -- MinIO webhook and plain S3 events --------------------------------------------------------

def test_minio_webhook_enqueues_and_the_job_succeeds(client, bucket):
    ref, job_id = upload(bucket, "inbox/filter/http/minio a+b.png", Metadata={"style": "noir"})
    response = client.post("/events/minio", json=minio_event(ref), headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["outcomes"] == [
        {"key": ref.key, "action": "enqueued", "job_id": job_id, "reason": ""}]
    manifest = wait_final(bucket, job_id)
    assert manifest.status == "succeeded", manifest.error
    assert manifest.inputs[0].key == ref.key and manifest.params["style"] == "noir"
    # MinIO redelivers after a timeout: the same job, no second run.
    again = client.post("/events/minio", json=minio_event(ref), headers=AUTH)
    assert again.status_code == 200 and again.json()["outcomes"][0]["action"] == "duplicate"


def test_missing_or_wrong_token_is_401_and_enqueues_nothing(client, bucket, http_settings, caplog):
    ref, job_id = upload(bucket, "inbox/filter/http/token.png")
    before = claims(http_settings)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        for path in ("/events/minio", "/events/s3"):
            response = client.post(path, json=minio_event(ref), headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
    assert "401 missing or wrong bearer token" in caplog.text
    assert claims(http_settings) == before
    assert bucket.read_manifest(job_id) is None
    # The same event with the token is a job: the refusals were about the token alone.
    response = client.post("/events/s3", json=s3_notification(ref), headers=AUTH)
    assert response.status_code == 200 and response.json()["outcomes"][0]["job_id"] == job_id
    assert wait_final(bucket, job_id).status == "succeeded"


BAD_BODIES = {
    "not json": b"{not json",
    "not utf-8": b"\xff\xfe{}",
    "not an object": b"[1, 2]",
    "no records": b'{"EventName": "s3:ObjectCreated:Put"}',
    "records not a list": b'{"Records": {"eventName": "x"}}',
    "record without s3": b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}',
    "deep nesting": b"[" * 30_000 + b"]" * 30_000,  # RecursionError in json, under the size limit
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_malformed_bodies_are_400(client, http_settings, name, caplog):
    before = claims(http_settings)
    response = client.post("/events/minio", content=BAD_BODIES[name], headers=AUTH)
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    assert "400" in caplog.text
    assert claims(http_settings) == before


@pytest.mark.parametrize("encoded_key", [
    "inbox%2Ffilter%2Fbad%0Akey.png",  # a newline once decoded
    "inbox/filter/bad%00nul.png",
    "inbox/filter/../manifests/x.json",
    "inbox%2Ffilter%2F..%2F..%2Fetc.png",
])
def test_unsafe_keys_are_400(client, bucket, http_settings, encoded_key, caplog):
    ref = ObjectRef(bucket=bucket.name, key="inbox/filter/placeholder.png", etag="0" * 32)
    before = claims(http_settings)
    response = client.post("/events/minio", json=minio_event(ref, encoded_key=encoded_key), headers=AUTH)
    assert response.status_code == 400, response.text
    assert "unsafe key" in response.json()["error"] and "unsafe key" in caplog.text
    assert claims(http_settings) == before


def test_test_event_and_foreign_events_are_200_without_jobs(client, http_settings):
    before = claims(http_settings)
    response = client.post("/events/s3", json={"Service": "Amazon S3", "Event": "s3:TestEvent"}, headers=AUTH)
    assert response.status_code == 200 and response.json() == {"outcomes": []}
    ref = ObjectRef(bucket="another-bucket", key="inbox/filter/x.png", etag="1" * 32)
    response = client.post("/events/minio", json=minio_event(ref), headers=AUTH)
    assert response.status_code == 200 and response.json()["outcomes"][0]["action"] == "ignored"
    assert claims(http_settings) == before


def test_oversize_bodies_are_413(server, client):
    # Declared too large: refused from the headers, before any body is read.
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /events/minio HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Length: {10**9}\r\nContent-Type: application/json\r\n\r\n".encode())
        head = sock.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head
    # Chunked (no Content-Length): refused once the streamed size passes the limit.
    def chunks():
        for _ in range(MAX_BODY // 4096 + 1):
            yield b" " * 4096
    response = client.post("/events/minio", content=chunks(), headers=AUTH)
    assert response.status_code == 413
    assert client.post("/events/sns", content=chunks()).status_code == 413
    assert client.post("/presign", content=chunks(), headers=AUTH).status_code == 413


# -- SNS --------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_notification_with_a_valid_signature(client, bucket, sns, version):
    ref, job_id = upload(bucket, f"inbox/filter/http/sns-v{version}.png", Metadata={"style": "sepia"})
    response = sns_post(client, sns.sign(notification(ref), version))
    assert response.status_code == 200, response.text
    assert response.json()["outcomes"][0] == {"key": ref.key, "action": "enqueued", "job_id": job_id, "reason": ""}
    assert wait_final(bucket, job_id).status == "succeeded"
    assert sns.fetched.count(CERT_URL) == 1  # cached after the first message


def test_sns_bad_signatures_are_403(client, bucket, sns, http_settings):
    ref, job_id = upload(bucket, "inbox/filter/http/sns-forged.png")
    before = claims(http_settings)
    signed = sns.sign(notification(ref))
    forged = {**signed, "Message": signed["Message"].replace("sns-forged", "sns-forgeD")}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fetched = len(sns.fetched)
    for message in (
        forged,
        sns.sign(notification(ref), key=other_key),
        {**signed, "Signature": "not base64!"},
        {**signed, "SignatureVersion": "3"},
        {**signed, "SigningCertURL": "https://evil.example.com/cert.pem"},
        {**signed, "SigningCertURL": CERT_URL.replace("https://", "http://")},
        {**signed, "SigningCertURL": CERT_URL.replace("us-east-1", "eu-west-1")},  # not the topic's region
        {**signed, "SigningCertURL": "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"},
        sns.sign(notification(ref, OTHER_TOPIC)),  # signed, but not our topic
        sns.sign({**notification(ref), "Timestamp": sns_time(2 * 3600)}),  # a captured message replayed
        sns.sign({**notification(ref), "Timestamp": sns_time(-3600)}),  # from the future
        {**signed, "Timestamp": sns_time(2 * 3600)},  # an old time on a fresh signature: the signature breaks
    ):
        response = sns_post(client, message)
        assert response.status_code == 403, (message, response.text)
    assert sns.fetched[fetched:] in ([], [CERT_URL])  # never a URL off the SNS host
    replayed = sns_post(client, sns.sign({**notification(ref), "Timestamp": sns_time(2 * 3600)}))
    assert replayed.status_code == 403 and "window" in replayed.text, replayed.text
    assert claims(http_settings) == before
    assert bucket.read_manifest(job_id) is None


def test_sns_subscription_confirmation(client, sns):
    confirmation = {
        "Type": "SubscriptionConfirmation", "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3beb718",
        "TopicArn": TOPIC, "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": SUBSCRIBE_URL, "Timestamp": sns_time(),
    }
    # Another topic: refused before anything is fetched.
    fetched = len(sns.fetched)
    response = sns_post(client, sns.sign({**confirmation, "TopicArn": OTHER_TOPIC}))
    assert response.status_code == 403 and sns.fetched[fetched:] == []
    # A SubscribeURL off the SNS host is never visited.
    response = sns_post(client, sns.sign({**confirmation, "SubscribeURL": "https://evil.example.com/?Action=x"}))
    assert response.status_code == 403 and not [u for u in sns.fetched[fetched:] if "evil" in u]
    assert "evil.example.com" in response.text
    response = sns_post(client, sns.sign(confirmation, "1"))
    assert response.status_code == 200, response.text
    assert response.json() == {"confirmed": TOPIC}
    assert sns.fetched[-1] == SUBSCRIBE_URL


def test_sns_raw_delivery_and_malformed_messages(client, bucket, sns):
    ref, _ = upload(bucket, "inbox/filter/http/sns-raw.png")
    raw = client.post("/events/sns", json=s3_notification(ref),
                      headers={"x-amz-sns-message-type": "Notification", "x-amz-sns-rawdelivery": "true"})
    assert raw.status_code == 403
    assert client.post("/events/sns", json=s3_notification(ref)).status_code == 403  # headers stripped
    assert client.post("/events/sns", content=b"{nope").status_code == 400
    assert sns_post(client, {**notification(ref), "Type": "Bogus"}).status_code == 400
    signed = sns.sign(notification(ref))
    mismatched = client.post("/events/sns", content=json.dumps(signed),
                             headers={"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert mismatched.status_code == 400
    not_s3 = sns.sign({**notification(ref), "Message": "hello"})
    assert sns_post(client, not_s3).status_code == 400


# -- broker down, health, presign -------------------------------------------------------------

def test_broker_down_is_503_and_health_says_why(http_settings, bucket, no_event_source):
    down = http_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{refused_port()}/0"})
    handler = Handler.from_settings(down)
    ref, job_id = upload(bucket, "inbox/filter/http/broker-down.png")
    with running(create_app(down, handler)) as url, httpx.Client(base_url=url, timeout=60) as c:
        response = c.post("/events/minio", json=minio_event(ref), headers=AUTH)
        assert response.status_code == 503, response.text
        health = c.get("/health")
    assert health.status_code == 503
    report = health.json()
    assert report["ok"] is False and report["broker"]["reachable"] is False and report["broker"]["error"]
    assert report["bucket"]["reachable"] is True
    assert bucket.read_manifest(job_id) is None


def test_health_lists_the_runner(client):
    response = client.get("/health")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["ok"] and report["broker"]["reachable"] and report["bucket"]["reachable"]
    assert set(report["queue"]) == {"name", "ready", "delayed", "dead_lettered"}
    assert report["runners"] and not report["runners"][0]["stale"]


def test_presign_over_http_gives_a_working_upload(client, bucket, settings):
    assert client.post("/presign", json={"recipe": "filter"}).status_code == 401
    assert client.post("/presign", json={"recipe": "Bad Name"}, headers=AUTH).status_code == 400
    assert client.post("/presign", json={"recipe": "filter", "content_type": "text/html"},
                       headers=AUTH).status_code == 400
    assert client.post("/presign", json={"recipe": "filter", "params": [1]}, headers=AUTH).status_code == 400
    response = client.post("/presign", headers=AUTH, json={
        "recipe": "filter", "filename": "cat.png", "content_type": "image/png", "params": {"style": "cartoon"}})
    assert response.status_code == 200, response.text
    up = PresignedUpload.model_validate(response.json())
    assert up.key.startswith(f"inbox/filter/{up.job_id}/")
    post_upload(up, png_bytes(), "cat.png", "image/png")
    # The event source is stopped here, so deliver the store's event as MinIO would.
    head = bucket.s3.head_object(Bucket=bucket.name, Key=up.key)
    ref = ObjectRef(bucket=bucket.name, key=up.key, etag=head["ETag"].strip('"'), version_id=head.get("VersionId"))
    delivered = client.post("/events/minio", json=minio_event(ref), headers=AUTH)
    assert delivered.json()["outcomes"][0]["job_id"] == up.job_id
    manifest = wait_final(bucket, up.job_id)
    assert manifest.status == "succeeded", manifest.error
    assert manifest.params["style"] == "cartoon"
    # The reply's manifest_url reads the private manifest without credentials, and the
    # renewal route gives a fresh one plus a link per output.
    got = httpx.get(up.manifest_url)
    assert got.status_code == 200 and got.json()["job_id"] == up.job_id
    assert httpx.get(f"{settings.s3_endpoint_url}/{bucket.name}/{up.manifest_key}").status_code in (401, 403)
    assert client.get("/manifest-url", params={"job_id": up.job_id}).status_code == 401
    link = client.get("/manifest-url", params={"job_id": up.job_id}, headers=AUTH).json()
    assert httpx.get(link["manifest_url"]).json()["status"] == "succeeded"
    [(key, url)] = link["outputs"].items()
    assert key == manifest.outputs[0].key and httpx.get(url).content[:4] == b"\x89PNG"
    bad = client.get("/manifest-url", params={"job_id": "no such/id"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_params"


def test_presign_over_http_validates_recipe_and_params(client, bucket):
    def inbox_count() -> int:
        pages = bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix="inbox/")
        return sum(len(page.get("Contents", [])) for page in pages)

    before = inbox_count()
    for body, code in (({"recipe": "nosuch"}, "unknown_recipe"),
                       ({"recipe": "filter", "params": {"style": "bogus"}}, "invalid_params"),
                       ({"recipe": "img2img"}, "invalid_params")):  # prompt is required
        response = client.post("/presign", json=body, headers=AUTH)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == code, response.text
    assert "available: " in client.post("/presign", json={"recipe": "nosuch"}, headers=AUTH).json()["error"]
    assert inbox_count() == before



def test_metrics_count_handler_outcomes(client, bucket):
    def scrape() -> dict:
        response = client.get("/metrics")  # no token needed: counts only
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return metric_samples(response.text)

    before = scrape()
    ref, job_id = upload(bucket, "inbox/filter/http/metrics.png", Metadata={"style": "noir"})
    for expected in ("enqueued", "duplicate"):
        response = client.post("/events/s3", json=s3_notification(ref), headers=AUTH)
        assert response.json()["outcomes"][0]["action"] == expected
    after = scrape()
    for outcome in ("enqueued", "duplicate"):
        grew = (metric_value(after, "bucketbrush_handler_events_total", outcome=outcome)
                - metric_value(before, "bucketbrush_handler_events_total", outcome=outcome))
        assert grew == 1, outcome
    assert wait_final(bucket, job_id).status == "succeeded"
