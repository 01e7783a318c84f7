"""Faults at size: every scenario of tests/faults/scenarios.py on one private fault stack (two
runners, loopback only), printed as the RELIABILITY.md table.

    .venv/bin/python -m bench.faults [--quick] [--only NAME ...]

Each row: jobs submitted, jobs with a final manifest, jobs lost, jobs whose outputs were written
twice (the bucket is versioned: a second PUT leaves a second version), and the time from the
repair (the restart, the last kill) to the last final manifest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.faults import scenarios
from tests.faults.chaos import FaultReport, fault_stack

FULL = {
    "runner_kills": lambda s: scenarios.runner_kills(s, n=80, kills=20, seconds=1.5),
    "redis_restarted_empty": lambda s: scenarios.redis_restarted_empty(s, n=60, seconds=0.5),
    "redis_unavailable": lambda s: scenarios.redis_unavailable(s, n=20, down_s=30),
    "seaweedfs_restarted": lambda s: scenarios.seaweedfs_restarted(s, n=30, seconds=1),
    "event_source_killed": lambda s: scenarios.event_source_killed(s, n=60),
    "poison_job": lambda s: scenarios.poison_job(s, good=20),
    "slow_store": lambda s: scenarios.slow_store(s, n=30, latency_s=0.05, cut_every=4),
}
QUICK = {
    "runner_kills": lambda s: scenarios.runner_kills(s, n=12, kills=3, seconds=2),
    "redis_restarted_empty": lambda s: scenarios.redis_restarted_empty(s, n=24),
    "redis_unavailable": lambda s: scenarios.redis_unavailable(s, n=10, down_s=10),
    "seaweedfs_restarted": lambda s: scenarios.seaweedfs_restarted(s, n=16),
    "event_source_killed": lambda s: scenarios.event_source_killed(s, n=20),
    "poison_job": lambda s: scenarios.poison_job(s, good=8),
    "slow_store": lambda s: scenarios.slow_store(s, n=12),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the sizes the tests use")
    parser.add_argument("--only", nargs="*", choices=sorted(FULL), help="run only these scenarios")
    args = parser.parse_args()
    table = QUICK if args.quick else FULL
    names = args.only or list(table)
    rows: list[FaultReport] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, fault_stack(Path(tmp)) as stack:
        settings = stack.settings_for_clients()
        for name in names:
            t0 = time.monotonic()
            result = table[name](stack)
            rows.append(result)
            print(f"{name}: {result.row()}  [{time.monotonic() - t0:.0f} s]", flush=True)
    print()
    print(f"broker_heartbeat_timeout_s={getattr(settings, 'broker_heartbeat_timeout_s', 60)}, "
          f"heartbeat_interval_s={settings.heartbeat_interval_s}, max_runner_deaths={settings.max_runner_deaths}, "
          f"2 runners; {time.monotonic() - started:.0f} s in all")
    print()
    print(FaultReport.HEADER)
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(r.row())


if __name__ == "__main__":
    main()
