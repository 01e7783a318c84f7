"""Lifecycle rules really delete objects on the local stack (SeaweedFS path TTLs)."""

from __future__ import annotations

import time

import pytest

from infra.bucket import lifecycle_rules
from infra.seaweedfs import apply_ttl_rules, ttl_rules

pytestmark = pytest.mark.e2e


def test_rules_become_ttls(settings):
    rules = dict(ttl_rules(lifecycle_rules(settings)))
    assert rules == {"inbox/": "1d", "jobs/": "1d", "outputs/": "7d", "manifests/": "30d", "index/": "30d"}


def test_bucket_lifecycle_configuration_is_stored(bucket):
    rules = bucket.s3.get_bucket_lifecycle_configuration(Bucket=bucket.name)["Rules"]
    assert {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules}["outputs/"] == 7


def test_object_under_a_short_rule_really_expires(stack, bucket):
    state = stack.read_state()
    apply_ttl_rules(state.seaweedfs_master, bucket.name, [("scratch/", "1m")])
    bucket.s3.put_object(Bucket=bucket.name, Key="scratch/expires.txt", Body=b"short-lived")
    bucket.s3.put_object(Bucket=bucket.name, Key="keep/stays.txt", Body=b"kept")
    assert bucket.exists("scratch/expires.txt")
    deadline = time.monotonic() + 150
    while bucket.exists("scratch/expires.txt"):
        assert time.monotonic() < deadline, "object under a 1m TTL still there after 150 s"
        time.sleep(2)
    assert bucket.exists("keep/stays.txt")
