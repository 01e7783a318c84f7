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
    real = infra.local.free_port

    def pick(extra_offset: int | None = None) -> int:
        port = busy_port if len(picked) == PORTS.index(taken) else real(extra_offset)
        picked.append(port)
        return port

    monkeypatch.setattr(infra.local, "free_port", pick)
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
