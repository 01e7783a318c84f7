"""Tenants without servers: the layout's key rules, the generated AWS/MinIO policies against a
recorded AWS document, the tenants file, confinement of recipe-loaded keys, webhook scoping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bucketbrush.errors import InvalidWebhook, OutsideTenant
from bucketbrush.jobs import JobSpec, ObjectRef, WebhookTarget
from bucketbrush.layout import Layout, NotAnInput
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from bucketbrush.tenants import Limits, Tenant, TenantsFile
from bucketbrush.webhooks import endpoints_for
from gpu_runner.runner import get_input
from infra.tenants import SESSION_POLICY_MAX_CHARS, assume_role_kwargs, iam_policy, seaweedfs_actions, session_policy

RECORDED = Path(__file__).parent / "data" / "aws" / "iam_home_directory_policy.json"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, bucket="studio", state_dir=tmp_path)


def test_every_key_family_moves_under_the_tenant(settings: Settings) -> None:
    root = Layout(settings)
    acme = root.for_tenant("acme")
    assert acme.tenant == "acme" and root.tenant is None
    for family in ("inbox", "jobs", "outputs", "manifests", "cancel", "index"):
        assert getattr(acme, family) == "tenants/acme/" + getattr(root, family)
    assert acme.status == root.status == "status/"  # runners' heartbeats stay shared
    assert acme.manifest_key("j1") == "tenants/acme/manifests/j1.json"
    assert acme.output_key("j1", "out.png") == "tenants/acme/outputs/j1/out.png"
    assert acme.for_tenant("b").inbox == "tenants/b/inbox/"  # from the root, never nested
    assert Layout(settings.model_copy(update={"tenant": "acme"})).manifests == acme.manifests


def test_a_family_added_later_is_tenanted_too(settings: Settings) -> None:
    root = Layout(settings)
    root.conversations = "conversations/"  # what a new key family looks like to the layout
    assert root.for_tenant("acme").conversations == "tenants/acme/conversations/"


def test_parse_input_says_whose_key_it_is(settings: Settings) -> None:
    root = Layout(settings)
    upload = root.parse_input("tenants/acme/inbox/filter/0123456789abcdef01234567/cat.png")
    assert (upload.kind, upload.recipe, upload.job_id, upload.tenant) == (
        "upload", "filter", "0123456789abcdef01234567", "acme")
    spec = root.parse_input("tenants/acme/jobs/mine.json")
    assert (spec.kind, spec.job_id, spec.tenant) == ("spec", "mine", "acme")
    assert root.parse_input("inbox/filter/cat.png").tenant is None
    with pytest.raises(NotAnInput) as bad:
        root.parse_input("tenants/Not_A_Name/inbox/filter/cat.png")
    assert bad.value.rejected
    for ignored in ("tenants/acme/outputs/j/x.png", "tenants/acme/manifests/j.json", "tenants/acme"):
        with pytest.raises(NotAnInput):
            root.parse_input(ignored)
    # A tenant's layout routes its own keys only.
    with pytest.raises(NotAnInput):
        root.for_tenant("acme").parse_input("tenants/other/inbox/filter/cat.png")


def test_ownership(settings: Settings) -> None:
    root, acme = Layout(settings), Layout(settings).for_tenant("acme")
    assert acme.owns("tenants/acme/inbox/filter/a.png")
    assert not acme.owns("tenants/acmex/inbox/filter/a.png")
    assert not acme.owns("tenants/other/inbox/filter/a.png")
    assert not acme.owns("inbox/filter/a.png")
    assert root.owns("inbox/filter/a.png") and not root.owns("tenants/acme/inbox/filter/a.png")
    with pytest.raises(ValueError, match="bad tenant name"):
        root.for_tenant("../x")


def test_manifest_events_are_scoped(settings: Settings) -> None:
    """What `watch` and the sweep read: a layout names only its own tenant's manifests."""
    root, acme = Layout(settings), Layout(settings).for_tenant("acme")
    assert acme.job_id_of_manifest("tenants/acme/manifests/j1.json") == "j1"
    assert acme.job_id_of_manifest("manifests/j1.json") is None
    assert acme.job_id_of_manifest("tenants/other/manifests/j1.json") is None
    assert root.job_id_of_manifest("tenants/acme/manifests/j1.json") is None
    assert root.job_id_of_manifest("manifests/j1.json") == "j1"


def test_keys_a_recipe_loads_stay_in_the_tenant(settings: Settings) -> None:
    """A param naming a key (a mask, a pose) is refused before any request when it is another
    tenant's (the check comes before the GET: no server needed to see it refuse)."""
    bucket = Bucket(settings).for_tenant("acme")
    with pytest.raises(OutsideTenant, match="tenants/other/"):
        get_input(bucket, ObjectRef(bucket="studio", key="tenants/other/inbox/filter/a.png"))
    with pytest.raises(OutsideTenant):
        get_input(bucket, ObjectRef(bucket="studio", key="inbox/filter/a.png"))
    with pytest.raises(OutsideTenant):
        get_input(Bucket(settings), ObjectRef(bucket="studio", key="tenants/acme/inbox/filter/a.png"))


def test_specs_and_manifests_carry_the_tenant() -> None:
    ref = ObjectRef(bucket="b", key="tenants/acme/jobs/x.json")
    spec = JobSpec(job_id="x", recipe="filter", source=ref, tenant="acme", replay_of="old")
    assert JobSpec.model_validate(spec.model_dump(mode="json")).tenant == "acme"
    assert JobSpec.model_validate({"job_id": "x", "recipe": "filter", "source": ref.model_dump()}).tenant is None


def test_iam_policy_has_the_shape_of_awss_home_directory_example(settings: Settings) -> None:
    recorded = json.loads(RECORDED.read_text())
    policy = iam_policy(settings, "acme")
    assert policy["Version"] == recorded["Version"]
    (listing, objects), (rec_listing, rec_objects) = policy["Statement"], recorded["Statement"]
    # Same statements: ListBucket on the bucket under a StringLike s3:prefix condition, object
    # actions on the prefix's keys.
    assert set(listing) - {"Sid"} == set(rec_listing) - {"Sid"}
    assert set(objects) - {"Sid"} == set(rec_objects) - {"Sid"}
    assert listing["Action"] == rec_listing["Action"] == "s3:ListBucket"
    assert list(listing["Condition"]) == list(rec_listing["Condition"]) == ["StringLike"]
    assert list(listing["Condition"]["StringLike"]) == ["s3:prefix"]
    assert listing["Resource"] == "arn:aws:s3:::studio"
    assert objects["Resource"] == "arn:aws:s3:::studio/tenants/acme/*"
    assert rec_objects["Resource"][0].endswith("/*") and objects["Resource"].endswith("/*")
    # Stricter than the example: no listing of the bucket's root or of tenants/, no s3:*.
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["tenants/acme/", "tenants/acme/*"]
    assert all(a.startswith("s3:") and "*" not in a and "Bucket" not in a for a in objects["Action"])
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= set(objects["Action"])


def test_session_policy_is_the_same_grant_within_awss_limit(settings: Settings) -> None:
    text = session_policy(settings, "acme")
    assert json.loads(text) == iam_policy(settings, "acme")
    assert len(text) <= SESSION_POLICY_MAX_CHARS and " " not in text
    kwargs = assume_role_kwargs(settings, "acme", "arn:aws:iam::123456789012:role/bucketbrush-tenants")
    assert kwargs["Policy"] == text and kwargs["RoleSessionName"] == "bucketbrush-acme"


def test_seaweedfs_actions_end_with_a_wildcard(settings: Settings) -> None:
    # On SeaweedFS 4.48 `Read:bucket/prefix` (no /*) denies everything, inside the prefix too.
    assert seaweedfs_actions(settings, "acme") == [
        f"{a}:studio/tenants/acme/*" for a in ("Read", "Write", "List", "Tagging")]


def test_tenants_file_round_trip_and_limits(settings: Settings) -> None:
    registry = TenantsFile.from_settings(settings)
    assert registry.all() == {} and registry.path == settings.state_dir / "tenants.json"
    registry.put(Tenant(name="acme", access_key="AK", limits=Limits(jobs_per_hour=5, recipes=["filter"])))
    assert (registry.path.stat().st_mode & 0o777) == 0o600
    again = TenantsFile(registry.path)
    assert again.get("acme").limits.jobs_per_hour == 5
    defaults = settings.model_copy(update={"tenant_max_concurrent": 2, "tenant_jobs_per_hour": 100})
    limits = again.limits(defaults, "acme")
    assert (limits.jobs_per_hour, limits.max_concurrent, limits.recipes) == (5, 2, ["filter"])
    assert again.limits(defaults, "unlisted").jobs_per_hour == 100
    with pytest.raises(ValueError):
        registry.put(Tenant(name="Bad Name"))
    registry.remove("acme")
    assert TenantsFile(registry.path).all() == {}


def test_each_tenant_gets_retention_rules_and_event_routes(settings: Settings) -> None:
    from infra.aws import notification_prefixes
    from infra.bucket import lifecycle_rules

    TenantsFile.from_settings(settings).put(Tenant(name="acme"))
    rules = {r["ID"]: r for r in lifecycle_rules(settings)}
    assert rules["bucketbrush-outputs-acme"]["Filter"]["Prefix"] == "tenants/acme/outputs/"
    assert rules["bucketbrush-outputs"]["Filter"]["Prefix"] == "outputs/"
    assert "AbortIncompleteMultipartUpload" in rules["bucketbrush-inbox-acme"]
    assert notification_prefixes(settings) == {
        "bucketbrush-inbox": "inbox/", "bucketbrush-jobs": "jobs/", "bucketbrush-conversations": "conversations/",
        "bucketbrush-inbox-acme": "tenants/acme/inbox/", "bucketbrush-jobs-acme": "tenants/acme/jobs/",
        "bucketbrush-conversations-acme": "tenants/acme/conversations/"}


def test_webhook_subscriptions_hear_one_tenant() -> None:
    settings = Settings(_env_file=None, webhook_subscriptions=[
        {"url": "https://default.example/", "secret": "whsec_AAAA"},
        {"url": "https://acme.example/", "secret": "whsec_AAAA", "tenant": "acme"},
    ])
    target = WebhookTarget.parse("https://job.example/", [], InvalidWebhook)
    urls = lambda tenant: [e.url for e in endpoints_for(settings, "completed", "filter", target, tenant)]  # noqa: E731
    assert urls(None) == ["https://job.example/", "https://default.example/"]
    assert urls("acme") == ["https://job.example/", "https://acme.example/"]
    assert urls("other") == ["https://job.example/"]


def test_a_scoped_sweep_lists_only_what_lies_under_its_prefix(settings: Settings) -> None:
    from functions.sweep import input_prefixes

    root, acme = Bucket(settings), Bucket(settings).for_tenant("acme")
    assert input_prefixes(root) == ["inbox/", "jobs/", "conversations/"]
    assert input_prefixes(root, "inbox/upscale/") == ["inbox/upscale/"]
    assert input_prefixes(root, "jobs/abc.json") == ["jobs/abc.json"]
    assert input_prefixes(root, "") == input_prefixes(root, "/") == ["inbox/", "jobs/", "conversations/"]
    assert input_prefixes(root, "in") == ["inbox/"]  # a prefix of a folder: that whole folder
    # Relative to the tenant's root, or spelled in full.
    assert input_prefixes(acme, "inbox/upscale/") == input_prefixes(acme, "tenants/acme/inbox/upscale/") \
        == ["tenants/acme/inbox/upscale/"]
    for outside in ("outputs/", "manifests/x.json", "status/"):
        with pytest.raises(ValueError, match="in no input folder"):
            input_prefixes(root, outside)
