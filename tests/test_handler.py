"""The handler on its own: Dramatiq's StubBroker for the queue, the stack's Redis for claims and
its SeaweedFS for manifests, on a bucket of its own (the stack's event source does not follow
it, so nothing but this test handles its objects)."""

from __future__ import annotations

import hashlib
import uuid

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from bucketbrush.jobs import JobSpec, ObjectRef, job_id_for
from bucketbrush.routing import all_queues
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from functions.events import S3Record
from functions.handler import Handler
from tests.helpers import png_bytes


@pytest.fixture(scope="module")
def unit_settings(settings: Settings) -> Settings:
    # A bucket per fixture instance: a shuffled run sets a module fixture up more than once.
    unit = settings.model_copy(update={"bucket": f"handler-unit-{uuid.uuid4().hex[:8]}"})
    Bucket(unit).s3.create_bucket(Bucket=unit.bucket)
    return unit


@pytest.fixture
def claims_redis(unit_settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(unit_settings.redis_url)


def put(bucket: Bucket, key: str, body: bytes) -> S3Record:
    bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=body, ContentType="image/png")
    ref = ObjectRef(bucket=bucket.name, key=key, etag=hashlib.md5(body).hexdigest(), size=len(body))
    return S3Record.created("test", ref)


def messages(broker: StubBroker, settings: Settings) -> list[JobSpec]:
    """The job specs waiting in the stub broker's job queues."""
    raw = [m for q in all_queues(settings) if q in broker.queues for m in broker.queues[q].queue]
    return [JobSpec.model_validate(dramatiq.Message.decode(m).args[0]) for m in raw]


def test_upload_is_enqueued_once(unit_settings: Settings, claims_redis: redis.Redis) -> None:
    broker, bucket = StubBroker(), Bucket(unit_settings)
    handler = Handler(unit_settings, bucket, broker, claims_redis)
    record = put(bucket, f"inbox/filter/{uuid.uuid4().hex}.png", png_bytes())
    first = handler.handle_record(record)
    assert first.action == "enqueued"
    assert handler.handle_record(record).action == "duplicate"
    specs = messages(broker, unit_settings)
    assert [s.job_id for s in specs] == [first.job_id]
    assert specs[0].recipe == "filter" and specs[0].input == record.ref
    assert bucket.read_manifest(first.job_id).status == "queued"
    assert handler.claims.holder(first.job_id) == record.ref.identity
    # The claim is remembered for 7 days (docs/architecture.md), then a redelivery is new again.
    assert 7 * 86400 - 60 <= claims_redis.ttl(handler.claims.key(first.job_id)) <= 7 * 86400


def test_a_bad_spec_fails_with_invalid_spec(unit_settings: Settings, claims_redis: redis.Redis) -> None:
    broker, bucket = StubBroker(), Bucket(unit_settings)
    handler = Handler(unit_settings, bucket, broker, claims_redis)
    job_id = f"bad-{uuid.uuid4().hex[:8]}"
    outcome = handler.handle_record(put(bucket, f"jobs/{job_id}.json", b"{not json"))
    assert outcome.action == "rejected" and outcome.job_id == job_id
    manifest = bucket.read_manifest(job_id)
    assert manifest.status == "failed" and manifest.error.code == "invalid_spec"
    assert "not valid JSON" in manifest.error.message
    assert messages(broker, unit_settings) == []


class FailingBroker(StubBroker):
    def enqueue(self, message, *, delay=None):  # noqa: ANN001, ANN201 - Dramatiq's signature
        raise ConnectionError("broker down")


def test_claim_is_released_when_the_enqueue_fails(unit_settings: Settings, claims_redis: redis.Redis) -> None:
    bucket = Bucket(unit_settings)
    handler = Handler(unit_settings, bucket, FailingBroker(), claims_redis)
    record = put(bucket, f"inbox/filter/{uuid.uuid4().hex}.png", png_bytes())
    with pytest.raises(ConnectionError):
        handler.handle_record(record)
    job_id = job_id_for(record.ref)
    assert handler.claims.holder(job_id) is None  # a redelivery can take it again
    retry = Handler(unit_settings, bucket, StubBroker(), claims_redis).handle_record(record)
    assert retry.action == "enqueued" and retry.job_id == job_id


def test_claim_is_released_when_the_queued_manifest_write_fails(unit_settings: Settings,
                                                                 claims_redis: redis.Redis) -> None:
    # The store answers 503 to manifest PUTs (tests/fault_proxy.py), and only to those.
    from botocore.exceptions import ClientError

    from tests.fault_proxy import FaultProxy

    with FaultProxy(unit_settings.s3_endpoint_url) as proxy:
        failing = Bucket(unit_settings.model_copy(update={"s3_endpoint_url": proxy.url}))
        proxy.fail = lambda method, path, body: method == "PUT" and "/manifests/" in path
        broker = StubBroker()
        record = put(Bucket(unit_settings), f"inbox/filter/{uuid.uuid4().hex}.png", png_bytes())
        job_id = job_id_for(record.ref)
        with pytest.raises(ClientError, match="SlowDown"):
            Handler(unit_settings, failing, broker, claims_redis).handle_record(record)
        refused = [r.status for r in proxy.seen("PUT", f"/{unit_settings.bucket}/manifests/")]
        assert refused and set(refused) == {503}  # botocore retried, then gave up
        assert Handler(unit_settings, failing, broker, claims_redis).claims.holder(job_id) is None
        assert messages(broker, unit_settings) == []  # nothing enqueued for a job with no manifest
        # The transport's redelivery, once the store answers again, makes the job.
        proxy.fail = lambda method, path, body: False
        retry = Handler(unit_settings, failing, broker, claims_redis).handle_record(record)
    assert retry.action == "enqueued" and retry.job_id == job_id
    assert [m.job_id for m in messages(broker, unit_settings)] == [job_id]
    assert Bucket(unit_settings).read_manifest(job_id).status == "queued"
