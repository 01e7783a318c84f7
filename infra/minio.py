"""MinIO-specific bucket setup through minio-py: event routes to the functions' webhook, ILM.

``bucketbrush infra minio`` runs ``apply_minio``; ``mc_commands`` prints the same setup as ``mc``
commands for people who prefer them. The webhook *target* itself is server configuration
(``MINIO_NOTIFY_WEBHOOK_*_<ID>`` variables, see ``infra/compose.yaml``, or ``mc admin config
set``); a bucket can only route events to a target the server already has.

CORS is server-wide on MinIO (``mc admin config set ALIAS api cors_allow_origin=...``): it has no
per-bucket CORS API, so ``infra apply``'s ``put_bucket_cors`` is not used here.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import DISABLED, ENABLED, Filter
from minio.error import S3Error
from minio.lifecycleconfig import (
    AbortIncompleteMultipartUpload,
    Expiration,
    LifecycleConfig,
    NoncurrentVersionExpiration,
    Rule,
)
from minio.notificationconfig import NotificationConfig, PrefixFilterRule, QueueConfig, SuffixFilterRule

from bucketbrush.errors import BucketbrushError
from bucketbrush.layout import Layout
from bucketbrush.settings import Settings
from infra.bucket import layouts, lifecycle_rules

WEBHOOK_ID = "bucketbrush"
CREATED_EVENTS = ["s3:ObjectCreated:*"]
_CONFIG_ID_PREFIX = "bucketbrush-"


def webhook_arn(target_id: str = WEBHOOK_ID, region: str = "") -> str:
    """The ARN MinIO gives the webhook target ``target_id`` (``region``: the server's
    ``MINIO_SITE_REGION``, empty when unset)."""
    return f"arn:minio:sqs:{region}:{target_id}:webhook"


def minio_client(settings: Settings, http_client: urllib3.PoolManager | None = None) -> Minio:
    """A minio-py client for ``settings.s3_endpoint_url`` with the settings' credentials."""
    if not settings.s3_endpoint_url:
        raise BucketbrushError("MinIO setup needs BUCKETBRUSH_S3_ENDPOINT_URL", code="no_endpoint")
    parts = urlsplit(settings.s3_endpoint_url)
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    # The region is fixed so minio-py does not ask the server for it before each first call.
    return Minio(parts.netloc, access_key=settings.s3_access_key, secret_key=secret,
                 secure=parts.scheme == "https", region=settings.s3_region, http_client=http_client)


def notification_routes(settings: Settings, arn: str, manifests_arn: str | None = None) -> list[QueueConfig]:
    """Object creations under the inbox and jobs prefixes go to the webhook, nothing else
    (our own outputs and manifests must never come back as events). ``manifests_arn``: also
    route ``manifests/*.json`` to that target (any MinIO target: a subscriber's webhook, Kafka,
    AMQP, NATS...), for event subscribers; never to the functions' own webhook."""
    routes = [
        QueueConfig(queue=arn, events=list(CREATED_EVENTS),
                    config_id=f"{_CONFIG_ID_PREFIX}{name}" + (f"-{layout.tenant}" if layout.tenant else ""),
                    prefix_filter_rule=PrefixFilterRule(prefix))
        for layout in layouts(settings) for name, prefix in layout.input_folders.items()
    ]
    if manifests_arn:
        if manifests_arn == arn:
            raise BucketbrushError("the manifests route must not go to the functions' webhook target",
                                   code="invalid_route")
        routes.append(QueueConfig(queue=manifests_arn, events=list(CREATED_EVENTS),
                                  config_id=f"{_CONFIG_ID_PREFIX}manifests",
                                  prefix_filter_rule=PrefixFilterRule(settings.manifests_prefix),
                                  suffix_filter_rule=SuffixFilterRule(".json")))
    return routes


def notification_config(settings: Settings, arn: str, existing: NotificationConfig | None = None,
                        manifests_arn: str | None = None) -> NotificationConfig:
    """``existing`` with bucketbrush's routes replaced and everyone else's kept."""
    existing = existing or NotificationConfig()
    others = [q for q in existing.queue_config_list
              if not (q.config_id or "").startswith(_CONFIG_ID_PREFIX)]
    return NotificationConfig(
        cloud_func_config_list=list(existing.cloud_func_config_list),
        queue_config_list=others + notification_routes(settings, arn, manifests_arn),
        topic_config_list=list(existing.topic_config_list),
    )


def lifecycle_config(settings: Settings) -> LifecycleConfig | None:
    """``infra.bucket.lifecycle_rules`` as a minio-py ILM configuration (None: no rules)."""
    rules = []
    for r in lifecycle_rules(settings):
        abort = r.get("AbortIncompleteMultipartUpload")
        noncurrent = r.get("NoncurrentVersionExpiration")
        rules.append(Rule(
            ENABLED if r["Status"] == "Enabled" else DISABLED,
            rule_filter=Filter(prefix=r["Filter"]["Prefix"]),
            rule_id=r["ID"],
            expiration=Expiration(days=r["Expiration"]["Days"]),
            abort_incomplete_multipart_upload=(
                AbortIncompleteMultipartUpload(abort["DaysAfterInitiation"]) if abort else None),
            noncurrent_version_expiration=(
                NoncurrentVersionExpiration(noncurrent["NoncurrentDays"]) if noncurrent else None),
        ))
    return LifecycleConfig(rules) if rules else None


def apply_minio(client: Minio, settings: Settings, *, arn: str | None = None,
                manifests_arn: str | None = None) -> list[str]:
    """Converge the bucket on MinIO: exists, routes events to the webhook, has the ILM rules.

    Idempotent; returns a line per action.
    """
    arn = arn or webhook_arn(region="")
    bucket = settings.bucket
    done = []
    if client.bucket_exists(bucket):
        done.append(f"bucket {bucket}: exists")
    else:
        client.make_bucket(bucket)
        done.append(f"bucket {bucket}: created")
    config = notification_config(settings, arn, client.get_bucket_notification(bucket), manifests_arn)
    try:
        client.set_bucket_notification(bucket, config)
    except S3Error as exc:
        if exc.code == "InvalidArgument" and "ARN" in (exc.message or ""):
            target = arn.split(":")[-2]  # the ARN keeps the case of the variables' suffix
            if manifests_arn:
                raise BucketbrushError(
                    f"MinIO has no target {arn} or {manifests_arn}: configure both targets on the server "
                    f"(MINIO_NOTIFY_<TYPE>_ENABLE_<ID>=on, see infra/compose.yaml) and restart MinIO",
                    code="minio_webhook_missing") from exc
            raise BucketbrushError(
                f"MinIO has no webhook target {arn}: set MINIO_NOTIFY_WEBHOOK_ENABLE_{target}=on and "
                f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{target} (see infra/compose.yaml) and restart MinIO",
                code="minio_webhook_missing") from exc
        raise
    done.append(f"events: s3:ObjectCreated:* under {', '.join(Layout(settings).input_folders.values())} -> {arn}")
    if manifests_arn:
        done.append(f"events: s3:ObjectCreated:* under {settings.manifests_prefix}*.json -> {manifests_arn}")
    lifecycle = lifecycle_config(settings)
    if lifecycle:
        client.set_bucket_lifecycle(bucket, lifecycle)
        done.append("lifecycle: " + ", ".join(
            f"{r.rule_filter.prefix} {r.expiration.days}d" for r in lifecycle.rules))
    else:
        client.delete_bucket_lifecycle(bucket)
        done.append("lifecycle: none")
    return done


def mc_commands(settings: Settings, *, alias: str = "minio", target_id: str = WEBHOOK_ID,
                endpoint: str = "http://functions:8080/events/minio", region: str = "",
                manifests_arn: str | None = None) -> str:
    """The same setup as ``mc`` commands (shell text, for the README or a runbook)."""
    target = f"{alias}/{settings.bucket}"
    arn = webhook_arn(target_id, region)
    rules: dict[str, Any] = {"Rules": lifecycle_rules(settings)}
    lines = [
        f"# The webhook target (or MINIO_NOTIFY_WEBHOOK_*_{target_id} variables, as in infra/compose.yaml)",
        f'mc admin config set {alias} notify_webhook:{target_id} endpoint="{endpoint}" '
        f'auth_token="$BUCKETBRUSH_FUNCTIONS_TOKEN" queue_dir="/events" queue_limit="100000"',
        f"mc admin service restart {alias}",
        "# The bucket and its event routes (only inbox/, jobs/ and conversations/: never outputs or manifests)",
        f"mc mb --ignore-existing {target}",
        *(f"mc event add {target} {arn} --event put --prefix {prefix}"
          for prefix in Layout(settings).input_folders.values()),
    ]
    if manifests_arn:
        lines += ["# Manifest events for subscribers (to a target of theirs, never the functions' webhook)",
                  f"mc event add {target} {manifests_arn} --event put --prefix {settings.manifests_prefix} "
                  "--suffix .json"]
    if rules["Rules"]:
        lines += ["# Lifecycle (ILM): the rules of `bucketbrush infra apply`",
                  f"mc ilm rule import {target} <<'EOF'", json.dumps(rules, indent=2), "EOF"]
    else:
        lines += [f"mc ilm rule rm --all --force {target}"]
    origins = ",".join(settings.cors_allowed_origins)
    lines += ["# CORS for browser uploads is server-wide on MinIO",
              f'mc admin config set {alias} api cors_allow_origin="{origins}"']
    return "\n".join(lines) + "\n"
