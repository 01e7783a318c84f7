"""The local stack for a laptop: SeaweedFS + Redis + the event source + a runner.

``up`` starts what is missing, waits until each part answers, and records every process it
started (PID and start time) in ``<state_dir>/stack.json``; ``down`` stops exactly those.
Everything binds to 127.0.0.1; state and logs live under the state dir.

The stack's identity (its ports and S3 keys) is kept in ``<state_dir>/identity.json`` across
``down`` and ``up``, so presigned URLs, clients and ``.env`` files made earlier keep working.
``up --new-credentials`` makes new keys; a remembered port that another process holds is
replaced by a fresh one, and ``up`` says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from bucketbrush.credentials import DEV_CA, ensure_dev_credentials
from bucketbrush.settings import STACK_FILE, Settings
from bucketbrush.store import s3_client
from functions.sources.seaweedfs import weed_binary
from infra import procs
from infra.bucket import apply_bucket
from infra.procs import (
    Proc,
    StackError,
    StackState,
    port_free,
    redis_answers,
    stable_port,
    start_redis,
    start_with_retries,
    terminate,
    wait_until,
)
from infra.seaweedfs import apply_retention

__all__ = ["GRPC_OFFSET", "LocalStack", "StackError"]

# weed derives a gRPC port as HTTP port + 10000 (filer.meta.tail, weed shell): keep both free.
GRPC_OFFSET = 10000
IDENTITY_FILE = "identity.json"
SEAWEEDFS_PORTS = ("master", "volume", "filer", "s3", "admin")


class LocalStack:
    """Start and stop the local servers for one state dir."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.state_file = self.state_dir / STACK_FILE
        self.identity_file = self.state_dir / IDENTITY_FILE
        self.logs = self.state_dir / "logs"

    # -- state ----------------------------------------------------------------------------

    def read_state(self) -> StackState | None:
        try:
            return StackState.from_json(self.state_file.read_text())
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _write_state(self, state: StackState) -> None:
        _write_private(self.state_file, state.to_json())

    def read_identity(self) -> dict[str, Any]:
        """The remembered ports and keys (empty before the first ``up``)."""
        try:
            data = json.loads(self.identity_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _remember(self, state: StackState, ports: dict[str, int]) -> None:
        redis = state.process("redis")
        identity = {"s3_access_key": state.s3_access_key, "s3_secret_key": state.s3_secret_key,
                    "seaweedfs_ports": ports}
        if redis is not None and state.redis_url:
            identity["redis_port"] = int(state.redis_url.rsplit(":", 1)[1].split("/")[0])
        if state.webhook_job_secret:
            identity["webhook_job_secret"] = state.webhook_job_secret
        _write_private(self.identity_file, json.dumps(identity, indent=2))

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> tuple[Any, Proc]:
        return procs.spawn(name, cmd, self.logs, env)

    # -- up -------------------------------------------------------------------------------

    def up(self, *, runners: int = 1, report: Callable[[str], None] = lambda _: None,
           new_credentials: bool = False) -> StackState:
        """Start the stack (or report the running one) and return its state. The ports and
        keys of the last ``up`` in this state dir are reused (``new_credentials``: new keys)."""
        if (state := self.read_state()) and state.is_running():
            report(f"already running (state: {self.state_file})")
            if new_credentials:
                report("--new-credentials takes effect on the next start: bucketbrush down, then up")
            return state
        if state:
            self.down(report=report)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        identity = self.read_identity()
        if new_credentials and identity:
            report("new S3 credentials: clients, .env files and presigned URLs made before stop working")
            identity = {k: v for k, v in identity.items()
                        if k not in ("s3_access_key", "s3_secret_key", "webhook_job_secret")}
        state = StackState()
        try:
            self._start_redis(state, report, identity.get("redis_port"))
            ports = self._start_seaweedfs(state, report, identity)
            if not self.settings.webhook_job_secret:
                # Remembered with the ports and keys: receivers keep verifying across restarts.
                state.webhook_job_secret = (identity.get("webhook_job_secret")
                                            or "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
                report(f"webhooks: per-job webhooks are signed with webhook_job_secret in {self.state_file}")
            self._write_state(state)
            self._remember(state, ports)
            settings = self._child_settings(state)
            report("bucket: " + "; ".join(apply_bucket(s3_client(settings), settings)))
            # SeaweedFS keeps lifecycle rules without enforcing them: enforce them as path TTLs.
            report("retention: " + "; ".join(apply_retention(state.seaweedfs_master, settings)))
            self._start_child(state, "events", ["events", "seaweedfs", "--filer", state.filer], report)
            if runners:
                self._dev_signer(report)
            for i in range(runners):
                self._start_child(state, f"runner-{i}", ["runner"], report)
            if runners:
                models = self.settings.models_file
                report(f"models: {models}" if models else
                       "models: none (BUCKETBRUSH_MODELS_FILE unset where `up` ran: diffusion recipes fail "
                       "with model_unavailable; README, section Models)")
        except BaseException:
            self._write_state(state)
            self.down(report=report)
            raise
        return state

    def _dev_signer(self, report: Callable[[str], None]) -> None:
        """Content Credentials for the local runners: a development CA and signer in the state
        dir, unless a key is configured or credentials are off."""
        if not self.settings.content_credentials:
            report("content credentials: off (BUCKETBRUSH_CONTENT_CREDENTIALS): outputs are not signed")
            return
        if self.settings.c2pa_signing_key is not None:
            report("content credentials: signed with c2pa_signing_key / c2pa_signing_certs")
            return
        folder, made = ensure_dev_credentials(self.state_dir)
        report(f"content credentials: outputs signed by the local development signer in {folder}"
               f"{' (made now)' if made else ''}; `bucketbrush verify FILE|KEY` trusts its CA. To trust it "
               f"elsewhere, add {folder / DEV_CA} as a C2PA trust anchor (c2patool: --trust_anchors); "
               f"never use it in production (docs/content-credentials.md)")

    def start_runner(self, name: str, *args: str, report: Callable[[str], None] = lambda _: None) -> None:
        """One more runner in the running stack (e.g. ``--serve gpu``); ``down`` stops it too."""
        state = self.read_state()
        if not state:
            raise StackError("the local stack is not running")
        self._dev_signer(report)  # `up` with no runner made none
        self._start_child(state, name, ["runner", *args], report)

    def _start_redis(self, state: StackState, report: Callable[[str], None], port: int | None = None) -> None:
        url = self.settings.redis_url
        state.broker_namespace = self.settings.broker_namespace
        if self.settings.local_redis != "always" and redis_answers(url):
            state.redis_url = url
            if "broker_namespace" not in self.settings.model_fields_set:
                # A shared Redis: keep this stack's queue and claims apart from any other
                # stack (another clone, another state dir) using the same server.
                digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]
                state.broker_namespace = f"{self.settings.broker_namespace}-{digest}"
            report(f"redis: using {url} (namespace {state.broker_namespace})")
            return
        if self.settings.local_redis == "never":
            raise StackError(f"no Redis answers at {url} and local_redis is 'never'")
        proc, url = start_redis(self.state_dir / "redis", self.logs, port=port, report=report)
        state.processes.append(proc)
        state.redis_url = url
        report(f"redis: started {url} (pid {proc.pid})")

    def _start_seaweedfs(self, state: StackState, report: Callable[[str], None],
                         identity: dict[str, Any]) -> dict[str, int]:
        data = self.state_dir / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        access = identity.get("s3_access_key") or "bb" + secrets.token_hex(8)
        secret = identity.get("s3_secret_key") or secrets.token_urlsafe(24)
        remembered = identity.get("seaweedfs_ports") or {}
        wanted: list[dict[str, int]] = []
        if remembered and set(remembered) == set(SEAWEEDFS_PORTS):
            taken = [f"{n} {p}" for n, p in remembered.items()
                     if not (port_free(p, reuse=True) and port_free(p + GRPC_OFFSET, reuse=True))]
            if taken:
                report(f"seaweedfs: remembered port(s) taken ({', '.join(taken)}): starting on fresh ports; "
                       "the S3 endpoint changes (`bucketbrush env` prints the new one)")
            else:
                wanted.append(dict(remembered))
        used: dict[str, int] = {}

        def start() -> Proc:
            # Picked free, not reserved: a port taken before weed binds it makes weed exit,
            # and start_with_retries starts it again on fresh ports.
            # Below the ephemeral range: kept across restarts, so no client should grab one meanwhile.
            ports = wanted.pop() if wanted else {n: stable_port(GRPC_OFFSET) for n in SEAWEEDFS_PORTS}
            used.clear()
            used.update(ports)
            cmd = [
                weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0",
            ]
            for name, port in ports.items():
                cmd += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
            log = self.logs / "seaweedfs.log"
            offset = log.stat().st_size if log.exists() else 0
            # weed mini takes its S3 admin identity from the environment.
            popen, proc = self._spawn("seaweedfs", cmd, {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret})
            state.processes.append(proc)
            state.s3_endpoint_url, state.s3_access_key = f"http://127.0.0.1:{ports['s3']}", access
            state.s3_secret_key, state.filer = secret, f"127.0.0.1:{ports['filer']}"
            state.seaweedfs_master = f"127.0.0.1:{ports['master']}"
            s3 = s3_client(self._child_settings(state), probe=True)
            try:
                # S3 answering is not enough: until the volume server's first heartbeat reaches
                # the master, a GET of an object stored before a restart fails with InternalError.
                wait_until("seaweedfs", lambda: s3.list_buckets() is not None
                           and volumes_registered(state.seaweedfs_master, data), 90, popen, log, offset)
            except StackError:
                terminate(proc, 15)  # a part of weed mini may still run
                state.processes.remove(proc)
                raise
            return proc

        proc = start_with_retries(start, report=report)
        report(f"seaweedfs: S3 at {state.s3_endpoint_url}, filer {state.filer} (pid {proc.pid})")
        return dict(used)

    def _start_child(self, state: StackState, name: str, args: list[str],
                     report: Callable[[str], None]) -> None:
        ready = self.state_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bucketbrush.cli", *args, "--ready-file", str(ready)]
        popen, proc = self._spawn(name, cmd, self._child_env(state))
        proc.args = args
        state.processes.append(proc)
        self._write_state(state)
        wait_until(name, ready.exists, 120, popen, Path(proc.log))
        report(f"{name}: running (pid {proc.pid}, log {proc.log})")

    def _child_env(self, state: StackState) -> dict[str, str]:
        # Settings given to `up` explicitly (not from the environment) travel to the children.
        env = {}
        for name in self.settings.model_fields_set:
            value = getattr(self.settings, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"BUCKETBRUSH_{name.upper()}"] = (json.dumps(value, default=_plain) if isinstance(value, (list, dict))
                                                  else str(value))
        return env | {
            "BUCKETBRUSH_STATE_DIR": str(self.state_dir),
            "BUCKETBRUSH_S3_ENDPOINT_URL": state.s3_endpoint_url or "",
            "BUCKETBRUSH_S3_ACCESS_KEY": state.s3_access_key or "",
            "BUCKETBRUSH_S3_SECRET_KEY": state.s3_secret_key or "",
            "BUCKETBRUSH_REDIS_URL": state.redis_url or "",
            "BUCKETBRUSH_BROKER_NAMESPACE": state.broker_namespace or self.settings.broker_namespace,
            "BUCKETBRUSH_BUCKET": self.settings.bucket,
            "PYTHONUNBUFFERED": "1",
        }

    def _child_settings(self, state: StackState) -> Settings:
        return self.settings.model_copy(update={
            "s3_endpoint_url": state.s3_endpoint_url,
            "s3_access_key": state.s3_access_key,
            "s3_secret_key": SecretStr(state.s3_secret_key or ""),
            "redis_url": state.redis_url,
            "broker_namespace": state.broker_namespace or self.settings.broker_namespace,
        })

    def settings_for_clients(self) -> Settings:
        state = self.read_state()
        if not state:
            raise StackError("the local stack is not running: bucketbrush up")
        return self._child_settings(state)

    # -- down -----------------------------------------------------------------------------

    def is_running(self, state: StackState | None = None) -> bool:
        """True when every process of the recorded stack is still the one that was started."""
        state = self.read_state() if state is None else state
        return state is not None and state.is_running()

    def stop_process(self, name: str, timeout: float = 30) -> bool:
        """Stop one recorded process (e.g. the event source, to test replay). True if stopped."""
        state = self.read_state()
        proc = state.process(name) if state else None
        return terminate(proc, timeout) if proc else False

    def restart_process(self, name: str) -> None:
        """Start a stopped child again with the same command (events or runner-N)."""
        state = self.read_state()
        if not state:
            raise StackError("the local stack is not running")
        proc = state.process(name)
        if proc is None:
            raise StackError(f"no process named {name}")
        terminate(proc, 30)
        state.processes.remove(proc)
        self._start_child(state, name, proc.args, lambda _: None)

    def stop_runner(self, name: str, timeout: float = 60) -> bool:
        """Stop a runner started with ``start_runner`` (it finishes its job) and forget it, so
        the stack still counts as running."""
        state = self.read_state()
        proc = state.process(name) if state else None
        if state is None or proc is None:
            return False
        stopped = terminate(proc, timeout)
        state.processes.remove(proc)
        self._write_state(state)
        return stopped

    def down(self, *, report: Callable[[str], None] = lambda _: None) -> None:
        """Stop every process this stack started (children first), then forget the state."""
        state = self.read_state()
        if not state:
            report("nothing to stop")
            return
        for p in reversed(state.processes):
            stopped = terminate(p, 30)
            report(f"{p.name}: {'stopped' if stopped else 'was not running'} (pid {p.pid})")
        self.state_file.unlink(missing_ok=True)
        for ready in self.state_dir.glob("*.ready"):
            ready.unlink(missing_ok=True)


def volumes_registered(master: str | None, data: Path) -> bool:
    """True when the master knows a volume server holding at least the volumes on disk."""
    on_disk = len(list(data.glob("*.dat")))
    with urllib.request.urlopen(f"http://{master}/dir/status", timeout=5) as reply:
        topology = json.load(reply)["Topology"]
    nodes = [node for dc in topology.get("DataCenters") or [] for rack in dc.get("Racks") or []
             for node in rack.get("DataNodes") or []]
    return bool(nodes) and sum(int(node.get("Volumes") or 0) for node in nodes) >= on_disk


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, owner-only (it holds the local store's credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
def _plain(value: Any) -> Any:
    """JSON for settings values inside lists (webhook subscriptions): models as dicts, secrets revealed."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
