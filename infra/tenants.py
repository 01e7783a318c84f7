"""Tenants' credentials: each can touch only ``<bucket>/tenants/<tenant>/``.

- **SeaweedFS** (the local stack): an identity per tenant, made with ``weed shell`` ->
  ``s3.configure``, whose actions are scoped to ``<bucket>/tenants/<tenant>/*``. The trailing
  ``/*`` matters on SeaweedFS 4.48: an action scoped to ``bucket/prefix`` without it denies
  everything, even inside the prefix (measured; see docs/tenants.md). SeaweedFS keeps the
  identities in the filer, so they survive restarts of the stack.
- **AWS and MinIO**: the IAM policy to attach to the tenant's user (or role), and the session
  policy to pass to ``sts:AssumeRole`` (a session gets the intersection of the role's policy and
  this one), in the shape of AWS's "home directory" example: ``s3:ListBucket`` on the bucket
  with an ``s3:prefix`` condition, object actions on ``tenants/<tenant>/*``. MinIO reads the
  same policy language (``mc admin policy create``).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from typing import Any

from bucketbrush.errors import StackError
from bucketbrush.layout import Layout
from bucketbrush.settings import Settings
from functions.sources.seaweedfs import weed_binary

# SeaweedFS action groups a tenant gets on its prefix (no Admin: no bucket settings).
SEAWEEDFS_ACTIONS = ("Read", "Write", "List", "Tagging")
# The object actions a tenant needs: the app's uploads, downloads, deletes, multipart uploads.
OBJECT_ACTIONS = ("s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObject",
                  "s3:DeleteObjectVersion", "s3:GetObjectTagging", "s3:PutObjectTagging",
                  "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")
# AWS's limit on a session policy's plaintext (sts:AssumeRole ``Policy``).
SESSION_POLICY_MAX_CHARS = 2048


@dataclass(frozen=True)
class Credentials:
    tenant: str
    access_key: str
    secret_key: str


def new_credentials(tenant: str) -> Credentials:
    return Credentials(tenant, "BBT" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))


def iam_policy(settings: Settings, tenant: str) -> dict[str, Any]:
    """The identity policy for ``tenant``'s user or role: list and use ``tenants/<tenant>/`` only."""
    prefix = Layout(settings).for_tenant(tenant).space
    bucket = f"arn:aws:s3:::{settings.bucket}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListTenantPrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket,
                "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}},
            },
            {
                "Sid": "TenantObjects",
                "Effect": "Allow",
                "Action": list(OBJECT_ACTIONS),
                "Resource": f"{bucket}/{prefix}*",
            },
        ],
    }


def session_policy(settings: Settings, tenant: str) -> str:
    """The same grants as a session policy for ``sts:AssumeRole(Policy=...)``: compact JSON,
    within AWS's 2,048-character limit."""
    text = json.dumps(iam_policy(settings, tenant), separators=(",", ":"))
    if len(text) > SESSION_POLICY_MAX_CHARS:
        raise ValueError(f"the session policy is {len(text)} characters; AWS allows {SESSION_POLICY_MAX_CHARS}")
    return text


def assume_role_kwargs(settings: Settings, tenant: str, role_arn: str, duration_s: int = 3600) -> dict[str, Any]:
    """Arguments for boto3's ``sts.assume_role``: temporary credentials confined to the tenant."""
    return {"RoleArn": role_arn, "RoleSessionName": f"bucketbrush-{tenant}", "Policy": session_policy(settings, tenant),
            "DurationSeconds": duration_s}


def seaweedfs_actions(settings: Settings, tenant: str) -> list[str]:
    """``Action:bucket/tenants/<tenant>/*`` for each action group."""
    resource = f"{settings.bucket}/{Layout(settings).for_tenant(tenant).space}*"
    return [f"{action}:{resource}" for action in SEAWEEDFS_ACTIONS]


def _user(tenant: str) -> str:
    return f"bucketbrush-tenant-{tenant}"


class SeaweedIdentities:
    """Tenant identities on a SeaweedFS cluster, through ``weed shell`` on its master."""

    def __init__(self, settings: Settings, master: str) -> None:
        self.settings = settings
        self.master = master

    def _shell(self, *commands: str, missing_ok: bool = False) -> str:
        result = subprocess.run([weed_binary(), "shell", f"-master={self.master}"],
                                input="\n".join(commands) + "\n", capture_output=True, text=True, timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.lower().startswith("error")]
        if missing_ok and errors and all("NotFound" in line for line in errors):
            return result.stdout  # weed shell exits 1 on a missing user too
        if result.returncode != 0 or errors:
            raise StackError(f"weed shell s3.configure failed: {' '.join(errors) or result.stderr[-500:]}")
        return result.stdout

    def put(self, tenant: str) -> Credentials:
        """Create (or replace: rotate) ``tenant``'s identity with fresh keys."""
        creds = new_credentials(tenant)
        self.remove(tenant, missing_ok=True)
        self._shell(
            f"s3.configure -user={_user(tenant)} -access_key={creds.access_key} -secret_key={creds.secret_key} "
            f"-actions={','.join(seaweedfs_actions(self.settings, tenant))} -apply",
        )
        return creds

    def remove(self, tenant: str, *, missing_ok: bool = False) -> None:
        self._shell(f"s3.configure -user={_user(tenant)} -delete -apply", missing_ok=missing_ok)

    def names(self) -> list[str]:
        """The tenants that have an identity."""
        out = self._shell("s3.configure")
        doc = json.loads(out[out.index("{"):out.rindex("}") + 1]) if "{" in out else {}
        users = [i.get("name", "") for i in doc.get("identities", [])]
        return sorted(u.removeprefix(_user("")) for u in users if u.startswith(_user("")))
