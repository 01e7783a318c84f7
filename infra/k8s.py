"""``bucketbrush infra k8s``: Kubernetes manifests rendered from settings (into ``infra/k8s/``).

- ``config.yaml``: a ConfigMap of the non-secret settings that differ from their defaults.
  Secrets (S3 keys, the Redis URL, the functions token, provider tokens) are never rendered:
  every pod reads them from a Secret you create (``SECRET``, see docs/scaling.md).
- ``functions.yaml``: the functions host (Deployment + Service; webhooks, SNS, presign).
- ``events.yaml``: the event source, one replica that never overlaps with another
  (``Recreate``): the SQS poller, or the SeaweedFS filer follower with its cursor on a
  PersistentVolumeClaim; with MinIO/AWS webhooks (no event source) a CronJob runs the sweep.
- ``runner-<capability>.yaml``: one runner Deployment per capability (``gpu`` ones request
  ``nvidia.com/gpu: 1``), and a KEDA ``ScaledObject`` scaling it on the length of the Redis
  lists its queues use (``bucketbrush.routing.redis_key``: the exact keys an enqueue writes),
  ready and delayed (retries), with scale-to-zero for GPU runners.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from bucketbrush.routing import CAPABILITIES, PRIORITIES, queue_name, redis_key
from bucketbrush.settings import Settings, is_secret

APP = "bucketbrush"
SECRET = "bucketbrush-secrets"
# Secret key -> the variable every pod gets from it (optional keys may be left out of the Secret).
SECRET_ENV = {
    "s3-access-key": "BUCKETBRUSH_S3_ACCESS_KEY",
    "s3-secret-key": "BUCKETBRUSH_S3_SECRET_KEY",
    "redis-url": "BUCKETBRUSH_REDIS_URL",
    "functions-token": "BUCKETBRUSH_FUNCTIONS_TOKEN",
    "provider-tokens": "BUCKETBRUSH_PROVIDER_TOKENS",  # JSON: {"hf-inference": "hf_..."}
    "webhook-job-secret": "BUCKETBRUSH_WEBHOOK_JOB_SECRET",
    "refine-openai-key": "BUCKETBRUSH_REFINE_OPENAI_KEY",
    # Content Credentials (on by default): every runner signs with this identity (PEM text).
    "c2pa-signing-key": "BUCKETBRUSH_C2PA_SIGNING_KEY",
    "c2pa-signing-certs": "BUCKETBRUSH_C2PA_SIGNING_CERTS",
}
REQUIRED_SECRETS = {"s3-access-key", "s3-secret-key", "redis-url"}
REDIS_PASSWORD_KEY = "redis-password"  # for KEDA's scaler, when the Redis URL has a password
# Settings that describe this machine or the local stack, not a cluster.
LOCAL_ONLY = {"state_dir", "local_redis", "seaweedfs_ttl_unit", "test_recipes", "runner_devices",
              "runner_device_inventory", "runner_serve"}
CACHE_DIR = "/cache"
CURSOR_DIR = "/var/lib/bucketbrush"


def config_env(settings: Settings) -> dict[str, str]:
    """BUCKETBRUSH_* for every non-secret setting that differs from its default."""
    env = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if name in LOCAL_ONLY or is_secret(name, value) or isinstance(value, SecretStr) or name == "redis_url":
            continue
        default = field.get_default(call_default_factory=True)
        if value == default or value is None:
            continue
        plain = settings.model_dump(mode="json", include={name})[name]
        # Lists and maps as JSON, as pydantic-settings reads them from the environment.
        env[Settings.env_var(name)] = plain if isinstance(plain, str) else json.dumps(plain, separators=(",", ":"))
    env["BUCKETBRUSH_BUCKET"] = settings.bucket
    return dict(sorted(env.items()))


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": component}


def _meta(name: str, component: str) -> dict[str, Any]:
    return {"name": name, "labels": _labels(component)}


def _env_from() -> list[dict[str, Any]]:
    return [{"configMapRef": {"name": f"{APP}-config"}}]


def _secret_env() -> list[dict[str, Any]]:
    return [{"name": var, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key,
                                                         **({} if key in REQUIRED_SECRETS else {"optional": True})}}}
            for key, var in SECRET_ENV.items()]


def _container(name: str, image: str, args: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "args": args, "envFrom": _env_from(), "env": _secret_env(), **extra}


def _deployment(name: str, component: str, pod: dict[str, Any], *, replicas: int | None = 1,
                strategy: str = "RollingUpdate") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": _labels(component)},
        "strategy": {"type": strategy},
        "template": {"metadata": {"labels": _labels(component)}, "spec": pod},
    }
    if replicas is not None:  # a Deployment KEDA scales has its replicas left to KEDA
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name, component), "spec": spec}


def config_map(settings: Settings) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(f"{APP}-config", "config"),
             "data": config_env(settings)}]


def functions(image: str, port: int = 8080) -> list[dict[str, Any]]:
    probe = {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10, "timeoutSeconds": 5}
    container = _container("functions", image, ["bucketbrush", "serve-functions", "--host", "0.0.0.0",
                                                "--port", str(port)],
                           ports=[{"containerPort": port, "name": "http"}], readinessProbe=probe)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(f"{APP}-functions", "functions"),
               "spec": {"selector": _labels("functions"),
                        "ports": [{"name": "http", "port": port, "targetPort": "http"}]}}
    return [_deployment(f"{APP}-functions", "functions", {"containers": [container]}, replicas=2), service]


def events(settings: Settings, image: str, source: str, filer: str | None) -> list[dict[str, Any]]:
    """The event source: ``sqs``, ``seaweedfs`` (cursor on a volume), or ``webhook`` (events go
    to the functions host; a CronJob runs the reconciling sweep the event source would run)."""
    if source == "webhook":
        minutes = max(1, round(settings.sweep_interval_s / 60))
        job = {"restartPolicy": "OnFailure",
               "containers": [_container("sweep", image, ["bucketbrush", "sweep"])]}
        return [{"apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta(f"{APP}-sweep", "sweep"),
                 "spec": {"schedule": f"*/{minutes} * * * *", "concurrencyPolicy": "Forbid",
                          "jobTemplate": {"spec": {"template": {"metadata": {"labels": _labels("sweep")},
                                                                "spec": job}}}}}]
    if source == "sqs":
        container = _container("events", image, ["bucketbrush", "events", "sqs"])
        return [_deployment(f"{APP}-events", "events", {"containers": [container]}, strategy="Recreate")]
    if not filer:
        raise ValueError("--events seaweedfs needs --filer HOST:PORT")
    container = _container("events", image, ["bucketbrush", "events", "seaweedfs", "--filer", filer,
                                             "--cursor", f"{CURSOR_DIR}/cursor"],
                           volumeMounts=[{"name": "cursor", "mountPath": CURSOR_DIR}])
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(f"{APP}-events-cursor", "events"),
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}}
    pod = {"containers": [container],
           "volumes": [{"name": "cursor", "persistentVolumeClaim": {"claimName": f"{APP}-events-cursor"}}]}
    # Recreate: the old pod lets go of the volume (and the cursor) before the new one starts.
    return [pvc, _deployment(f"{APP}-events", "events", pod, strategy="Recreate")]


def keda_address(redis_url: str) -> tuple[dict[str, str], bool]:
    """The redis scaler's connection metadata for ``redis_url`` (no password: that comes from
    the Secret through a TriggerAuthentication), and whether the URL carries a password."""
    parts = urlsplit(redis_url)
    meta = {"address": f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}",
            "databaseIndex": (parts.path.strip("/") or "0")}
    if parts.scheme == "rediss":
        meta["enableTLS"] = "true"
    return meta, bool(parts.password)


def runner_lists(settings: Settings, capability: str) -> list[str]:
    """The Redis lists a ``capability`` runner's ScaledObject watches: its own queues, ready and
    delayed; the cpu runner also watches the ``any`` queues (it is always up to take them)."""
    caps = [capability, "any"] if capability == "cpu" else [capability]
    return [key for c in caps for p in PRIORITIES
            for key in (redis_key(settings, queue_name(settings, c, p)),
                        redis_key(settings, queue_name(settings, c, p)) + ".DQ")]


def runner(settings: Settings, capability: str, image: str, *, max_replicas: int) -> list[dict[str, Any]]:
    gpu = capability == "gpu"
    name = f"{APP}-runner-{capability}"
    component = f"runner-{capability}"
    env_extra = [{"name": "BUCKETBRUSH_DIFFUSION_DEVICE", "value": "cuda"}] if gpu else []
    container = _container("runner", image, ["bucketbrush", "runner", "--serve", capability],
                           volumeMounts=[{"name": "cache", "mountPath": CACHE_DIR}],
                           resources={"limits": {"nvidia.com/gpu": 1}} if gpu else
                           {"requests": {"cpu": "1", "memory": "2Gi"}})
    container["env"] = container["env"] + env_extra
    longest = max([settings.job_time_limit_s, *settings.recipe_time_limits_s.values()])
    pod = {"containers": [container], "volumes": [{"name": "cache", "emptyDir": {}}],
           # SIGTERM lets the current job finish (the runner's shutdown waits for it).
           "terminationGracePeriodSeconds": longest + 60}
    address, has_password = keda_address(settings.redis_url)
    auth = {"authenticationRef": {"name": f"{APP}-redis"}} if has_password else {}
    triggers = [{"type": "redis", "metadata": {**address, "listName": key, "listLength": "1" if gpu else "10",
                                                "activationListLength": "0"}, **auth}
                for key in runner_lists(settings, capability)]
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(name, component),
              "spec": {"scaleTargetRef": {"name": name}, "minReplicaCount": 0 if gpu else 1,
                       "maxReplicaCount": max_replicas, "pollingInterval": 15,
                       # Longer than a job: a runner is not taken away right after its queue empties.
                       "cooldownPeriod": max(300, longest), "triggers": triggers}}
    docs = [_deployment(name, component, pod, replicas=None), scaled]
    if has_password:
        docs.append({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
                     "metadata": _meta(f"{APP}-redis", component),
                     "spec": {"secretTargetRef": [{"parameter": "password", "name": SECRET,
                                                   "key": REDIS_PASSWORD_KEY}]}})
    return docs


def render(settings: Settings, *, functions_image: str = "bucketbrush-functions",
           runner_image: str = "bucketbrush-runner", source: str = "webhook", filer: str | None = None,
           max_cpu: int = 4, max_gpu: int = 4) -> dict[str, list[dict[str, Any]]]:
    """File name -> the manifests in it."""
    files = {"config.yaml": config_map(settings), "functions.yaml": functions(functions_image),
             "events.yaml": events(settings, functions_image, source, filer)}
    for capability in CAPABILITIES:
        if capability != "any":
            files[f"runner-{capability}.yaml"] = runner(settings, capability, runner_image,
                                                        max_replicas=max_gpu if capability == "gpu" else max_cpu)
    return files


HEADER = "# Rendered by `bucketbrush infra k8s` from settings; edit the settings, not this file.\n"


def dump(docs: list[dict[str, Any]]) -> str:
    import yaml  # the `k8s` extra; imported here so the CLI starts without it

    return HEADER + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=100)


def write(files: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, docs in files.items():
        (out / name).write_text(dump(docs))
        written.append(out / name)
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("infra/k8s"), help="folder to write the manifests into")
    p.add_argument("--events", choices=["webhook", "sqs", "seaweedfs"], default="webhook",
                   help="how events arrive: MinIO/SNS webhooks to the functions Service (plus a sweep CronJob), "
                        "an SQS poller, or a SeaweedFS filer follower")
    p.add_argument("--filer", help="SeaweedFS filer HOST:PORT (--events seaweedfs)")
    p.add_argument("--functions-image", default="bucketbrush-functions")
    p.add_argument("--runner-image", default="bucketbrush-runner")
    p.add_argument("--max-cpu-runners", type=int, default=4)
    p.add_argument("--max-gpu-runners", type=int, default=4)


def run(settings: Settings, args: argparse.Namespace) -> int:
    files = render(settings, functions_image=args.functions_image, runner_image=args.runner_image,
                   source=args.events, filer=args.filer, max_cpu=args.max_cpu_runners, max_gpu=args.max_gpu_runners)
    for path in write(files, args.out):
        print(f"wrote {path}")
    loopback = [name for name, url in (("S3 endpoint", settings.s3_endpoint_url), ("Redis", settings.redis_url))
                if url and urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")]
    if loopback:
        print(f"warning: the {' and '.join(loopback)} settings point at this machine (a local stack's?); "
              "pods cannot reach it: set BUCKETBRUSH_S3_ENDPOINT_URL / BUCKETBRUSH_REDIS_URL to the cluster's")
    print(f"then: kubectl create secret generic {SECRET} --from-literal=s3-access-key=... "
          "--from-literal=s3-secret-key=... --from-literal=redis-url=... (see docs/scaling.md); "
          f"kubectl apply -f {args.out}")
    return 0
