"""Pipeline latency: PUT -> final manifest, minus the recipe's own processing time.

Runs a private local stack (SeaweedFS, Redis, filer event source, one runner), uploads N
small images one after another into the drop folder, and reads the stamps each manifest
carries (all clocks are this machine's). Once per ``--poll-ms`` value (the runner's idle Redis
poll, ``runner_poll_ms``), each with a stack of its own, and for each the CPU the idle runner
and Redis then burn (``/proc/<pid>/stat``, over ``--idle-s``): the price of a shorter poll.
Usage: python -m bench.latency [--n 50] [--poll-ms 100,10]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from bench.stack import pct, private_stack, upload_and_wait
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--poll-ms", default="100,10", help="runner_poll_ms values, one stack each")
    ap.add_argument("--idle-s", type=float, default=10, help="idle window for the CPU measurement")
    args = ap.parse_args()
    polls = [int(p) for p in args.poll_ms.split(",")]
    results = {poll: measure(args, poll) for poll in polls}
    print(f"### Latency: PUT -> final manifest ({args.n} sequential {args.size}px uploads, filter/sepia)\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}; "
          f"command: `python -m bench.latency --n {args.n} --poll-ms {args.poll_ms}`\n")
    print("| stage | " + " | ".join(f"poll {p} ms: p50 ms | p95 ms" for p in polls) + " |")
    print("|---|" + "---:|---:|" * len(polls))
    for name in ("put_to_queued", "queue_wait", "processing", "total", "overhead"):
        cells = []
        for poll in polls:
            values = [r[name] * 1000 for r in results[poll][0]]
            cells += [f"{pct(values, 50):.1f}", f"{pct(values, 95):.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nIdle CPU over {args.idle_s:g} s, % of one core: " + "; ".join(
        f"poll {p} ms: runner {results[p][1]['runner']:.1f}, Redis {results[p][1]['redis']:.1f}" for p in polls))


def measure(args: argparse.Namespace, poll_ms: int) -> tuple[list[dict[str, float]], dict[str, float]]:
    import io

    buf = io.BytesIO()
    landscape(args.size, args.size).save(buf, "PNG")
    body = buf.getvalue()
    with private_stack(runner_poll_ms=poll_ms) as stack:
        bucket = Bucket(stack.settings_for_clients())
        rows = []
        for i in range(args.n + 1):
            t0, m = upload_and_wait(bucket, f"inbox/filter/bench/{i}.png", body, style="sepia")
            if i == 0:
                continue  # warm-up: first connections, first import of the recipe
            t = m.timings
            rows.append({
                "put_to_queued": t["queued_at"] - t0,
                "queue_wait": t["queue_wait_s"],
                "processing": t["processing_s"],
                "total": t["finished_at"] - t0,
                "overhead": t["finished_at"] - t0 - t["processing_s"],
            })
        state = stack.read_state()
        pids = {"runner": state.process("runner-0").pid, "redis": state.process("redis").pid}
        time.sleep(1)  # the last job's tail (index writes, ack)
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        time.sleep(args.idle_s)
        idle = {name: 100 * (cpu_s(pid) - before[name]) / args.idle_s for name, pid in pids.items()}
    return rows, idle


if __name__ == "__main__":
    main()
