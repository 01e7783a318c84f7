"""The S3 event model on recorded payloads from every emitter."""

from __future__ import annotations

import json

import pytest

from bucketbrush.jobs import ObjectRef, job_id_for
from functions.events import InvalidEvent, parse_records
from functions.sources.seaweedfs import iter_json_objects, record_from_event
from tests.helpers import EVENTS


def load(path: str):
    return json.loads((EVENTS / path).read_text())


def test_aws_documentation_example_decodes_plus_and_percent():
    [record] = parse_records(load("aws/put_doc_example.json"))
    assert record.is_created and record.event_source == "aws:s3"
    assert record.key == "inbox/filter/my holiday photo(1).jpg"
    assert record.ref.version_id == "096fKKXTRTtl3on89fVO.nfljtsv6qko"
    assert record.ref.etag == "d41d8cd98f00b204e9800998ecf8427e"


def test_minio_format():
    [record] = parse_records(load("minio/put_documented.json"))
    assert record.event_source == "minio:s3" and record.is_created  # "s3:ObjectCreated:Put"
    assert record.key == "inbox/filter/a b.png"
    assert record.ref.version_id is None


def test_localstack_space_as_pct20_and_quoted_etag():
    [record] = parse_records(json.dumps(load("localstack/put_space_pct20.json")).encode())
    assert record.key == "inbox/filter/a b.png"
    assert record.ref.etag == "7e1f3b5cfa2c8a0f5d2b4c1e9d8a6b3c"


def test_moto_multipart_duplicates_map_to_one_job():
    # Captured from moto 5.2.5: one multipart upload, two events (Put and CompleteMultipartUpload).
    a, b = parse_records(load("moto/multipart_duplicates.json"))
    assert {a.event_name, b.event_name} == {"ObjectCreated:Put", "ObjectCreated:CompleteMultipartUpload"}
    assert a.key == b.key == "inbox/filter/big.png"  # moto encodes "/" as %2F
    assert a.ref.version_id is None
    assert job_id_for(a.ref) == job_id_for(b.ref)


def test_moto_key_encoding_and_test_event():
    [record] = parse_records(load("moto/put_space_parens.json"))
    assert record.key == "inbox/filter/a b/photo (1).png"
    assert parse_records(load("moto/test_event.json")) == []


def test_same_key_everywhere_gives_same_identity():
    # MinIO form-encodes the space as '+', LocalStack as %20: both decode to one key, so the
    # same bytes (the recordings hold different ETags) at that key are one job either way.
    minio = parse_records(load("minio/put_documented.json"))[0]
    local = parse_records(load("localstack/put_space_pct20.json"))[0]
    assert (minio.ref.bucket, minio.key) == (local.ref.bucket, local.key) == ("bucketbrush", "inbox/filter/a b.png")
    same_bytes = local.ref.model_copy(update={"etag": minio.ref.etag})
    assert same_bytes.identity == minio.ref.identity
    assert job_id_for(same_bytes) == job_id_for(minio.ref)
    assert job_id_for(local.ref) != job_id_for(minio.ref)  # other bytes: another job


def test_job_ids_are_stable_recorded_values():
    """Job ids are data: jobs/<id>.json, claims and users' own ``job_id_for`` calls outlive a
    release. These ids were recorded once; a change to the derivation fails here."""
    ref = ObjectRef(bucket="bucketbrush", key="inbox/filter/a.png", etag="5d41402abc4b2a76b9719d911017c592")
    recorded = "ec00eed0551f72b7c9f673d9"
    assert job_id_for(ref) == recorded
    # The version id is no part of it, a quoted ETag is the same ETag ...
    assert job_id_for(ref.model_copy(update={"version_id": "v1"})) == recorded
    assert job_id_for(ref.model_copy(update={"etag": '"5d41402abc4b2a76b9719d911017c592"'})) == recorded
    # ... and only a ref without an ETag falls back to the version id.
    assert job_id_for(ref.model_copy(update={"etag": None, "version_id": "v1"})) == "fd633eb6fc73772530f3c71a"


def test_s3_test_event_has_no_records():
    assert parse_records(load("aws/test_event.json")) == []


@pytest.mark.parametrize("payload", [
    b"\xff\xfe", "not json", "[]", "{}", '{"Records": "x"}', '{"Records": [{"eventName": 1}]}',
    '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}, "object": {"key": "k"}}}]}',
    "[" * 100_000,
])
def test_garbage_is_rejected_cleanly(payload):
    with pytest.raises(InvalidEvent):
        parse_records(payload)


def test_seaweedfs_subscription_events():
    text = (EVENTS / "seaweedfs/meta_tail_put_delete.txt").read_text()
    events = list(iter_json_objects([text[i:i + 97] for i in range(0, len(text), 97)]))
    assert len(events) == 4  # two directories, the file, its deletion
    records = [r for e in events if (r := record_from_event(e, "bbtest"))]
    [record] = records
    assert record.key == "inbox/filter/a b+c.png"
    assert record.ref.etag == "5d41402abc4b2a76b9719d911017c592"  # md5("hello")
    assert record.ref.size == 5
    assert record.s3.object.sequencer == f"{int(events[2]['tsNs']):020d}"
    assert record_from_event(events[2], "otherbucket") is None


def test_seaweedfs_drops_parts_and_system_entries():
    text = (EVENTS / "seaweedfs/meta_tail_put_delete.txt").read_text()
    event = list(iter_json_objects([text]))[2]
    for directory in ("/buckets/bbtest/.uploads/abc", "/buckets/bbtest/.system", "/buckets/bbtest/.uploads"):
        moved = {**event, "directory": directory,
                 "eventNotification": {**event["eventNotification"], "newParentPath": directory}}
        assert record_from_event(moved, "bbtest") is None


def test_seaweedfs_versioned_bucket_events():
    text = (EVENTS / "seaweedfs/meta_tail_versioned_put_put_delete.txt").read_text()
    records = [r for e in iter_json_objects([text]) if (r := record_from_event(e, "bucketbrush"))]
    # Two uploads of the same key: two versions. Directory updates, old-version metadata
    # updates and the delete marker are not uploads.
    assert [(r.key, r.ref.version_id, r.ref.etag) for r in records] == [
        ("inbox/filter/v.png", "6715ca45ae34d8e85f22e70fadecf411", "5d41402abc4b2a76b9719d911017c592"),
        ("inbox/filter/v.png", "6715ca45a0aaf42c82665650f5343f5d", "6e809cbda0732ac4845916a59016f954"),
    ]


def _subscription(tmp_path, handled):
    from functions.sources.seaweedfs import Cursor, FilerSubscription
    return FilerSubscription(filer="unused:0", bucket="bench", cursor=Cursor(tmp_path / "cursor.txt"),
                             handle=handled.extend)


def test_seaweedfs_out_of_order_stamps_lose_no_event(tmp_path):
    # Recorded from `weed filer.meta.tail` during 3,000 PUTs from 32 threads (3 inversions, up
    # to 1.1 ms): the filer stamps tsNs before appending to its log, so k0539 (stamped earlier)
    # arrives after k0522. A source that skipped "not newer than the last" dropped k0539.
    text = (EVENTS / "seaweedfs/meta_tail_concurrent_out_of_order.txt").read_text()
    events = list(iter_json_objects([text]))
    stamps = [int(e["tsNs"]) for e in events]
    assert stamps[2] < stamps[1]  # the recording really is out of order
    handled = []
    sub = _subscription(tmp_path, handled)
    sub.consume(events, after=None)
    assert [r.key for r in handled] == [f"inbox/race/{n}.png" for n in ("k0514", "k0522", "k0539", "k0534")]
    assert sub.cursor.load() == stamps[-1]


def test_seaweedfs_restart_skips_only_what_the_cursor_covers(tmp_path):
    # After a restart the stream begins a replay margin before the cursor: events at or before
    # it were handled already and are skipped; the ones after it are handed over.
    events = list(iter_json_objects([(EVENTS / "seaweedfs/meta_tail_concurrent_out_of_order.txt").read_text()]))
    handled = []
    _subscription(tmp_path, handled).consume(events, after=int(events[1]["tsNs"]))
    assert [r.key for r in handled] == ["inbox/race/k0534.png"]


def test_seaweedfs_cursor_stays_before_a_failed_event_and_everything_after_is_replayed(tmp_path):
    # Records handed over without waiting (the handler's pool); the second one fails (the
    # broker was down). The cursor stays past the first only, and the stream started again
    # from it hands the failed one over again with everything after it (the handler's claims
    # de-duplicate any that had gone through).
    from concurrent.futures import Future

    from functions.sources.seaweedfs import Cursor, FilerSubscription

    events = list(iter_json_objects([(EVENTS / "seaweedfs/meta_tail_concurrent_out_of_order.txt").read_text()]))
    stamps = [int(e["tsNs"]) for e in events]
    submitted: list[str] = []

    def submit(record, fail_on: str | None = None):
        submitted.append(record.key)
        future: Future = Future()
        if record.key == fail_on:
            future.set_exception(ConnectionError("broker down"))
        else:
            future.set_result(None)
        return future

    cursor = Cursor(tmp_path / "cursor.txt")
    first = FilerSubscription(filer="unused:0", bucket="bench", cursor=cursor, handle=submitted.extend,
                              submit=lambda r: submit(r, fail_on="inbox/race/k0522.png"))
    with pytest.raises(ConnectionError):
        first.consume(events, after=None)
    assert cursor.load() == stamps[0]
    submitted.clear()
    again = FilerSubscription(filer="unused:0", bucket="bench", cursor=cursor, handle=submitted.extend, submit=submit)
    again.consume(events, after=cursor.load())
    assert submitted == [f"inbox/race/{n}.png" for n in ("k0522", "k0539", "k0534")]
    assert cursor.load() == stamps[-1]
