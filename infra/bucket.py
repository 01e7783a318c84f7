"""``bucketbrush infra apply``: the bucket, CORS for browser uploads and lifecycle rules.

Idempotent: each call converges the bucket to the settings and says what it did.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from bucketbrush.layout import Layout
from bucketbrush.settings import Settings
from bucketbrush.tenants import TenantsFile


def layouts(settings: Settings) -> list[Layout]:
    """The default tenant's layout, then each tenant's in the tenants file: every set of
    prefixes that needs retention rules and event routes."""
    root = Layout(settings).root
    return [root] + [root.for_tenant(name) for name in sorted(TenantsFile.from_settings(settings).all())]


def rule_id(name: str, layout: Layout) -> str:
    """``bucketbrush-<name>``, with ``-<tenant>`` for a tenant's prefixes."""
    return f"bucketbrush-{name}" + (f"-{layout.tenant}" if layout.tenant else "")


def lifecycle_rules(settings: Settings) -> list[dict[str, Any]]:
    """One expiration rule per prefix with a retention > 0 days (each tenant's prefixes too)."""
    rules = []
    for rule_id_, prefix, days in [rule for layout in layouts(settings) for rule in (
        (rule_id("inbox", layout), layout.inbox, settings.inbox_retention_days),
        (rule_id("jobs", layout), layout.jobs, settings.inbox_retention_days),
        # Chat turn files are inputs like job specs (the conversation's manifest and its
        # pictures live under manifests/ and outputs/, on their schedules).
        (rule_id("conversations", layout), layout.conversations, settings.inbox_retention_days),
        (rule_id("outputs", layout), layout.outputs, settings.outputs_retention_days),
        (rule_id("manifests", layout), layout.manifests, settings.manifests_retention_days),
        # The job index (bucketbrush/index.py) goes with the manifests it points at.
        (rule_id("index", layout), layout.index, settings.manifests_retention_days),
    )]:
        if days > 0:
            rule: dict[str, Any] = {
                "ID": rule_id_,
                "Filter": {"Prefix": prefix},
                "Status": "Enabled",
                "Expiration": {"Days": days},
                # With versioning on (the gallery), soft-deleted objects leave noncurrent
                # versions: they expire on the same schedule.
                "NoncurrentVersionExpiration": {"NoncurrentDays": days},
            }
            if prefix.endswith(settings.inbox_prefix):
                rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": 1}
            rules.append(rule)
    return rules


def cors_rules(settings: Settings) -> list[dict[str, Any]]:
    return [{
        "AllowedOrigins": list(settings.cors_allowed_origins),
        "AllowedMethods": ["GET", "HEAD", "POST", "PUT"],
        "AllowedHeaders": ["*"],
        # Apps read the ETag and version of their upload.
        "ExposeHeaders": ["ETag", "x-amz-version-id"],
        "MaxAgeSeconds": 3600,
    }]


def apply_bucket(s3: Any, settings: Settings) -> list[str]:
    """Create/configure the bucket; returns a line per action."""
    done = []
    try:
        s3.head_bucket(Bucket=settings.bucket)
        done.append(f"bucket {settings.bucket}: exists")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
        kwargs: dict[str, Any] = {"Bucket": settings.bucket}
        if settings.s3_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.s3_region}
        s3.create_bucket(**kwargs)
        done.append(f"bucket {settings.bucket}: created")
    s3.put_bucket_cors(Bucket=settings.bucket, CORSConfiguration={"CORSRules": cors_rules(settings)})
    done.append(f"cors: origins {', '.join(settings.cors_allowed_origins)}")
    rules = lifecycle_rules(settings)
    if rules:
        s3.put_bucket_lifecycle_configuration(
            Bucket=settings.bucket, LifecycleConfiguration={"Rules": rules}
        )
        done.append("lifecycle: " + ", ".join(
            f"{r['Filter']['Prefix']} {r['Expiration']['Days']}d" for r in rules))
    else:
        s3.delete_bucket_lifecycle(Bucket=settings.bucket)
        done.append("lifecycle: none")
    return done
