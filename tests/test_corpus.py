"""The bad-input corpus (tests/corpus.py), every case through the bucket on the session stack:
each ends in a final manifest with its stable code, the runner process survives it, and the
next good job succeeds."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from botocore.exceptions import ClientError

from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.samples import landscape
from functions.events import S3Record
from functions.handler import Handler
from tests.corpus import GOOD_INPUT, SEPIA, Case, cases
from tests.helpers import drop, png_bytes, wait_final

pytestmark = pytest.mark.e2e

CASES = cases()


def test_the_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def runner_pid(stack, bucket) -> int:
    wait_final(bucket, drop(bucket, GOOD_INPUT, png_bytes(), Metadata=SEPIA))
    return stack.read_state().process("runner-0").pid


def put_case(settings, bucket, case: Case) -> str:
    """Put the case's object; the id of the job it makes. A key SeaweedFS refuses ('..'
    segments) but AWS S3 stores is delivered to the handler as the event AWS would send."""
    try:
        put = bucket.s3.put_object(Bucket=bucket.name, Key=case.key, Body=case.body, Metadata=case.metadata)
        etag = put["ETag"].strip('"')
    except ClientError:
        assert case.expect == "invalid_key", f"the store refused {case.key!r}"
        etag = hashlib.md5(case.body).hexdigest()
        ref = ObjectRef(bucket=bucket.name, key=case.key, etag=etag, size=len(case.body))
        [outcome] = Handler.from_settings(settings).handle([S3Record.created("aws", ref)])
        assert outcome.action == "rejected", outcome
    if case.is_spec:
        return case.key.removeprefix("jobs/").removesuffix(".json")
    return job_id_for(ObjectRef(bucket=bucket.name, key=case.key, etag=etag))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(stack, settings, bucket, runner_pid, case):
    job_id = put_case(settings, bucket, case)
    good = drop(bucket, f"inbox/filter/corpus/next/{uuid.uuid4().hex}.png", png_bytes(landscape(24, 16)),
                Metadata=SEPIA)
    manifest = wait_final(bucket, job_id, timeout=60)
    if case.expect == "succeeded":
        assert manifest.status == "succeeded", manifest.error
        assert case.check is None or case.check(manifest), manifest.outputs
    else:
        assert manifest.status == "failed" and manifest.error.code == case.expect, manifest.error
        assert manifest.error.message and not manifest.error.retryable
        assert manifest.outputs == []
    # The runner lived through it, and the next job runs.
    assert wait_final(bucket, good).status == "succeeded"
    runner = stack.read_state().process("runner-0")
    assert runner.pid == runner_pid and runner.alive()
