"""Load: a burst of uploads into a private local stack, then a steady soak, with every stack
process's memory sampled at the start and the end.

    .venv/bin/python -m bench.burst --n 1000 --soak-s 600 --rate 2

Burst: ``n`` drop-folder uploads (small PNGs, the ``filter`` recipe) PUT from 8 threads as fast
as the store takes them; reported: lost (no final manifest within the bound), duplicated (a
job the runner finished more than once, from its log), and PUT -> final manifest p50/p95.
Soak: ``rate`` uploads a second for ``soak_s`` seconds, the same counts, and each process's
resident memory (VmRSS) before the burst and after the soak.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.stack import pct, private_stack
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket
from infra.local import LocalStack
from tests.helpers import drop, png_bytes


def rss_mib(stack: LocalStack) -> dict[str, float]:
    """Resident memory of every process the stack started, MiB."""
    out = {}
    for proc in stack.read_state().processes:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[proc.name] = int(line.split()[1]) / 1024
        except OSError:
            out[proc.name] = float("nan")
    return out


def upload(bucket: Bucket, tag: str, i: int) -> tuple[str, float]:
    image = landscape(32, 24)
    image.putpixel((0, 0), (i % 256, i // 256 % 256, 99))
    job_id = drop(bucket, f"inbox/filter/{tag}/{i:05d}.png", png_bytes(image), Metadata={"style": "sepia"})
    return job_id, time.time()


def settle(bucket: Bucket, put_at: dict[str, float], timeout: float) -> dict[str, float]:
    """Job id -> seconds from its PUT to its final manifest, for those final within ``timeout``."""
    deadline = time.monotonic() + timeout
    latency: dict[str, float] = {}
    while len(latency) < len(put_at) and time.monotonic() < deadline:
        for job_id, t in put_at.items():
            if job_id in latency:
                continue
            manifest = bucket.read_manifest(job_id)
            if manifest is not None and manifest.is_final:
                latency[job_id] = manifest.timings.get("finished_at", manifest.updated_at) - t
        time.sleep(0.5)
    return latency


def duplicated(stack: LocalStack, job_ids: list[str]) -> int:
    text = "".join(p.read_text(errors="replace") for p in stack.logs.glob("runner-*.log"))
    return sum(text.count(f"job {j} succeeded") > 1 for j in job_ids)


def report(name: str, stack: LocalStack, put_at: dict[str, float], latency: dict[str, float]) -> str:
    values = sorted(latency.values())
    lost = len(put_at) - len(latency)
    p50, p95 = (pct(values, 50), pct(values, 95)) if values else (float("nan"),) * 2
    return (f"| {name} | {len(put_at)} | {len(latency)} | {lost} | {duplicated(stack, list(put_at))} "
            f"| {p50:.2f} | {p95:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--soak-s", type=float, default=600)
    parser.add_argument("--rate", type=float, default=2.0, help="uploads a second during the soak")
    args = parser.parse_args()
    with private_stack(test_recipes=True) as stack:
        bucket = Bucket(stack.settings_for_clients())
        before = rss_mib(stack)
        rows = []
        # Burst.
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            put_at = dict(pool.map(lambda i: upload(bucket, "burst", i), range(args.n)))
        put_s = time.monotonic() - started
        latency = settle(bucket, put_at, timeout=120 + args.n * 1.0)
        rows.append(report(f"burst of {args.n} (PUT in {put_s:.0f} s, drained in "
                           f"{time.monotonic() - started:.0f} s)", stack, put_at, latency))
        after_burst = rss_mib(stack)
        # Soak.
        soak: dict[str, float] = {}
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < args.soak_s:
            job_id, t = upload(bucket, "soak", i)
            soak[job_id] = t
            i += 1
            time.sleep(max(0.0, started + i / args.rate - time.monotonic()))
        latency = settle(bucket, soak, timeout=120)
        rows.append(report(f"soak {args.soak_s:.0f} s at {args.rate:g}/s", stack, soak, latency))
        after = rss_mib(stack)
    print("| load | submitted | final | lost | duplicated | PUT -> final p50 (s) | p95 (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    print("| process | RSS before (MiB) | after the burst | after the soak |")
    print("|---|---:|---:|---:|")
    for name in before:
        print(f"| {name} | {before[name]:.0f} | {after_burst.get(name, float('nan')):.0f} | "
              f"{after.get(name, float('nan')):.0f} |")


if __name__ == "__main__":
    main()
