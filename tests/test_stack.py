"""``bucketbrush up`` on ports that another process takes between the pick and the bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import infra.local
from bucketbrush.settings import Settings
from bucketbrush.store import s3_client
from infra.local import LocalStack

pytestmark = pytest.mark.e2e

# The order infra.local picks SeaweedFS's ports in.
PORTS = ["master", "volume", "filer", "s3", "admin"]


@pytest.mark.parametrize("taken", ["volume", "s3"])  # weed exits / weed keeps running without it
def test_up_comes_up_when_a_picked_port_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 taken: str) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    picked: list[int] = []
    real = infra.local.stable_port

    def pick(extra_offset: int | None = None) -> int:
        port = busy_port if len(picked) == PORTS.index(taken) else real(extra_offset)
        picked.append(port)
        return port

    monkeypatch.setattr(infra.local, "stable_port", pick)
    stack = LocalStack(Settings(_env_file=None, state_dir=tmp_path, local_redis="always", bucket="ports"))
    lines: list[str] = []
    try:
        state = stack.up(runners=0, report=lines.append)
        assert busy_port in picked[:5]  # the first start really got the busy port
        assert any("retrying on fresh ports (1/4)" in line for line in lines), lines
        assert str(busy_port) not in state.s3_endpoint_url
        s3 = s3_client(stack.settings_for_clients())
        s3.put_object(Bucket="ports", Key="probe.txt", Body=b"ok")  # the volume server works too
        assert s3.get_object(Bucket="ports", Key="probe.txt")["Body"].read() == b"ok"
        assert stack.is_running()
    finally:
        stack.down()
        busy.close()
    assert not stack.is_running()


def test_up_keeps_endpoint_and_keys_across_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    from bucketbrush.cli import main

    monkeypatch.setenv("BUCKETBRUSH_STATE_DIR", str(tmp_path))
    stack = LocalStack(Settings(_env_file=None, state_dir=tmp_path, local_redis="always", bucket="same"))
    lines: list[str] = []
    try:
        first = stack.up(runners=0, report=lines.append)
        s3 = s3_client(stack.settings_for_clients())
        s3.put_object(Bucket="same", Key="kept.txt", Body=b"still here")
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "same", "Key": "kept.txt"}, ExpiresIn=600)
        stack.down()
        # `bucketbrush env` answers while the stack is down, from the remembered identity.
        assert main(["env"]) == 0
        exported = capsys.readouterr().out
        assert f"export BUCKETBRUSH_S3_ENDPOINT_URL={first.s3_endpoint_url}\n" in exported
        assert f"export AWS_ACCESS_KEY_ID={first.s3_access_key}\n" in exported

        second = stack.up(runners=0, report=lines.append)
        assert (second.s3_endpoint_url, second.s3_access_key, second.s3_secret_key, second.redis_url) == (
            first.s3_endpoint_url, first.s3_access_key, first.s3_secret_key, first.redis_url)
        assert httpx.get(url).content == b"still here"  # a URL presigned before the restart
        stack.down()

        # A remembered port held by someone else: fresh ports, same keys, and `up` says so.
        port = int(first.s3_endpoint_url.rsplit(":", 1)[1])
        with socket.socket() as busy:
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old server's TIME_WAIT
            busy.bind(("127.0.0.1", port))
            busy.listen()
            lines.clear()
            third = stack.up(runners=0, report=lines.append)
        assert third.s3_endpoint_url != first.s3_endpoint_url and third.s3_access_key == first.s3_access_key
        assert any(f"s3 {port}" in line and "fresh ports" in line for line in lines), lines
        stack.down()

        fourth = stack.up(runners=0, report=lines.append, new_credentials=True)
        assert fourth.s3_endpoint_url == third.s3_endpoint_url and fourth.s3_access_key != first.s3_access_key
        fresh = s3_client(stack.settings_for_clients())
        assert fresh.get_object(Bucket="same", Key="kept.txt")["Body"].read() == b"still here"
    finally:
        stack.down()
    assert not stack.is_running()
