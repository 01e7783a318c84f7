"""Tenants on the real local stack: SeaweedFS identities confined to tenants/<t>/, jobs that
keep to their tenant's prefix, listings scoped to the tenant, keys rotated and removed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import uuid
from typing import Any
from unittest import mock

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from bucketbrush.cli import main
from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.management import list_jobs
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from tests.helpers import png_bytes, wait_final


def _client(settings: Settings, creds: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                        aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"],
                        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                      retries={"max_attempts": 1}))


def cli(settings: Settings, *argv: str, code: int = 0) -> str:
    """``bucketbrush ARGV`` against the test stack (its bucket is no default); its stdout."""
    out = io.StringIO()
    with mock.patch.dict(os.environ, {"BUCKETBRUSH_BUCKET": settings.bucket}), contextlib.redirect_stdout(out):
        assert main(list(argv)) == code
    return out.getvalue()


def add_tenant(settings: Settings, name: str, *extra: str) -> dict[str, str]:
    return json.loads(cli(settings, "tenants", "add", name, "--json", *extra))


def denied(call: Any) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"]


def wait_usable(s3: Any, settings: Settings, prefix: str, *, usable: bool = True, timeout: float = 15) -> None:
    """The store applies a changed identity within a moment: wait until the keys list their
    prefix (``usable``), or until they are refused."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s3.list_objects_v2(Bucket=settings.bucket, Prefix=prefix)
            works = True
        except ClientError as exc:
            assert exc.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied"), exc
            works = False
        if works == usable:
            return
        assert time.monotonic() < deadline, f"the keys {'never' if usable else 'still'} work"
        time.sleep(0.2)


@contextlib.contextmanager
def tenant(settings: Settings, prefix: str, *extra: str) -> Any:
    """A new tenant (credentials, an S3 client with them), removed afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    creds = add_tenant(settings, name, *extra)
    try:
        creds["s3"] = _client(settings, creds)
        wait_usable(creds["s3"], settings, creds["prefix"])
        yield creds
    finally:
        cli(settings, "tenants", "remove", name)


@pytest.fixture(scope="module")
def two_tenants(stack: Any, settings: Settings) -> Any:
    with tenant(settings, "a") as a, tenant(settings, "b") as b:
        yield {"a": a, "b": b}


def test_tenant_credentials_touch_only_their_prefix(two_tenants: dict[str, Any], settings: Settings,
                                                     bucket: Bucket) -> None:
    a, b = two_tenants["a"], two_tenants["b"]
    A, B, name = a["s3"], b["s3"], settings.bucket
    b_key = f"{b['prefix']}private/secret.png"
    B.put_object(Bucket=name, Key=b_key, Body=b"b's bytes")
    b_before = {o["Key"] for o in B.list_objects_v2(Bucket=name, Prefix=b["prefix"])["Contents"]}
    shared_key = f"private/{uuid.uuid4().hex}.png"
    bucket.s3.put_object(Bucket=name, Key=shared_key, Body=b"shared")
    # Positive control: A works in its own prefix.
    own = f"{a['prefix']}private/own.png"
    A.put_object(Bucket=name, Key=own, Body=b"a's bytes")
    assert A.get_object(Bucket=name, Key=own)["Body"].read() == b"a's bytes"
    # (Other tests of the module may have run jobs as A: its listing holds those too, all under its prefix.)
    listed = [o["Key"] for o in A.list_objects_v2(Bucket=name, Prefix=a["prefix"])["Contents"]]
    assert own in listed and all(key.startswith(a["prefix"]) for key in listed)

    # List, read, write, delete anything of B's (or outside tenants/A/): refused.
    assert denied(lambda: A.list_objects_v2(Bucket=name, Prefix=b["prefix"])) == "AccessDenied"
    assert denied(lambda: A.list_objects_v2(Bucket=name)) == "AccessDenied"
    assert denied(lambda: A.list_objects_v2(Bucket=name, Prefix=settings.tenants_prefix)) == "AccessDenied"
    assert denied(lambda: A.get_object(Bucket=name, Key=b_key)) == "AccessDenied"
    assert denied(lambda: A.get_object(Bucket=name, Key=shared_key)) == "AccessDenied"
    assert denied(lambda: A.head_object(Bucket=name, Key=b_key)) == "403"
    # ...including a name that merely starts like A's prefix (another tenant's space).
    for key in (f"{b['prefix']}private/evil.png", "inbox/filter/evil.png", a["prefix"].rstrip("/") + "x/evil"):
        assert denied(lambda k=key: A.put_object(Bucket=name, Key=k, Body=b"x")) == "AccessDenied"
    assert denied(lambda: A.delete_object(Bucket=name, Key=b_key)) == "AccessDenied"
    assert denied(lambda: A.copy_object(Bucket=name, Key=f"{a['prefix']}stolen.png",
                                        CopySource={"Bucket": name, "Key": b_key})) == "AccessDenied"
    batch = A.delete_objects(Bucket=name, Delete={"Objects": [{"Key": b_key}]})
    assert [e["Code"] for e in batch.get("Errors", [])] == ["AccessDenied"]

    # Presigned URLs made with A's keys carry A's rights only.
    def presigned(method: str, key: str) -> str:
        return A.generate_presigned_url(method, Params={"Bucket": name, "Key": key}, ExpiresIn=60)

    assert requests.get(presigned("get_object", own), timeout=10).status_code == 200
    assert requests.get(presigned("get_object", b_key), timeout=10).status_code == 403
    assert requests.put(presigned("put_object", b_key), data=b"overwritten", timeout=10).status_code == 403
    assert requests.delete(presigned("delete_object", b_key), timeout=10).status_code == 403
    post = A.generate_presigned_post(name, f"{b['prefix']}private/posted.png", ExpiresIn=60)
    posted = requests.post(post["url"], data=post["fields"], files={"file": ("x.png", b"x")}, timeout=10)
    assert posted.status_code == 403

    # Nothing of B's changed, nothing new appeared under B or the shared layout.
    assert bucket.s3.get_object(Bucket=name, Key=b_key)["Body"].read() == b"b's bytes"
    b_keys = {o["Key"] for o in B.list_objects_v2(Bucket=name, Prefix=b["prefix"])["Contents"]}
    assert b_key in b_keys and b_keys == b_before
    assert not bucket.exists("inbox/filter/evil.png")


def test_a_tenants_jobs_stay_in_its_prefix(two_tenants: dict[str, Any], settings: Settings, bucket: Bucket) -> None:
    a, b = two_tenants["a"], two_tenants["b"]
    A, B, name = a["s3"], b["s3"], settings.bucket
    tenant_a = a["tenant"]
    a_bucket = Bucket(settings.model_copy(update={"tenant": tenant_a}))
    # A drop-folder upload with A's own keys: the job, its outputs and manifest live under tenants/A/.
    a_input = f"{a['prefix']}inbox/filter/photo.png"
    put = A.put_object(Bucket=name, Key=a_input, Body=png_bytes(), Metadata={"style": "noir"})
    job_id = job_id_for(ObjectRef(bucket=name, key=a_input, etag=put["ETag"].strip('"')))
    done = wait_final(a_bucket, job_id)
    assert (done.status, done.tenant) == ("succeeded", tenant_a), done.error
    assert all(o.key.startswith(f"{a['prefix']}outputs/{job_id}/") for o in done.outputs) and done.outputs
    # ...and A reads them with its own keys.
    assert A.get_object(Bucket=name, Key=done.outputs[0].key)["ContentLength"] == done.outputs[0].bytes
    assert json.loads(A.get_object(Bucket=name, Key=f"{a['prefix']}manifests/{job_id}.json")["Body"].read())[
        "tenant"] == tenant_a
    assert bucket.read_manifest(job_id) is None  # not in the default tenant's manifests

    # A job spec of A's whose input names B's key: failed, with a code that says why.
    b_key = f"{b['prefix']}private/target.png"
    B.put_object(Bucket=name, Key=b_key, Body=png_bytes())
    A.put_object(Bucket=name, Key=f"{a['prefix']}jobs/steal.json",
                 Body=json.dumps({"recipe": "filter", "input": b_key, "params": {"style": "noir"}}).encode())
    stolen = wait_final(a_bucket, "steal")
    assert (stolen.status, stolen.error.code if stolen.error else None) == ("failed", "outside_tenant")
    assert b_key in stolen.error.message and a["prefix"] in stolen.error.message
    assert not stolen.outputs
    # The same through the shared layout's key: refused too.
    A.put_object(Bucket=name, Key=f"{a['prefix']}jobs/shared.json",
                 Body=json.dumps({"recipe": "filter", "input": "inbox/filter/anything.png"}).encode())
    assert wait_final(a_bucket, "shared").error.code == "outside_tenant"
    # A spec of A's naming A's own input runs.
    A.put_object(Bucket=name, Key=f"{a['prefix']}jobs/mine.json",
                 Body=json.dumps({"recipe": "filter", "input": a_input, "params": {"style": "sepia"}}).encode())
    assert wait_final(a_bucket, "mine").status == "succeeded"

    # Listings are scoped: A's jobs list (with A's keys) shows A's jobs only; B's shows none of them.
    a_scoped = Bucket(settings.model_copy(update={"tenant": tenant_a, "s3_access_key": a["access_key"]}), A)
    listed = {m.job_id for m in list_jobs(a_scoped, limit=50).jobs}
    assert {job_id, "steal", "shared", "mine"} <= listed
    b_scoped = Bucket(settings.model_copy(update={"tenant": b["tenant"]}), B)
    # B sees none of the jobs this test ran as A (a job id both tenants used, in another test, is
    # two jobs: each tenant lists its own).
    assert not {m.job_id for m in list_jobs(b_scoped, limit=50).jobs} & {job_id, "steal", "shared", "mine"}
    assert job_id not in {m.job_id for m in list_jobs(bucket, limit=200).jobs}


def test_rotate_and_remove(stack: Any, settings: Settings) -> None:
    tenant = f"r{uuid.uuid4().hex[:6]}"
    first = add_tenant(settings, tenant)
    s3 = _client(settings, first)
    wait_usable(s3, settings, first["prefix"])
    listed = {t["tenant"]: t for t in json.loads(cli(settings, "tenants", "list", "--json"))}
    assert listed[tenant]["access_key"] == first["access_key"]
    second = json.loads(cli(settings, "tenants", "rotate", tenant, "--json"))
    assert second["access_key"] != first["access_key"]
    new = _client(settings, second)
    wait_usable(new, settings, second["prefix"])
    wait_usable(s3, settings, first["prefix"], usable=False)  # the old keys stop working
    cli(settings, "tenants", "remove", tenant)
    wait_usable(new, settings, second["prefix"], usable=False)
    assert tenant not in {t["tenant"] for t in json.loads(cli(settings, "tenants", "list", "--json"))}


def test_an_app_acting_as_a_tenant(two_tenants: dict[str, Any], settings: Settings, bucket: Bucket) -> None:
    """BUCKETBRUSH_TENANT for an app: presigned uploads land in the tenant's inbox (signed by the
    service's keys: SeaweedFS refuses POSTs signed by prefix-scoped keys), the job runs there,
    and the manifest link the app polls reads the tenant's manifest."""
    from bucketbrush.client import Studio

    a = two_tenants["a"]
    studio = Studio.from_settings(settings.model_copy(update={"tenant": a["tenant"]}))
    job = studio.submit(png_bytes(), "filter", filename="cat.png", style="sepia")
    assert job.upload is not None and job.upload.key.startswith(f"{a['prefix']}inbox/filter/{job.job_id}/")
    manifest = job.wait(timeout=60)
    assert (manifest.status, manifest.tenant) == ("succeeded", a["tenant"])
    assert requests.get(job.upload.manifest_url, timeout=10).json()["job_id"] == job.job_id
    assert manifest.outputs[0].key.startswith(f"{a['prefix']}outputs/")
    assert bucket.read_manifest(job.job_id) is None


def test_the_functions_host_serves_each_tenant_with_its_token(two_tenants: dict[str, Any], settings: Settings,
                                                                bucket: Bucket) -> None:
    """One host, many tenants: a tenant's token presigns into its inbox, renews links to its
    manifests and lists its jobs only; it cannot post events; the host's own token is the
    default tenant."""
    from pydantic import SecretStr
    from starlette.testclient import TestClient

    from functions.http import create_app

    a, b = two_tenants["a"], two_tenants["b"]
    client = TestClient(create_app(settings.model_copy(update={"functions_token": SecretStr("host-token")})))
    as_a = {"Authorization": f"Bearer {a['functions_token']}"}
    signed = client.post("/presign", headers=as_a, json={"recipe": "filter", "filename": "x.png",
                                                           "params": {"style": "noir"}})
    assert signed.status_code == 200, signed.text
    upload = signed.json()
    assert upload["key"].startswith(f"{a['prefix']}inbox/filter/") and upload["manifest_key"].startswith(a["prefix"])
    posted = requests.post(upload["url"], data=upload["fields"], timeout=10,
                           files={"file": ("x.png", png_bytes(), "image/png")})
    assert posted.status_code in (200, 204), posted.text
    a_bucket = bucket.for_tenant(a["tenant"])
    assert wait_final(a_bucket, upload["job_id"]).status == "succeeded"
    renewed = client.get(f"/manifest-url?job_id={upload['job_id']}", headers=as_a).json()
    assert requests.get(renewed["manifest_url"], timeout=10).json()["tenant"] == a["tenant"]
    def listed(headers: dict[str, str]) -> set[str]:
        return {j["job_id"] for j in client.get("/studio/jobs?limit=200", headers=headers).json()["jobs"]}

    as_b = {"Authorization": f"Bearer {b['functions_token']}"}
    assert upload["job_id"] in listed(as_a) and upload["job_id"] not in listed(as_b)
    assert client.get(f"/studio/jobs/{upload['job_id']}", headers=as_b).status_code == 404
    # Events are the host's business only; the host's own token is the default tenant.
    assert client.post("/events/s3", headers=as_a, content=b"{}").status_code == 401
    assert client.get("/studio/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    host = client.post("/presign", headers={"Authorization": "Bearer host-token"}, json={"recipe": "filter"}).json()
    assert host["key"].startswith("inbox/filter/")


def test_the_sweep_recovers_a_tenants_lost_event(two_tenants: dict[str, Any], stack: Any, settings: Settings,
                                                  bucket: Bucket) -> None:
    from functions.handler import Handler
    from functions.sweep import reconcile
    from tests.test_exactly_once import cursor_file, event_source_stopped

    a = two_tenants["a"]
    key = f"{a['prefix']}inbox/filter/lost/{uuid.uuid4().hex[:6]}.png"
    with event_source_stopped(stack):
        put = a["s3"].put_object(Bucket=settings.bucket, Key=key, Body=png_bytes(), Metadata={"style": "sepia"})
        cursor_file(stack, settings).write_text(f"{time.time_ns()}\n")  # the event is lost for good
    job_id = job_id_for(ObjectRef(bucket=settings.bucket, key=key, etag=put["ETag"].strip('"')))
    a_bucket = bucket.for_tenant(a["tenant"])
    canary = f"{a['prefix']}inbox/filter/lost/canary-{uuid.uuid4().hex[:6]}.png"
    put = a["s3"].put_object(Bucket=settings.bucket, Key=canary, Body=png_bytes(), Metadata={"style": "sepia"})
    wait_final(a_bucket, job_id_for(ObjectRef(bucket=settings.bucket, key=canary, etag=put["ETag"].strip('"'))))
    assert a_bucket.read_manifest(job_id) is None  # the source is back, but never saw it

    # Scoped to the folder this test uses (in every tenant): the shared bucket holds other tests' inputs.
    report = reconcile(settings, bucket, Handler.from_settings(settings), grace_s=0, under="inbox/filter/lost/")
    assert key in {o.key for o in report.outcomes if o.action == "enqueued"}, report.outcomes
    recovered = wait_final(a_bucket, job_id)
    assert (recovered.status, recovered.tenant, recovered.inputs[0].key) == ("succeeded", a["tenant"], key)


def test_watch_and_job_ids_are_per_tenant(two_tenants: dict[str, Any], settings: Settings, bucket: Bucket) -> None:
    """Both tenants write jobs/same-<n>.json: two jobs (claims are per tenant), and a watch as
    tenant a sees a's only, though b's ended first."""
    import subprocess
    import sys

    a, b = two_tenants["a"], two_tenants["b"]
    job_id = f"same-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "BUCKETBRUSH_BUCKET": settings.bucket, "BUCKETBRUSH_STATE_DIR": str(settings.state_dir),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bucketbrush.cli", "--tenant", a["tenant"], "watch", "--final",
                             "--json"], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in proc.stderr:  # log lines may come first
            if line.startswith(f"watching {a['prefix']}manifests/"):
                break
        else:
            raise AssertionError(f"watch exited with {proc.wait()} before it was watching")
        for creds in (b, a):  # b's job first, and to the end
            image = f"{creds['prefix']}outputs/fixtures/w.png"  # an output: no job of its own
            creds["s3"].put_object(Bucket=settings.bucket, Key=image, Body=png_bytes())
            creds["s3"].put_object(Bucket=settings.bucket, Key=f"{creds['prefix']}jobs/{job_id}.json", Body=json.dumps(
                {"recipe": "filter", "input": image, "params": {"style": "noir"}}).encode())
            done = wait_final(bucket.for_tenant(creds["tenant"]), job_id)
            assert (done.status, done.tenant) == ("succeeded", creds["tenant"]), done.error
        seen = json.loads(proc.stdout.readline())
        assert (seen["job_id"], seen["tenant"]) == (job_id, a["tenant"])
    finally:
        proc.terminate()
        proc.wait(30)


def test_two_tenants_conversations_with_the_same_id_do_not_interfere(two_tenants: dict[str, Any],
                                                                     settings: Settings, bucket: Bucket) -> None:
    """Tenants a and b and the default tenant each chat in a conversation named the same: each
    has its own turn numbers (Redis), its own conversation manifest and pictures under its prefix,
    and a turn cannot bring another tenant's picture."""
    import redis as redis_lib

    from bucketbrush.client import Studio
    from bucketbrush.conversations import Conversations
    from bucketbrush.samples import landscape

    a, b = two_tenants["a"], two_tenants["b"]
    conversation = f"same-chat-{uuid.uuid4().hex[:6]}"
    chats = {who: Studio.from_settings(settings.model_copy(update={"tenant": t})).conversation(conversation)
             for who, t in (("a", a["tenant"]), ("b", b["tenant"]), ("default", None))}
    # Tenant a with its own S3 keys, as its app would: a picture into its chat inbox.
    a_photo = f"{a['prefix']}inbox/chat/{conversation}/photo.png"
    put = a["s3"].put_object(Bucket=settings.bucket, Key=a_photo, Body=png_bytes(landscape(64, 48)),
                             Metadata={"message": "make it noir"})
    a_first = job_id_for(ObjectRef(bucket=settings.bucket, key=a_photo, etag=put["ETag"].strip('"')))
    b_turn = chats["b"].say("remove the background", image=png_bytes(landscape(48, 32)), filename="b.png")
    default_turn = chats["default"].say("make it sepia", image=png_bytes(landscape(40, 30)), filename="d.png")
    a_second = chats["a"].say("upscale this 2x")

    a_bucket, b_bucket = bucket.for_tenant(a["tenant"]), bucket.for_tenant(b["tenant"])
    first = wait_final(a_bucket, a_first, timeout=120)
    second, b_done, d_done = a_second.wait(timeout=120), b_turn.wait(timeout=120), default_turn.wait(timeout=120)
    assert [m.status for m in (first, second, b_done, d_done)] == ["succeeded"] * 4, [
        m.error for m in (first, second, b_done, d_done)]
    # Numbers per tenant: a's turns are 1 and 2; b's and the default tenant's first turns are 1.
    assert (first.turn.seq, second.turn.seq, b_done.turn.seq, d_done.turn.seq) == (1, 2, 1, 1)
    assert (first.tenant, second.tenant, b_done.tenant, d_done.tenant) == (a["tenant"], a["tenant"], b["tenant"], None)
    # Pictures per tenant: a's second turn edits a's first output; b's works on b's own upload.
    assert second.turn.input == first.outputs[0].key and first.outputs[0].key.startswith(a["prefix"])
    assert b_done.turn.input == b_turn.key and b_turn.key.startswith(f"{b['prefix']}inbox/chat/{conversation}/")
    assert d_done.turn.input == default_turn.key and default_turn.key.startswith(f"inbox/chat/{conversation}/")
    # Three conversation manifests, each under its tenant's prefix, each with its own turns.
    histories = {who: chat.history() for who, chat in chats.items()}
    assert [t.job_id for t in histories["a"].turns] == [a_first, a_second.job_id]
    assert [t.job_id for t in histories["b"].turns] == [b_turn.job_id]
    assert [t.job_id for t in histories["default"].turns] == [default_turn.job_id]
    manifest_key = f"manifests/conversations/{conversation}.json"
    for who, prefix in (("a", a["prefix"]), ("b", b["prefix"]), ("default", "")):
        doc = json.loads(bucket.s3.get_object(Bucket=settings.bucket, Key=prefix + manifest_key)["Body"].read())
        assert doc["image"] == histories[who].image and doc["image"].startswith(prefix)
    # a reads its own conversation manifest with its own keys (and not b's).
    assert a["s3"].get_object(Bucket=settings.bucket, Key=a["prefix"] + manifest_key)["ContentLength"] > 0
    assert denied(lambda: a["s3"].get_object(Bucket=settings.bucket, Key=b["prefix"] + manifest_key)) == "AccessDenied"
    # The turn numbers are three Redis hashes, one per tenant.
    client = redis_lib.Redis.from_url(settings.redis_url)
    keys = {who: Conversations(bucket.for_tenant(t), client)._redis_key(conversation, "seq")
            for who, t in (("a", a["tenant"]), ("b", b["tenant"]), ("default", None))}
    assert len(set(keys.values())) == 3 and all(client.hget(k, "#next") for k in keys.values())
    assert [int(client.hget(keys[who], "#next")) for who in ("a", "b", "default")] == [2, 1, 1]

    # A turn of b's that names a's picture (with b's own keys): outside_tenant; b's chain goes on.
    steal = f"{b['prefix']}conversations/{conversation}/steal.json"
    put = b["s3"].put_object(Bucket=settings.bucket, Key=steal, Body=json.dumps(
        {"message": "make it sepia", "image": first.outputs[0].key}).encode())
    theft = wait_final(b_bucket, job_id_for(ObjectRef(bucket=settings.bucket, key=steal, etag=put["ETag"].strip('"'))),
                       timeout=120)
    assert (theft.status, theft.error.code, theft.turn.seq) == ("failed", "outside_tenant", 2), theft.error
    assert first.outputs[0].key in theft.error.message and not theft.outputs
    after = chats["b"].say("thanks!").wait(timeout=120)
    assert (after.status, after.turn.seq) == ("succeeded", 3) and chats["b"].image == b_done.outputs[0].key


def test_a_tenants_turn_runs_only_the_recipes_it_may(stack: Any, settings: Settings) -> None:
    """A tenant limited to filter and stylize: its turn may chat (the handler admits `chat`), a
    turn that becomes stylize runs, one that becomes upscale fails with quota_exceeded."""
    from bucketbrush.client import Studio
    from bucketbrush.samples import landscape

    with tenant(settings, "r", "--recipes", "filter,stylize") as creds:
        chat = Studio.from_settings(settings.model_copy(update={"tenant": creds["tenant"]})).conversation()
        noir = chat.say("make it noir", image=png_bytes(landscape(48, 32)), filename="p.png").wait(timeout=120)
        assert (noir.status, noir.recipe) == ("succeeded", "stylize"), noir.error
        big = chat.say("upscale this 2x").wait(timeout=120)
        assert big.status == "failed" and big.error.code == "quota_exceeded", big.error
        assert "may not run recipe 'upscale' (allowed: filter, stylize)" in big.error.message and not big.outputs
        thanks = chat.say("thanks!").wait(timeout=120)  # renders nothing: allowed
        assert thanks.status == "succeeded" and [t.status for t in chat.history().turns] == [
            "succeeded", "failed", "succeeded"]
        # `jobs retry` of the refused turn (as the operator, who has the tenants file) is refused again.
        cli(settings, "--tenant", creds["tenant"], "jobs", "retry", big.job_id)
        r_bucket, deadline = Bucket(settings).for_tenant(creds["tenant"]), time.monotonic() + 120
        while not ((again := r_bucket.read_manifest(big.job_id)).is_final and again.updated_at > big.updated_at):
            assert time.monotonic() < deadline, again
            time.sleep(0.1)
        assert (again.status, again.error.code) == ("failed", "quota_exceeded"), again.error
        assert "may not run recipe 'upscale'" in again.error.message and not again.outputs
