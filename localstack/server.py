"""LocalStack in host mode (no Docker): its own Python 3.13 venv, loopback only, stopped by PID.

    python -m localstack.server start   # installs .venv-localstack/ on first use, prints exports
    python -m localstack.server stop

LocalStack's runtime needs Python 3.13 (it fails to install on 3.11/3.12), so it lives in a
venv of its own beside the project's; nothing of it is imported here.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from infra import procs
from infra.procs import StackError, free_port, proc_start_time, terminate, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / ".venv-localstack"
# LocalStack's pinned, hashed set (`make lock` writes it from requirements/localstack.in).
LOCK_FILE = ROOT / "requirements" / "localstack.txt"
SERVICES = "s3,sqs,sns"
_MARKER = ".bucketbrush-installed"


def find_python313() -> str:
    """A Python 3.13 interpreter: $LOCALSTACK_PYTHON, python3.13 on PATH, or pyenv's."""
    candidates = [os.environ.get("LOCALSTACK_PYTHON"), shutil.which("python3.13")]
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.13.*/bin/python3"), reverse=True)
    for candidate in candidates:
        # A pyenv shim exists even where 3.13 is not the selected version: run it to be sure.
        if candidate and Path(candidate).exists() and subprocess.run(
            [candidate, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 13))"],
            capture_output=True,
        ).returncode == 0:
            return candidate
    raise StackError("LocalStack needs Python 3.13: install it (e.g. `pyenv install 3.13`) "
                     "or point LOCALSTACK_PYTHON at one")


def ensure_venv(venv: Path = DEFAULT_VENV, *, report=print) -> Path:
    """The venv's python, creating the venv and installing LocalStack when needed.

    Safe to call from concurrent processes (a file lock inside the venv); a half-finished
    install is completed on the next call.
    """
    python = venv / "bin" / "python"
    marker = venv / _MARKER
    wanted = LOCK_FILE.read_text()
    if marker.exists() and marker.read_text() == wanted and python.exists():
        return python
    venv.mkdir(parents=True, exist_ok=True)
    with open(venv / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == wanted and python.exists():
            return python
        started = time.monotonic()
        report(f"installing LocalStack into {venv} (2-3 minutes, once)")
        if not python.exists():
            subprocess.run([find_python313(), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--require-hashes", "--no-deps", "-r", str(LOCK_FILE)], check=True)
        marker.write_text(wanted)
        report(f"installed LocalStack in {time.monotonic() - started:.0f}s")
    return python


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


class LocalStackServer:
    """One LocalStack process on a free loopback port, with its state and log under ``workdir``."""

    def __init__(self, python: Path, workdir: Path, *, port: int | None = None, services: str = SERVICES) -> None:
        self.python = python
        self.workdir = workdir.resolve()
        self.port = port or free_port()
        self.services = services
        self.log = self.workdir / "localstack.log"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.started: str | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> str:
        """Start and wait until every service is up; returns the endpoint."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            # Its default server ignores the host and binds 0.0.0.0; hypercorn binds as told.
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "GATEWAY_SERVER": "hypercorn",
            "SERVICES": self.services,
            "EAGER_SERVICE_LOADING": "1",
            "DNS_ADDRESS": "0",  # no DNS server on :53
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",  # no analytics
            "LOCALSTACK_CLI": "0",
            # Inside a container (CI, dev containers) it assumes it is *the* LocalStack container
            # and writes to /var/lib/localstack; host mode keeps its files under our work dir.
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": str(self.workdir / "fs"),
        }
        # A PYTHONPATH holding the repository would let its localstack/ shadow LocalStack.
        env.pop("PYTHONPATH", None)
        cache = self.workdir / "fs" / "var" / "lib" / "localstack" / "cache"
        if self.shared_cache.is_dir():
            # Its service catalog takes ~9 s to build; reuse the one an earlier start left.
            shutil.copytree(self.shared_cache, cache, dirs_exist_ok=True)
        # cwd outside the repository: its localstack/ folder must not shadow the package.
        self.proc, proc = procs.spawn("localstack", [str(self.python), "-m", "localstack.runtime.main"],
                                      self.workdir, env=env, cwd=self.workdir, inherit_env=False)
        self.pid, self.started = proc.pid, proc.started
        wanted = set(self.services.split(","))

        def ready() -> bool:
            # Services answer before the runtime finishes starting; a SIGTERM in between hangs
            # its shutdown, so wait for its own READY stage too.
            states = _get_json(f"{self.endpoint}/_localstack/health").get("services", {})
            return (all(states.get(s) in ("running", "available") for s in wanted)
                    and _get_json(f"{self.endpoint}/_localstack/init/ready").get("completed") is True)

        try:
            wait_until("localstack", ready, timeout, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        self._share(cache)
        return self.endpoint

    @property
    def shared_cache(self) -> Path:
        """Beside the install, shared by every start (each keeps its own copy while it runs)."""
        return self.python.parent.parent / "localstack-cache"

    def _share(self, cache: Path) -> None:
        try:
            self.shared_cache.mkdir(exist_ok=True)
            for f in cache.iterdir():
                if f.is_file() and not (self.shared_cache / f.name).exists():
                    tmp = self.shared_cache / f".{f.name}.{os.getpid()}"
                    shutil.copyfile(f, tmp)
                    os.replace(tmp, self.shared_cache / f.name)
        except OSError:
            pass  # only slower next time

    def stop(self, timeout: float = 5) -> bool:
        """SIGTERM the process this object started; SIGKILL after ``timeout`` (its shutdown
        sometimes hangs, and nothing it holds outlives it)."""
        if self.pid is None:
            return False
        stopped = terminate({"pid": self.pid, "started": self.started}, timeout)
        if self.proc is not None:
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                pass
        self.pid = None
        return stopped

    def state(self) -> dict[str, Any]:
        return {"pid": self.pid, "started": self.started, "endpoint": self.endpoint, "log": str(self.log)}


def exports(endpoint: str) -> dict[str, str]:
    """Environment for bucketbrush commands against this LocalStack (it accepts any keys)."""
    return {
        "BUCKETBRUSH_S3_ENDPOINT_URL": endpoint,
        "BUCKETBRUSH_S3_ACCESS_KEY": "test",
        "BUCKETBRUSH_S3_SECRET_KEY": "test",
        "AWS_ENDPOINT_URL": endpoint,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m localstack.server", description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["install", "start", "stop", "status"])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--dir", type=Path, default=Path(".bucketbrush/localstack"), help="state and log")
    p.add_argument("--port", type=int, help="default: a free one")
    args = p.parse_args(argv)
    state_file = args.dir / "server.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    alive = bool(state) and proc_start_time(state["pid"]) == state["started"]
    if args.action == "install":
        ensure_venv(args.venv)
    elif args.action == "start":
        if alive:
            print(f"already running at {state['endpoint']} (pid {state['pid']})", file=sys.stderr)
        else:
            server = LocalStackServer(ensure_venv(args.venv, report=lambda m: print(m, file=sys.stderr)),
                                      args.dir, port=args.port)
            t0 = time.monotonic()
            server.start()
            state = server.state()
            state_file.write_text(json.dumps(state, indent=2))
            print(f"localstack: {server.endpoint} (pid {server.pid}, {time.monotonic() - t0:.1f}s, "
                  f"log {server.log})", file=sys.stderr)
        for name, value in exports(state["endpoint"]).items():
            print(f"export {name}={value}")
    elif args.action == "stop":
        if state and terminate(state, 5):
            print(f"stopped pid {state['pid']}")
        else:
            print("not running")
        state_file.unlink(missing_ok=True)
    else:
        print(f"running at {state['endpoint']} (pid {state['pid']})" if alive else "not running")
        return 0 if alive else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
