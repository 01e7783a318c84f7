"""Tenants: many apps on one bucket, each under ``tenants/<tenant>/`` (bucketbrush/layout.py).

The tenants file (JSON, ``settings.tenants_file``, default ``<state_dir>/tenants.json``) lists
each tenant: its access key id (the secret is shown once, by ``bucketbrush tenants add`` and
``rotate``, and kept only by the store) and its limits. A limit a tenant does not set comes
from the ``tenant_*`` settings; 0 means no limit. A key under ``tenants/<t>/`` of a tenant that
is not in the file gets the settings' limits (a deployment may manage credentials elsewhere).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from bucketbrush.errors import UnknownTenant
from bucketbrush.layout import is_tenant
from bucketbrush.settings import Settings


class Limits(BaseModel):
    """A tenant's own limits; None: the settings' default."""

    model_config = ConfigDict(extra="forbid")

    jobs_per_hour: int | None = Field(default=None, ge=0)
    max_concurrent: int | None = Field(default=None, ge=0)
    input_bytes_per_day: int | None = Field(default=None, ge=0)
    recipes: list[str] | None = None

    def resolved(self, settings: Settings) -> Limits:
        """Every limit set: the tenant's own, else the settings' (0 / [] mean no limit)."""
        return Limits(
            jobs_per_hour=settings.tenant_jobs_per_hour if self.jobs_per_hour is None else self.jobs_per_hour,
            max_concurrent=settings.tenant_max_concurrent if self.max_concurrent is None else self.max_concurrent,
            input_bytes_per_day=(settings.tenant_input_bytes_per_day if self.input_bytes_per_day is None
                                 else self.input_bytes_per_day),
            recipes=list(settings.tenant_recipes) if self.recipes is None else self.recipes,
        )


class Tenant(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    access_key: str | None = None
    created_at: float = Field(default_factory=time.time)
    rotated_at: float | None = None
    limits: Limits = Field(default_factory=Limits)
    # The SHA-256 of the tenant's functions token (the host's /presign, /manifest-url and the
    # studio page, as this tenant); the token itself is shown once.
    token_sha256: str | None = None


def new_token() -> tuple[str, str]:
    """A tenant's functions token and its SHA-256 (what the tenants file keeps)."""
    token = "bbt_" + secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def tenants_path(settings: Settings) -> Path:
    return settings.tenants_file or settings.state_dir / "tenants.json"


class TenantsFile:
    """The tenants file, re-read when it changes (the handler asks once per job)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._tenants: dict[str, Tenant] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantsFile:
        return cls(tenants_path(settings))

    def all(self) -> dict[str, Tenant]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._tenants = None, {}
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            doc = json.loads(self.path.read_text() or "{}")
            self._tenants = {t["name"]: Tenant.model_validate(t) for t in doc.get("tenants", [])}
            self._stamp = stamp
        return dict(self._tenants)

    def get(self, name: str) -> Tenant | None:
        return self.all().get(name)

    def require(self, name: str) -> Tenant:
        if (tenant := self.get(name)) is None:
            raise UnknownTenant(f"no tenant {name!r} in {self.path} (`bucketbrush tenants list`)")
        return tenant

    def tenant_for_token(self, token: str) -> str | None:
        """The tenant whose functions token this is, or None."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for tenant in self.all().values():  # every entry compared: the time says nothing
            if tenant.token_sha256 and hmac.compare_digest(tenant.token_sha256, digest):
                found = tenant.name
        return found

    def limits(self, settings: Settings, name: str) -> Limits:
        tenant = self.get(name)
        return (tenant.limits if tenant else Limits()).resolved(settings)

    def save(self, tenants: dict[str, Tenant]) -> None:
        """Write atomically, readable by its owner only (it names access keys)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = json.dumps({"tenants": [t.model_dump(mode="json") for t in sorted(tenants.values(),
                                                                                  key=lambda t: t.name)]}, indent=2)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(body + "\n")
        tmp.replace(self.path)

    def put(self, tenant: Tenant) -> None:
        if not is_tenant(tenant.name):
            raise ValueError(f"bad tenant name {tenant.name!r}: lowercase letters, digits and '-', up to 32")
        tenants = self.all()
        tenants[tenant.name] = tenant
        self.save(tenants)

    def remove(self, name: str) -> Tenant:
        tenants = self.all()
        tenant = tenants.pop(name, None)
        if tenant is None:
            raise UnknownTenant(f"no tenant {name!r} in {self.path}")
        self.save(tenants)
        return tenant
