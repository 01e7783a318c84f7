"""Lifecycle rules really delete objects on the local stack (SeaweedFS path TTLs)."""

from __future__ import annotations

import time
import uuid

import pytest

from bucketbrush.store import Bucket
from infra.bucket import lifecycle_rules
from infra.seaweedfs import apply_retention, ttl_rules

pytestmark = pytest.mark.e2e


def test_rules_become_ttls(settings):
    # The default tenant's (tests of tenants add their own rules for their prefixes).
    rules = {p: t for p, t in ttl_rules(lifecycle_rules(settings)) if not p.startswith(settings.tenants_prefix)}
    assert rules == {"inbox/": "1d", "jobs/": "1d", "conversations/": "1d", "outputs/": "7d", "manifests/": "30d",
                     "index/": "30d"}


def test_bucket_lifecycle_configuration_is_stored(bucket):
    rules = bucket.s3.get_bucket_lifecycle_configuration(Bucket=bucket.name)["Rules"]
    assert {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules}["outputs/"] == 7


def test_the_rules_up_sets_really_delete(stack, settings):
    """The retention `up` applies (infra.seaweedfs.apply_retention, from the lifecycle rules),
    on a bucket of its own with the days counted in minutes: uploads and outputs under it are
    deleted by SeaweedFS itself; objects outside the rules' folders stay."""
    short = settings.model_copy(update={"bucket": f"retention-real-{uuid.uuid4().hex[:8]}", "seaweedfs_ttl_unit": "m",
                                        "outputs_retention_days": 1, "manifests_retention_days": 0})
    s3 = Bucket(short).s3
    s3.create_bucket(Bucket=short.bucket)
    lines = apply_retention(stack.read_state().seaweedfs_master, short)
    lines = [line for line in lines if f"/{short.tenants_prefix}" not in line]
    assert lines == [f"seaweedfs ttl: /buckets/{short.bucket}/{p} 1m"
                     for p in ("inbox/", "jobs/", "conversations/", "outputs/")]
    doomed = ["inbox/filter/old.png", "outputs/job-1/old.png", "jobs/old.json", "conversations/c1/old.json"]
    for key in [*doomed, "keep/stays.txt"]:
        s3.put_object(Bucket=short.bucket, Key=key, Body=b"x")
    bucket = Bucket(short)
    # A 1-minute TTL; SeaweedFS deletes on its own schedule after that, so wait generously.
    deadline = time.monotonic() + 300
    while left := [k for k in doomed if bucket.exists(k)]:
        assert time.monotonic() < deadline, f"still there after 300 s under a 1m TTL: {left}"
        time.sleep(2)
    assert bucket.exists("keep/stays.txt")
