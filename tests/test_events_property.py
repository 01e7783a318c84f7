"""Property tests at the edge: whatever arrives, the parsers answer with records, "not an
upload" (None) or InvalidEvent, never another exception; keys survive every URL encoding seen."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.layout import unsafe_key
from functions.events import InvalidEvent, S3Record, parse_records
from functions.sources.seaweedfs import iter_json_objects, record_from_event
from tests.helpers import EVENTS

# Field names the parsers look for, so random structures reach past the first check.
FIELDS = [
    "Records", "Event", "eventName", "eventSource", "eventTime", "s3", "bucket", "object", "name", "key",
    "size", "eTag", "versionId", "sequencer", "directory", "eventNotification", "newEntry", "oldEntry",
    "newParentPath", "isDirectory", "attributes", "fileSize", "md5", "extended", "tsNs",
    "Seaweed-X-Amz-ETag", "Seaweed-X-Amz-Version-Id",
]
BUCKET = "bbtest"
FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point, lone surrogates included (JSON's "\ud800" decodes to one), and often.
ANY_CHAR = st.characters(exclude_categories=()) | st.characters(categories=["Cs"])


def any_text(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    # st.text() drops surrogates from any alphabet; join the characters ourselves.
    return st.lists(ANY_CHAR, min_size=min_size, max_size=max_size).map("".join)

leaves = (st.none() | st.booleans() | st.integers() | st.floats() | any_text(max_size=12)
          | st.sampled_from(["ObjectCreated:Put", "s3:ObjectCreated:Copy", "ObjectRemoved:Delete", BUCKET,
                             f"/buckets/{BUCKET}", f"/buckets/{BUCKET}/inbox/filter", "1795305199317133453",
                             "s3:TestEvent", "inbox/filter/a.png", ""]))
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=6),
    max_leaves=25,
)


def _recorded_payloads() -> list[Any]:
    payloads = [json.loads(p.read_text()) for p in sorted(EVENTS.glob("*/*.json"))]
    return [p for p in payloads if isinstance(p, dict)]


def _recorded_filer_events() -> list[dict[str, Any]]:
    return [e for p in sorted(EVENTS.glob("seaweedfs/*.txt")) for e in iter_json_objects([p.read_text()])]


S3_PAYLOADS = _recorded_payloads()
FILER_EVENTS = _recorded_filer_events()


@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """``value`` with one subtree replaced or removed (mostly deep inside, where bugs hide)."""
    if isinstance(value, (dict, list)) and value and depth < 12 and draw(st.integers(0, 4)):
        copy = dict(value) if isinstance(value, dict) else list(value)
        slot = draw(st.sampled_from(sorted(copy) if isinstance(copy, dict) else range(len(copy))))
        if draw(st.integers(0, 5)) == 0:
            del copy[slot]
        else:
            copy[slot] = draw(mutated(copy[slot], depth + 1))
        return copy
    return draw(json_values)


@st.composite
def mutated_many(draw: st.DrawFn, originals: list[Any]) -> Any:
    value = draw(st.sampled_from(originals))
    for _ in range(draw(st.integers(1, 3))):
        value = draw(mutated(value))
    return value


@st.composite
def corrupted_bytes(draw: st.DrawFn, originals: list[Any]) -> bytes:
    """A recorded payload's JSON text with a few bytes flipped, inserted or cut."""
    data = bytearray(json.dumps(draw(st.sampled_from(originals))).encode())
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["flip", "insert", "cut"])):
            case "flip" if pos < len(data):
                data[pos] ^= draw(st.integers(1, 255))
            case "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
            case _:
                del data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


def parses_or_refuses(payload: Any) -> list[S3Record] | None:
    try:
        records = parse_records(payload)
    except InvalidEvent:
        return None
    assert isinstance(records, list) and all(isinstance(r, S3Record) for r in records)
    for r in records:
        # What the handler does first with every record must not raise either.
        assert unsafe_key(r.key) is None or isinstance(unsafe_key(r.key), str)
        assert isinstance(r.is_created, bool) and r.ref.bucket == r.bucket
    return records


# -- parse_records ----------------------------------------------------------------------------

@FAST
@given(st.binary(max_size=300) | any_text(max_size=300))
def test_parse_records_on_random_bytes_and_text(payload):
    parses_or_refuses(payload)


@FAST
@given(json_values | st.dictionaries(st.just("Records"), json_values, min_size=1)
       | st.builds(lambda rs: {"Records": rs}, st.lists(json_values, max_size=3)))
def test_parse_records_on_random_json(value):
    parses_or_refuses(value)
    try:
        text = json.dumps(value)
    except (ValueError, UnicodeEncodeError):  # not representable as JSON text
        return
    parses_or_refuses(text)
    parses_or_refuses(text.encode("utf-8", "surrogatepass"))


@FAST
@given(mutated_many(S3_PAYLOADS))
def test_parse_records_on_mutated_recorded_payloads(value):
    parses_or_refuses(value)


@FAST
@given(corrupted_bytes(S3_PAYLOADS))
def test_parse_records_on_corrupted_recorded_bytes(data):
    parses_or_refuses(data)


@FAST
@given(any_text(1, 40))
def test_any_json_string_key_parses_and_is_checked(key):
    """JSON can carry keys no S3 store would accept (lone surrogates): the handler's first
    check must still answer instead of raising."""
    [record] = parse_records(json.dumps(_event(key)))
    reason = unsafe_key(record.key)
    assert reason is None or isinstance(reason, str)


def _event(key: str, etag: str = '"d41d8cd98f00b204e9800998ecf8427e"') -> dict[str, Any]:
    return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": BUCKET}, "object": {"key": key, "size": 1, "eTag": etag}}}]}


ENCODINGS = {
    "aws (quote_plus)": quote_plus,
    "localstack (%20)": lambda k: quote(k, safe="/"),
    "moto (%2F)": lambda k: quote(k, safe=""),
}


@FAST
@pytest.mark.parametrize("encode", ENCODINGS.values(), ids=ENCODINGS.keys())
@given(key=st.text(min_size=1, max_size=120))
def test_keys_round_trip_through_url_encoding(encode, key):
    [record] = parse_records(json.dumps(_event(encode(key))))
    assert record.key == key
    # Decoded once: the same object gives the same job whichever emitter announced it.
    plain = ObjectRef(bucket=BUCKET, key=key, etag="d41d8cd98f00b204e9800998ecf8427e", size=1)
    assert job_id_for(record.ref) == job_id_for(plain)


# -- the handler's key check ------------------------------------------------------------------

@FAST
@given(any_text(max_size=300))
def test_unsafe_key_answers_for_any_string(key):
    reason = unsafe_key(key)
    assert reason is None or (isinstance(reason, str) and reason)


segment = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/\x7f"),
                  min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))


@FAST
@given(st.lists(segment, min_size=1, max_size=8))
def test_unsafe_key_accepts_ordinary_keys(segments):
    key = "/".join(segments)
    if len(key.encode()) <= 1024:
        assert unsafe_key(key) is None


@FAST
@given(st.lists(segment, max_size=4), st.lists(segment, max_size=4),
       st.sampled_from([".", "..", "\x00", "\n", "\x1f", "\x7f", "leading/"]))
def test_unsafe_key_refuses_traversal_and_control_characters(before, after, bad):
    if bad == "leading/":
        key = "/" + "/".join(before + after)
    elif bad in (".", ".."):
        key = "/".join([*before, bad, *after])
    else:
        key = "/".join(before) + bad + "/".join(after)
    assert unsafe_key(key) is not None


@FAST
@given(st.integers(1025, 3000))
def test_unsafe_key_refuses_long_keys(n):
    assert unsafe_key("a" * n) is not None and unsafe_key("é" * (n // 2 + 1)) is not None


# -- the SeaweedFS filer subscription ---------------------------------------------------------

def converts_or_refuses(event: Any) -> S3Record | None:
    try:
        record = record_from_event(event, BUCKET)
    except InvalidEvent:
        return None
    assert record is None or isinstance(record, S3Record)
    return record


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=6))
def test_record_from_event_on_random_json(event):
    converts_or_refuses(event)


@FAST
@given(mutated_many(FILER_EVENTS))
def test_record_from_event_on_mutated_recorded_events(event):
    if isinstance(event, dict):
        converts_or_refuses(event)


# Ordinary names: no leading dot and no ".versions" (SeaweedFS's own entries: .uploads/, .system,
# and a versioned object's <key>.versions/ folder; the recorded events in test_events.py show
# those dropped or read as versions).
name = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/"), min_size=1, max_size=16).filter(
    lambda s: not s.startswith(".") and ".versions" not in s)


@FAST
@given(st.lists(name, min_size=1, max_size=4), name, st.integers(1, 2**62))
def test_filer_paths_become_keys(dirs, filename, ts_ns):
    key = "/".join([*dirs, filename])
    event = {"directory": f"/buckets/{BUCKET}/" + "/".join(dirs), "tsNs": str(ts_ns),
             "eventNotification": {"newEntry": {"name": filename, "attributes": {"fileSize": "3"}}}}
    record = converts_or_refuses(event)
    assert record is not None and record.key == key and record.ref.size == 3 and record.is_created


def _docs(objs: list[dict[str, Any]], pretty: list[bool], logs: list[str]) -> str:
    parts = []
    for i, obj in enumerate(objs):
        if i < len(logs):
            parts.append(logs[i] + "\n")  # weed's own log lines between events
        parts.append(json.dumps(obj, indent=2 if pretty[i % len(pretty)] else None) + "\n")
    return "".join(parts)


def _chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


finite_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
filer_docs = st.lists(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), finite_json, max_size=5),
                      min_size=1, max_size=5)
log_line = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n\r"), max_size=40).filter(
    lambda s: not s.lstrip().startswith("{"))


@FAST
@given(filer_docs, st.lists(st.booleans(), min_size=1, max_size=3), st.lists(log_line, max_size=5),
       st.lists(st.integers(0, 10**6), max_size=12))
def test_iter_json_objects_reassembles_any_chunking(objs, pretty, logs, cuts):
    chunks = _chunked(_docs(objs, pretty, logs), cuts)
    assert list(iter_json_objects(chunks)) == objs


@FAST
@given(st.lists(any_text(max_size=80), max_size=8))
def test_iter_json_objects_on_random_chunks(chunks):
    assert all(isinstance(obj, dict) for obj in iter_json_objects(chunks))


junk = st.builds(lambda a, rest: "{" + a + rest, st.characters(categories=("L", "N")),
                 st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n\r"), max_size=30))


@FAST
@given(junk, filer_docs, st.lists(st.integers(0, 10**6), max_size=8))
def test_iter_json_objects_recovers_after_a_broken_document(bad, objs, cuts):
    """A line that starts like a document but is not one must not stall every event after it."""
    text = bad + "\n" + _docs(objs, [True, False], [])
    assert list(iter_json_objects(_chunked(text, cuts))) == objs


def test_iter_json_objects_survives_deep_nesting():
    deep = '{"a":' * 50_000
    assert list(iter_json_objects([deep, "\n" + json.dumps({"tsNs": "1"}) + "\n"])) == [{"tsNs": "1"}]
