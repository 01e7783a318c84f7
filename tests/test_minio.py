"""MinIO setup through minio-py, checked on the HTTP requests it sends.

No MinIO server runs here, so the boundary replaced is the connection: a urllib3 PoolManager
that records each request and answers with responses shaped like MinIO's (status, headers,
XML bodies as MinIO documents them). The replies are hand-written from MinIO's documentation,
not recorded from a server. Everything above the connection is the real minio-py.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest
import urllib3
from pydantic import SecretStr

from bucketbrush.errors import BucketbrushError
from bucketbrush.settings import Settings
from infra.bucket import lifecycle_rules
from infra.minio import apply_minio, mc_commands, minio_client, webhook_arn

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MINIO_HEADERS = {"Server": "MinIO", "X-Amz-Request-Id": "17D7E6F2B6A3A5B4", "Accept-Ranges": "bytes",
                 "Vary": "Origin", "X-Content-Type-Options": "nosniff"}
EMPTY_NOTIFICATION = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
                      b'<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                      b"</NotificationConfiguration>")
FOREIGN_NOTIFICATION = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><QueueConfiguration>'
    b"<Id>audit</Id><Filter><S3Key><FilterRule><Name>prefix</Name><Value>audit/</Value></FilterRule></S3Key>"
    b"</Filter><Queue>arn:minio:sqs::audit:kafka</Queue><Event>s3:ObjectRemoved:*</Event></QueueConfiguration>"
    b"<QueueConfiguration><Id>bucketbrush-inbox</Id><Filter><S3Key><FilterRule><Name>prefix</Name>"
    b"<Value>old-inbox/</Value></FilterRule></S3Key></Filter><Queue>arn:minio:sqs::bucketbrush:webhook</Queue>"
    b"<Event>s3:ObjectCreated:*</Event></QueueConfiguration></NotificationConfiguration>"
)
ARN_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidArgument</Code><Message>A specified destination '
    b"ARN does not exist or is not well-formed. Verify the destination ARN.</Message><BucketName>images"
    b"</BucketName><Resource>/images</Resource><RequestId>17D7E6F2B6A3A5B4</RequestId><HostId>dd9025bab4ad464b"
    b"</HostId></Error>"
)


class RecordingPool(urllib3.PoolManager):
    """Records minio-py's requests; answers each from ``responses`` keyed by (method, subresource)."""

    def __init__(self, responses: dict[tuple[str, str], tuple[int, bytes]]) -> None:
        super().__init__()
        self.responses = responses
        self.requests: list[dict] = []

    def urlopen(self, method, url, redirect=True, **kw):  # noqa: D102 - urllib3's signature
        parts = urlsplit(url)
        body = kw.get("body") or b""
        self.requests.append({"method": method, "path": parts.path, "query": parts.query,
                              "headers": dict(kw.get("headers") or {}), "body": body})
        sub = parts.query.split("=")[0]
        status, data = self.responses.get((method, sub), (200, b""))
        headers = {**MINIO_HEADERS, "Content-Length": str(len(data))}
        if data:
            headers["Content-Type"] = "application/xml"
        return urllib3.HTTPResponse(body=io.BytesIO(data), headers=headers, status=status,
                                    preload_content=kw.get("preload_content", True), request_method=method)

    def sent(self, method: str, sub: str) -> dict:
        [request] = [r for r in self.requests if r["method"] == method and r["query"].split("=")[0] == sub]
        return request


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, s3_endpoint_url="http://minio.test:9000", s3_access_key="ak",
                    s3_secret_key=SecretStr("sk"), bucket="images", inbox_retention_days=2,
                    outputs_retention_days=7, manifests_retention_days=0)


def client_with(settings, responses):
    pool = RecordingPool(responses)
    return minio_client(settings, http_client=pool), pool


def _xml(body: bytes) -> ET.Element:
    """Parse, dropping the S3 namespace from every tag."""
    root = ET.fromstring(body)
    for el in root.iter():
        el.tag = el.tag.removeprefix(NS)
    return root


def _queue_configs(body: bytes) -> dict[str, dict]:
    root = _xml(body)
    assert root.tag == "NotificationConfiguration"
    return {
        q.findtext("Id"): {
            "queue": q.findtext("Queue"),
            "events": [e.text for e in q.findall("Event")],
            "rules": [(r.findtext("Name"), r.findtext("Value")) for r in q.iter("FilterRule")],
        }
        for q in root.findall("QueueConfiguration")
    }


def test_apply_creates_bucket_routes_events_and_sets_ilm(settings):
    client, pool = client_with(settings, {
        ("HEAD", ""): (404, b""),  # no such bucket yet
        ("GET", "notification"): (200, EMPTY_NOTIFICATION),
    })
    lines = apply_minio(client, settings)
    assert [(r["method"], r["path"], r["query"].split("=")[0]) for r in pool.requests] == [
        ("HEAD", "/images", ""), ("PUT", "/images", ""), ("GET", "/images", "notification"),
        ("PUT", "/images", "notification"), ("PUT", "/images", "lifecycle")]
    for request in pool.requests:
        assert request["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=ak/")
        assert "/us-east-1/s3/aws4_request" in request["headers"]["Authorization"]

    routes = _queue_configs(pool.sent("PUT", "notification")["body"])
    arn = "arn:minio:sqs::bucketbrush:webhook"
    assert routes == {
        "bucketbrush-inbox": {"queue": arn, "events": ["s3:ObjectCreated:*"], "rules": [("prefix", "inbox/")]},
        "bucketbrush-jobs": {"queue": arn, "events": ["s3:ObjectCreated:*"], "rules": [("prefix", "jobs/")]},
        "bucketbrush-conversations": {"queue": arn, "events": ["s3:ObjectCreated:*"],
                                      "rules": [("prefix", "conversations/")]},
    }

    lifecycle = pool.sent("PUT", "lifecycle")
    assert lifecycle["headers"].get("Content-MD5")  # S3 and MinIO refuse a lifecycle PUT without it
    root = _xml(lifecycle["body"])
    assert root.tag == "LifecycleConfiguration"
    rules = {
        rule.findtext("ID"): {
            "status": rule.findtext("Status"), "prefix": rule.findtext("Filter/Prefix"),
            "days": int(rule.findtext("Expiration/Days")),
            "abort": rule.findtext("AbortIncompleteMultipartUpload/DaysAfterInitiation"),
            "noncurrent": int(rule.findtext("NoncurrentVersionExpiration/NoncurrentDays")),
        }
        for rule in root.findall("Rule")
    }
    # manifests_retention_days=0: no rule for manifests.
    assert rules == {
        "bucketbrush-inbox": {"status": "Enabled", "prefix": "inbox/", "days": 2, "abort": "1", "noncurrent": 2},
        "bucketbrush-jobs": {"status": "Enabled", "prefix": "jobs/", "days": 2, "abort": None, "noncurrent": 2},
        "bucketbrush-conversations": {"status": "Enabled", "prefix": "conversations/", "days": 2, "abort": None,
                                      "noncurrent": 2},
        "bucketbrush-outputs": {"status": "Enabled", "prefix": "outputs/", "days": 7, "abort": None,
                                "noncurrent": 7},
    }
    assert lines[0] == "bucket images: created"
    assert lines[-1] == "lifecycle: inbox/ 2d, jobs/ 2d, conversations/ 2d, outputs/ 7d"


def test_apply_is_idempotent_and_keeps_other_routes(settings):
    client, pool = client_with(settings, {("GET", "notification"): (200, FOREIGN_NOTIFICATION)})
    lines = apply_minio(client, settings, arn=webhook_arn(region="eu-central-1"))
    assert lines[0] == "bucket images: exists"
    assert not [r for r in pool.requests if r["method"] == "PUT" and r["query"] == ""]  # no make_bucket
    routes = _queue_configs(pool.sent("PUT", "notification")["body"])
    assert set(routes) == {"audit", "bucketbrush-inbox", "bucketbrush-jobs", "bucketbrush-conversations"}
    assert routes["audit"] == {"queue": "arn:minio:sqs::audit:kafka", "events": ["s3:ObjectRemoved:*"],
                               "rules": [("prefix", "audit/")]}
    # Our stale route (old prefix) was replaced, not duplicated.
    assert routes["bucketbrush-inbox"]["rules"] == [("prefix", "inbox/")]
    assert routes["bucketbrush-inbox"]["queue"] == "arn:minio:sqs:eu-central-1:bucketbrush:webhook"


def test_no_retention_deletes_the_lifecycle(settings):
    settings = settings.model_copy(update={"inbox_retention_days": 0, "outputs_retention_days": 0})
    client, pool = client_with(settings, {("GET", "notification"): (200, EMPTY_NOTIFICATION)})
    assert apply_minio(client, settings)[-1] == "lifecycle: none"
    assert pool.sent("DELETE", "lifecycle")["path"] == "/images"


def test_missing_webhook_target_explains_the_server_setting(settings):
    client, _ = client_with(settings, {("GET", "notification"): (200, EMPTY_NOTIFICATION),
                                       ("PUT", "notification"): (400, ARN_ERROR)})
    with pytest.raises(BucketbrushError, match="MINIO_NOTIFY_WEBHOOK_ENABLE_bucketbrush=on") as info:
        apply_minio(client, settings)
    assert info.value.code == "minio_webhook_missing"


def test_mc_commands_match_the_applied_setup(settings):
    text = mc_commands(settings, alias="prod", endpoint="http://functions:8080/events/minio")
    assert "mc admin config set prod notify_webhook:bucketbrush endpoint=\"http://functions:8080/events/minio\"" in text
    assert "mc event add prod/images arn:minio:sqs::bucketbrush:webhook --event put --prefix inbox/" in text
    assert "mc event add prod/images arn:minio:sqs::bucketbrush:webhook --event put --prefix jobs/" in text
    assert "mc event add prod/images arn:minio:sqs::bucketbrush:webhook --event put --prefix conversations/" in text
    ilm = re.search(r"mc ilm rule import prod/images <<'EOF'\n(.*?)\nEOF", text, re.S)
    assert json.loads(ilm.group(1)) == {"Rules": lifecycle_rules(settings)}
    assert 'api cors_allow_origin="*"' in text


def test_client_follows_the_endpoint_scheme(settings):
    client = minio_client(settings.model_copy(update={"s3_endpoint_url": "https://minio.example.com"}))
    assert client._base_url.is_https and client._base_url.host == "minio.example.com"
    with pytest.raises(BucketbrushError):
        minio_client(settings.model_copy(update={"s3_endpoint_url": None}))


def test_manifests_route_for_subscribers(settings):
    subscribers = "arn:minio:sqs::subscribers:webhook"
    client, pool = client_with(settings, {("GET", "notification"): (200, FOREIGN_NOTIFICATION)})
    lines = apply_minio(client, settings, manifests_arn=subscribers)
    routes = _queue_configs(pool.sent("PUT", "notification")["body"])
    assert set(routes) == {"audit", "bucketbrush-inbox", "bucketbrush-jobs", "bucketbrush-conversations",
                           "bucketbrush-manifests"}
    assert routes["bucketbrush-manifests"] == {"queue": subscribers, "events": ["s3:ObjectCreated:*"],
                                               "rules": [("prefix", "manifests/"), ("suffix", ".json")]}
    assert "events: s3:ObjectCreated:* under manifests/*.json -> arn:minio:sqs::subscribers:webhook" in lines
    # Applied again without it, the route goes away (it is ours), the others stay.
    client, pool = client_with(settings, {("GET", "notification"): (200, pool.sent("PUT", "notification")["body"])})
    apply_minio(client, settings)
    assert set(_queue_configs(pool.sent("PUT", "notification")["body"])) == {
        "audit", "bucketbrush-inbox", "bucketbrush-jobs", "bucketbrush-conversations"}
    text = mc_commands(settings, alias="prod", manifests_arn=subscribers)
    assert f"mc event add prod/images {subscribers} --event put --prefix manifests/ --suffix .json" in text
    # Manifests must never reach the functions' own webhook: it would get every manifest write.
    with pytest.raises(BucketbrushError) as info:
        apply_minio(client, settings, manifests_arn=webhook_arn())
    assert info.value.code == "invalid_route"
