"""`bucketbrush infra k8s`: the manifests validate offline, are what the settings render (the
committed infra/k8s/ included), carry no secret, and KEDA watches the keys an enqueue writes.

Kubernetes kinds are checked with ``kubernetes-validate`` (the Kubernetes 1.37 OpenAPI schemas
it ships, strict: unknown fields fail). KEDA's kinds are custom resources it does not know;
they are checked against the schema below, written from KEDA's ScaledObject and
TriggerAuthentication specs (https://keda.sh/docs/2.18/reference/scaledobject-spec/,
https://keda.sh/docs/2.18/concepts/authentication/) and its Redis Lists scaler
(https://keda.sh/docs/2.18/scalers/redis-lists/): the fields this renderer uses, no others.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from pydantic import SecretStr

from bucketbrush.broker import build_broker, enqueue_job
from bucketbrush.jobs import JobSpec, ObjectRef
from bucketbrush.settings import Settings
from infra.k8s import dump, render
from tests.test_settings import clean  # noqa: F401 - the fixture: settings from arguments only

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.37.0"
# What the committed infra/k8s/ is rendered from (docs/scaling.md says so too).
COMMITTED_SETTINGS = {"redis_url": "redis://redis:6379/0", "s3_endpoint_url": "http://minio:9000"}

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
REDIS_TRIGGER = {
    "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
    "properties": {
        "type": {"const": "redis"},
        "metadata": {
            "type": "object", "additionalProperties": False, "required": ["listName", "listLength"],
            "properties": {k: {"type": "string"} for k in (
                "address", "databaseIndex", "listName", "listLength", "activationListLength", "enableTLS")},
        },
        "authenticationRef": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    },
}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "labels": _STR_MAP}}
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "metadata": _META,
            "spec": {
                "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                       "properties": {"name": {"type": "string"}}},
                    **{k: {"type": "integer", "minimum": 0} for k in (
                        "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod")},
                    "triggers": {"type": "array", "minItems": 1, "items": REDIS_TRIGGER},
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False, "properties": {"secretTargetRef": {
                "type": "array", "items": {"type": "object", "additionalProperties": False,
                                           "required": ["parameter", "name", "key"],
                                           "properties": {k: {"type": "string"} for k in ("parameter", "name", "key")}},
            }}},
        },
    },
}


def validate(doc: dict) -> None:
    if doc["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def all_docs(files: dict[str, list[dict]]) -> list[dict]:
    return [d for docs in files.values() for d in docs]


@pytest.mark.parametrize("source", ["webhook", "sqs", "seaweedfs"])
@pytest.mark.usefixtures("clean")
def test_every_manifest_validates_offline(source: str) -> None:
    s = Settings(redis_url="redis://:pw@redis.example:6380/2", recipe_capabilities={"upscale": "gpu"})
    docs = all_docs(render(s, source=source, filer="filer:8888"))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("ScaledObject") == 2 and "TriggerAuthentication" in kinds
    for doc in docs:
        validate(doc)


@pytest.mark.usefixtures("clean")
def test_the_checks_catch_a_wrong_field() -> None:
    docs = all_docs(render(Settings()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["argz"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = next(d for d in docs if d["kind"] == "ScaledObject")
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 1  # KEDA's metadata values are strings
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


@pytest.mark.usefixtures("clean")
def test_gpu_runners_scale_to_zero_and_request_a_gpu_cpu_runners_do_not() -> None:
    files = render(Settings(queue_name="bb", broker_namespace="ns"))
    gpu_deploy, gpu_scaled = files["runner-gpu.yaml"]
    cpu_deploy, cpu_scaled = files["runner-cpu.yaml"]
    gpu_container = gpu_deploy["spec"]["template"]["spec"]["containers"][0]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_container["args"][-2:] == ["--serve", "gpu"]
    assert "nvidia.com/gpu" not in str(cpu_deploy)
    assert gpu_scaled["spec"]["minReplicaCount"] == 0 and cpu_scaled["spec"]["minReplicaCount"] == 1
    assert "replicas" not in gpu_deploy["spec"]  # KEDA owns it
    assert [t["metadata"]["listName"] for t in gpu_scaled["spec"]["triggers"]] == [
        "ns:bb-gpu", "ns:bb-gpu.DQ", "ns:bb-gpu-bulk", "ns:bb-gpu-bulk.DQ"]
    assert {t["metadata"]["listName"] for t in cpu_scaled["spec"]["triggers"]} >= {"ns:bb-cpu", "ns:bb-any"}
    events = files["events.yaml"]
    assert [d["kind"] for d in events] == ["CronJob"]  # webhooks: the sweep runs on a schedule
    pvc, deploy = render(Settings(), source="seaweedfs", filer="f:8888")["events.yaml"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    assert pvc["kind"] == "PersistentVolumeClaim"


@pytest.mark.usefixtures("clean")
def test_no_secret_reaches_a_manifest() -> None:
    secrets = ["AKIAEXAMPLEKEY", "s3-secret-value", "redis-pass-word", "functions-token-value", "hf_provider_token",
               "-----BEGIN PRIVATE KEY-----signing"]
    s = Settings(s3_access_key=secrets[0], s3_secret_key=SecretStr(secrets[1]),
                 redis_url=f"redis://user:{secrets[2]}@redis:6379/0", functions_token=SecretStr(secrets[3]),
                 provider_tokens={"hf-inference": SecretStr(secrets[4])}, c2pa_signing_key=SecretStr(secrets[5]),
                 s3_endpoint_url="http://minio:9000")
    text = "".join(dump(d) for d in render(s, source="sqs").values())
    assert "http://minio:9000" in text  # settings do reach the ConfigMap
    assert not [x for x in secrets if x in text]


@pytest.mark.usefixtures("clean")
def test_committed_manifests_are_what_the_settings_render() -> None:
    files = render(Settings(**COMMITTED_SETTINGS))
    committed = sorted(p.name for p in (ROOT / "infra" / "k8s").glob("*.yaml"))
    assert committed == sorted(files)
    stale = [name for name, docs in files.items() if (ROOT / "infra" / "k8s" / name).read_text() != dump(docs)]
    assert not stale, f"infra/k8s/ is stale: {stale}; run the command in docs/scaling.md"


def test_keda_watches_the_key_a_real_enqueue_writes(settings: Settings) -> None:
    """A job for a gpu recipe, enqueued into the session stack's Redis (under a queue prefix no
    runner serves), lands in the list the gpu ScaledObject measures; a retry in the .DQ one."""
    mine = settings.model_copy(update={"queue_name": f"keda-{uuid.uuid4().hex[:6]}"})
    scaled = render(mine)["runner-gpu.yaml"][1]
    watched = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"]]
    broker = build_broker(mine)
    ref = ObjectRef(bucket=mine.bucket, key="inbox/txt2img/x.png", etag="e")
    client = broker.client
    before = set(client.keys(f"{mine.broker_namespace}:{mine.queue_name}*"))
    message = enqueue_job(broker, mine, JobSpec(job_id=uuid.uuid4().hex[:24], recipe="txt2img", source=ref))
    retry = broker.enqueue(message, delay=60_000)  # as Dramatiq's Retries middleware schedules a retry
    ids = {m.options["redis_message_id"].encode() for m in (message, retry)}  # what Dramatiq's lists hold
    lists = {k for k in set(client.keys(f"{mine.broker_namespace}:{mine.queue_name}*")) - before
             if client.type(k) == b"list"}
    # The lists that hold the message's id (the wake-up token lists, ``<queue>.wake``, hold
    # tokens, trimmed and expiring: no measure of a queue's length).
    holding = {k.decode() for k in lists if ids & set(client.lrange(k, 0, -1))}
    assert holding == {watched[0], watched[1]}
    assert client.llen(watched[0]) == 1 and client.llen(watched[1]) == 1
    assert not any(key.endswith(".wake") for key in watched)
    assert watched[0] == f"{mine.broker_namespace}:{mine.queue_name}-gpu"
    client.delete(*[k for k in client.keys(f"{mine.broker_namespace}:{mine.queue_name}*")])
