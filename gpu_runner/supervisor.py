"""``bucketbrush runner --devices all|0,1``: one worker process per GPU.

Each device gets its own ``bucketbrush runner`` process, pinned with ``CUDA_VISIBLE_DEVICES``
(so inside it the GPU is ``cuda:0``), with its own model cache and its own heartbeat (which
reports the device it is pinned to, and the GPU's name and memory once torch sees it). The
parent only starts them, restarts one that dies, and on SIGTERM/SIGINT passes the signal on and
waits: each child finishes its current job first, as a single runner does.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bucketbrush.settings import Settings
from gpu_runner.provenance import OutputSigner

log = logging.getLogger(__name__)

# A child that dies is started again after this pause (not in a tight loop if it keeps dying).
RESTART_PAUSE_S = 5.0
READY_TIMEOUT_S = 600.0  # a child preloads its models before it says it is ready


def cuda_device_count() -> int:
    """How many CUDA devices this machine shows (0 without torch or a driver)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def device_list(choice: str, inventory: list[str] | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each worker for ``--devices choice``.

    ``all``: every device of ``inventory`` (the ``runner_device_inventory`` setting) or, when
    that is unset, every CUDA device torch counts. Otherwise a comma-separated list of device
    indices or GPU UUIDs (``GPU-...``), as ``CUDA_VISIBLE_DEVICES`` takes them. Raises
    ValueError for an empty, repeated or unknown device."""
    if choice.strip() == "all":
        devices = list(inventory) if inventory is not None else [str(i) for i in range(cuda_device_count())]
        if not devices:
            raise ValueError("--devices all: no CUDA device is visible to this process")
        return devices
    devices = [d.strip() for d in choice.split(",") if d.strip()]
    if not devices:
        raise ValueError(f"--devices wants all, or device indices such as 0,1; got {choice!r}")
    bad = [d for d in devices if not (d.isdigit() or d.startswith(("GPU-", "MIG-")))]
    if bad:
        raise ValueError(f"--devices: {', '.join(bad)} is no device index or GPU UUID")
    if len(set(devices)) != len(devices):
        raise ValueError(f"--devices names a device twice: {choice!r}")
    known = inventory if inventory is not None else None
    if known is None and all(d.isdigit() for d in devices) and (count := cuda_device_count()):
        known = [str(i) for i in range(count)]
    if known is not None and (missing := [d for d in devices if d not in known]):
        raise ValueError(f"--devices: no device {', '.join(missing)} here (devices: {', '.join(known) or 'none'})")
    return devices


def child_command(settings: Settings, ready_file: Path) -> list[str]:
    """A single-device runner serving what the parent serves."""
    return [sys.executable, "-m", "bucketbrush.cli", "runner", "--devices", "",
            "--serve", ",".join(settings.runner_serve), "--ready-file", str(ready_file)]


def child_env(device: str) -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": device, "BUCKETBRUSH_RUNNER_DEVICES": ""}


def run_per_device(settings: Settings, *, ready_file: Path | None = None) -> int:
    """Run one worker process per device until SIGTERM or SIGINT; 0 when they all stopped, 1
    when one could not start."""
    devices = device_list(settings.runner_devices, settings.runner_device_inventory)
    # Content Credentials on without a key: one clear error here, not one per child.
    OutputSigner.from_settings(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="bucketbrush-devices-") as tmp:
        readies = {d: Path(tmp) / f"device-{i}.ready" for i, d in enumerate(devices)}

        def start(device: str) -> subprocess.Popen:
            proc = subprocess.Popen(child_command(settings, readies[device]), env=child_env(device),
                                    stdin=subprocess.DEVNULL)
            log.info("runner for CUDA_VISIBLE_DEVICES=%s: pid %d", device, proc.pid)
            return proc

        children = {d: start(d) for d in devices}
        failed = False
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not stop.is_set() and not all(r.exists() for r in readies.values()):
            dead = [d for d, p in children.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                log.error("runner(s) for device(s) %s did not start", ", ".join(dead) or "?")
                failed = True
                stop.set()
                break
            stop.wait(0.1)
        else:
            if ready_file and not stop.is_set():
                ready_file.write_text("ready\n")
                log.info("one runner per device: %s", ", ".join(devices))
        while not stop.wait(1.0):
            for device, proc in list(children.items()):
                if proc.poll() is not None:
                    log.warning("runner for device %s exited with %s; starting it again in %.0f s",
                                device, proc.returncode, RESTART_PAUSE_S)
                    if stop.wait(RESTART_PAUSE_S):
                        break
                    children[device] = start(device)
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children.values():
            proc.wait()
    return 1 if failed else 0
