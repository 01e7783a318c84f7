"""Security review checks not covered elsewhere (the others: tests/test_http.py for 413 bodies,
forged SNS certificate URLs and subscribe URLs; tests/test_e2e.py and tests/test_params.py for
presigned POST policies and params fixed at presign time; tests/corpus.py for spec inputs
outside inbox/ and outputs/)."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from pydantic import SecretStr
from starlette.testclient import TestClient

from bucketbrush.settings import Settings
from functions.http import create_app
from tests.helpers import drop, png_bytes, wait_final

TOKEN = "tok-security-71c2"


def test_bearer_token_is_compared_in_constant_time(tmp_path, monkeypatch):
    # Nothing here reaches a server: an event with no records enqueues nothing.
    settings = Settings(state_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", s3_endpoint_url="http://127.0.0.1:1")
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app = create_app(settings.model_copy(update={"functions_token": SecretStr(TOKEN)}))
    with TestClient(app) as client:
        for wrong in (TOKEN[:-1] + "x", "t", TOKEN + "x", ""):
            assert client.post("/events/s3", json={"Records": []},
                               headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
        assert client.post("/events/s3", json={"Records": []}, headers={"Authorization": f"Bearer {TOKEN}"}
                           ).status_code == 200
    # Every non-empty token offered was compared through it (an empty one may be refused first).
    assert {a for a, _ in calls} >= {t.encode() for t in (TOKEN[:-1] + "x", "t", TOKEN + "x", TOKEN)}
    assert all(b == TOKEN.encode() for _, b in calls)


# -- the local stack (`bucketbrush up`) -------------------------------------------------------

def _listening_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _listening_addresses(inodes: set[str]) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) of listening sockets among ``inodes``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1].rsplit(":", 1)[0])
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_up_binds_every_server_to_loopback(stack):
    addresses = []
    for proc in stack.read_state().processes:
        addresses += _listening_addresses(_listening_inodes(proc.pid))
    assert addresses, "no listening socket found: the check would pass vacuously"
    assert set(addresses) <= LOOPBACK, addresses


def test_state_and_identity_files_are_owner_only(stack):
    for path in (stack.state_file, stack.identity_file):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} is {oct(mode)}"


def test_no_secret_in_logs_or_manifests(stack, settings, bucket):
    # A job that succeeds and one that fails, whatever ran before in the session.
    done = [wait_final(bucket, drop(bucket, f"inbox/filter/security/{name}", body, Metadata={"style": "noir"}))
            for name, body in (("ok.png", png_bytes()), ("bad.png", b"not an image"))]
    assert [m.status for m in done] == ["succeeded", "failed"]
    secrets = [settings.s3_secret_key.get_secret_value()]
    if settings.webhook_job_secret:
        secrets.append(settings.webhook_job_secret.get_secret_value()
                       if isinstance(settings.webhook_job_secret, SecretStr) else settings.webhook_job_secret)
    assert all(len(s) >= 16 for s in secrets)
    logs = list(stack.logs.glob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert not [s for s in secrets if s in text], f"a secret is in {log.name}"
    manifests = 0
    for page in bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix="manifests/"):
        for obj in page.get("Contents", []):
            body = bucket.s3.get_object(Bucket=bucket.name, Key=obj["Key"])["Body"].read().decode(errors="replace")
            assert not [s for s in secrets if s in body], obj["Key"]
            manifests += 1
    assert manifests >= 2
