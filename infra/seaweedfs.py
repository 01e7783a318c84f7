"""Retention that SeaweedFS really enforces.

SeaweedFS stores a bucket's lifecycle configuration but deletes nothing by it (that needs a
separate lifecycle worker). What it does enforce is a TTL per filer path, set with
``weed shell`` -> ``fs.configure -locationPrefix=... -ttl=... -apply``: files written under
the path afterwards live on TTL volumes and disappear when the TTL passes. ``apply_ttl_rules``
turns the bucket's lifecycle rules into those path TTLs. Objects written before a rule was
configured keep no TTL.
"""

from __future__ import annotations

import subprocess
from typing import Any

from bucketbrush.settings import Settings
from functions.sources.seaweedfs import weed_binary


def ttl_rules(lifecycle_rules: list[dict[str, Any]], unit: str = "d") -> list[tuple[str, str]]:
    """(prefix, SeaweedFS TTL) for each expiration rule, e.g. ("outputs/", "7d"); ``unit`` other
    than days shortens them (tests)."""
    return [(r["Filter"]["Prefix"], f"{r['Expiration']['Days']}{unit}")
            for r in lifecycle_rules if "Days" in r.get("Expiration", {})]


def apply_retention(master: str, settings: Settings) -> list[str]:
    """The bucket's lifecycle rules (``infra.bucket.lifecycle_rules``) as SeaweedFS path TTLs,
    which SeaweedFS enforces (it stores lifecycle configurations without acting on them)."""
    from infra.bucket import lifecycle_rules

    return apply_ttl_rules(master, settings.bucket, ttl_rules(lifecycle_rules(settings), settings.seaweedfs_ttl_unit))


def apply_ttl_rules(master: str, bucket: str, rules: list[tuple[str, str]], *, timeout: float = 60) -> list[str]:
    """Configure a filer path TTL per (prefix, ttl) through ``weed shell``; returns its lines."""
    if not rules:
        return []
    commands = [f"fs.configure -locationPrefix=/buckets/{bucket}/{prefix} -ttl={ttl} -apply"
                for prefix, ttl in rules]
    result = subprocess.run(
        [weed_binary(), "shell", f"-master={master}"], input="\n".join(commands) + "\n",
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0 or "error" in result.stdout.lower():
        raise RuntimeError(f"weed shell fs.configure failed: {result.stdout[-500:]}{result.stderr[-500:]}")
    return [f"seaweedfs ttl: /buckets/{bucket}/{prefix} {ttl}" for prefix, ttl in rules]
