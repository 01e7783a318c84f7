"""Burst of upscale jobs through the bucket vs the bare in-process loop of the same recipe.

    .venv/bin/python -m bench.burst_upscale --n 200

In one run, side by side: (a) the ``upscale`` recipe (anime x2, 256 px inputs) called directly
in this process on the ``n`` decoded inputs, the call the runner makes (``recipe.run``); (b)
the same ``n`` inputs PUT as drop-folder uploads (8 threads) into a private local stack with 1
runner, timed from the first PUT to the last final manifest's ``finished_at``; (c) the same
with a second runner started beside the first; then (a) again, with the runners idle (the
machine is shared: the two bare runs show how much its load moved meanwhile); (d) two fresh
runners with ``upscale_threads`` = ``--threads-per-runner`` (default 1: cores / runners).

For every phase: jobs/s, the CPU seconds each process used per job (from /proc), how busy
the whole machine was (from /proc/stat: the share left to others), the load average; for the
bucket phases, lost (no final manifest) and duplicated (a job finished twice) counts and the
runner's own time per job outside the recipe (``finished_at - started_at - processing_s``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.burst import duplicated
from bench.stack import pct, private_stack
from bucketbrush.samples import landscape
from bucketbrush.store import Bucket
from infra.local import LocalStack
from tests.helpers import drop, png_bytes

TICK = os.sysconf("SC_CLK_TCK")
PARAMS = {"scale": "2", "model": "anime"}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core, every process), since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


@dataclass
class Phase:
    name: str
    jobs: int
    wall_s: float
    cpu: dict[str, float]  # process -> CPU seconds in the phase
    machine_busy_s: float
    load: tuple[float, float, float]
    lost: int | None = None
    duplicated: int | None = None
    outside_recipe_s: list[float] = field(default_factory=list)
    recipe_s: list[float] = field(default_factory=list)
    # One runner: from a job's finished_at to the next job's started_at (final manifest, ack, next message).
    gaps_s: list[float] = field(default_factory=list)
    threads: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.wall_s


class Meter:
    """CPU of the named processes and of the machine, from the start to ``stop``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
        self.busy0 = machine_busy_s()
        self.t0 = time.time()

    def stop(self, name: str, jobs: int, wall_s: float) -> Phase:
        cpu = {n: cpu_s(pid) - self.cpu0[n] for n, pid in self.pids.items()}
        return Phase(name, jobs, wall_s, cpu, machine_busy_s() - self.busy0, os.getloadavg())


def progress(phase: Phase) -> None:
    """One line per phase as it ends (the table comes at the end)."""
    print(f"# {time.strftime('%H:%M:%S')} {phase.name}: {phase.jobs} jobs in {phase.wall_s:.1f} s = "
          f"{phase.rate:.3f} jobs/s; lost {phase.lost}, duplicated {phase.duplicated}; CPU s/job "
          f"{ {n: round(c / max(phase.jobs, 1), 3) for n, c in phase.cpu.items()} }; load {phase.load}", flush=True)


def inputs(n: int, side: int) -> list[bytes]:
    """``n`` distinct PNGs (one pixel differs, so every upload is its own job)."""
    base = landscape(side, side)
    out = []
    for i in range(n):
        image = base.copy()
        image.putpixel((0, 0), (i % 256, i // 256 % 256, 7))
        out.append(png_bytes(image))
    return out


def bare(n: int, size: int) -> Phase:
    """The bare loop in a child process in a session of its own, as each runner is (the stack
    starts its processes with setsid): with the kernel's autogroup scheduling on, each
    session gets an equal share of a busy machine, so both must be in the same position."""
    out = subprocess.run([sys.executable, "-m", "bench.burst_upscale", "--bare-only", "--n", str(n),
                          "--size", str(size)], check=True, stdout=subprocess.PIPE, text=True,
                         start_new_session=True).stdout
    phase = Phase(**json.loads(out.splitlines()[-1]))
    progress(phase)
    return phase


def bare_loop(bodies: list[bytes]) -> Phase:
    """The recipe called directly, as the runner calls it, on every decoded input."""
    from gpu_runner.images import decode_image
    from gpu_runner.recipes import get_recipe
    from gpu_runner.recipes.base import JobContext
    from gpu_runner.runner import resolve_params

    recipe = get_recipe("upscale")
    params = resolve_params(recipe, {}, PARAMS)
    images = [decode_image(b, max_pixels=1 << 30) for b in bodies]
    recipe.run(JobContext("warm-up"), images[0], params)  # loads the network
    time.sleep(1)  # let ncnn's worker threads stop spinning before the clock starts
    meter = Meter({"bench (bare loop)": os.getpid()})
    started = time.perf_counter()
    times = []
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        recipe.run(JobContext(f"bare-{i}"), image, params)
        times.append(time.perf_counter() - t0)
    phase = meter.stop("bare", len(images), time.perf_counter() - started)
    phase.recipe_s = times
    return phase


def finished(stack: LocalStack, job_ids: set[str]) -> set[str]:
    """The jobs of ``job_ids`` some runner's log says ended (succeeded, failed, cancelled)."""
    text = "".join(p.read_text(errors="replace") for p in stack.logs.glob("runner-*.log"))
    return {m[1] for m in re.finditer(r"job (\S+) (?:succeeded|failed|cancelled)", text)} & job_ids


def through_bucket(stack: LocalStack, bucket: Bucket, bodies: list[bytes], tag: str, timeout: float) -> Phase:
    """PUT every input as a drop-folder upload (8 threads) and wait until each job ended;
    wall time: the first PUT to the last final manifest's ``finished_at`` (same clock)."""
    state = stack.read_state()
    pids = {p.name: p.pid for p in state.processes}
    pids["bench (uploads)"] = os.getpid()

    def put(i: int) -> str:
        return drop(bucket, f"inbox/upscale/{tag.replace(' ', '-')}/{i:05d}.png", bodies[i], Metadata=PARAMS)

    meter = Meter(pids)
    t0 = time.time()
    with ThreadPoolExecutor(8) as pool:
        job_ids = list(pool.map(put, range(len(bodies))))
    # The runners' logs, not the bucket, are polled: 200 manifest GETs a round would load the
    # store and the CPU under test.
    deadline = time.monotonic() + timeout
    while len(finished(stack, set(job_ids))) < len(job_ids) and time.monotonic() < deadline:
        time.sleep(0.5)
    phase = meter.stop(tag, len(job_ids), 0.0)
    phase.threads = {name: threads(pid) for name, pid in pids.items() if name.startswith("runner")}
    manifests = [bucket.read_manifest(j) for j in job_ids]
    final = [m for m in manifests if m is not None and m.is_final]
    succeeded = [m for m in final if m.status == "succeeded"]
    phase.wall_s = max(m.timings["finished_at"] for m in final) - t0
    phase.jobs = len(succeeded)
    phase.lost = len(job_ids) - len(final)
    phase.duplicated = duplicated(stack, job_ids)
    phase.recipe_s = [m.timings["processing_s"] for m in succeeded]
    phase.outside_recipe_s = [m.timings["finished_at"] - m.timings["started_at"] - m.timings["processing_s"]
                              for m in succeeded]
    if sum(n.startswith("runner") for n in pids) == 1:
        ordered = sorted(succeeded, key=lambda m: m.timings["started_at"])
        phase.gaps_s = [b.timings["started_at"] - a.timings["finished_at"]
                        for a, b in zip(ordered, ordered[1:], strict=False)]
    if len(succeeded) < len(final):
        print(f"{tag}: {len(final) - len(succeeded)} jobs did not succeed:",
              {m.error.code for m in final if m.error})
    progress(phase)
    return phase


def warm(stack: LocalStack, bucket: Bucket, bodies: list[bytes], tag: str, n: int) -> None:
    """A few jobs so each runner has loaded the network before the clock starts."""
    through_bucket(stack, bucket, bodies[:n], tag, timeout=120)


def table(phases: list[Phase], cores: int) -> str:
    base = statistics.mean(p.rate for p in phases if p.name == "bare")
    one = next(p for p in phases if p.name == "1 runner")
    rows = ["| phase | jobs | wall s | jobs/s | vs bare (mean of both) | vs 1 runner | lost | duplicated "
            "| recipe s p50 | runner time outside the recipe s p50 / p95 | between jobs s p50 "
            "| CPU s per job, by process | machine busy (of 100% x cores) | load avg 1 min at end |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for p in phases:
        cpu = ", ".join(f"{n} {s / p.jobs:.2f}" for n, s in sorted(p.cpu.items(), key=lambda kv: -kv[1])
                        if s / p.jobs >= 0.005)
        outside = (f"{pct(p.outside_recipe_s, 50):.3f} / {pct(p.outside_recipe_s, 95):.3f}"
                   if p.outside_recipe_s else "-")
        rows.append(
            f"| {p.name} | {p.jobs} | {p.wall_s:.1f} | {p.rate:.2f} | {p.rate / base:.2f} | "
            f"{p.rate / one.rate:.2f} | {'-' if p.lost is None else p.lost} | "
            f"{'-' if p.duplicated is None else p.duplicated} | {statistics.median(p.recipe_s):.3f} | {outside} | "
            f"{f'{statistics.median(p.gaps_s):.3f}' if p.gaps_s else '-'} | "
            f"{cpu} | {100 * p.machine_busy_s / (p.wall_s * cores):.0f}% | {p.load[0]:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="input side, px")
    parser.add_argument("--warm", type=int, default=4, help="warm-up jobs before each bucket phase")
    parser.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)  # bare()'s child
    parser.add_argument("--threads-per-runner", type=int, default=1,
                        help="a last phase: 2 runners with this many ncnn threads each (upscale_threads); 0: skip")
    args = parser.parse_args()
    bodies = inputs(args.n, args.size)
    if args.bare_only:
        print(json.dumps(dataclasses.asdict(bare_loop(bodies))))
        return
    phases = [bare(args.n, args.size)]
    with private_stack(runners=1) as stack:
        bucket = Bucket(stack.settings_for_clients())
        spare = inputs(args.n + 3 * args.warm, args.size)[args.n:]  # other pixels: other jobs
        warm(stack, bucket, spare[:args.warm], "warm1", args.warm)
        phases.append(through_bucket(stack, bucket, bodies, "1 runner", timeout=120 + 10 * args.n))
        stack.start_runner("runner-1")
        warm(stack, bucket, spare[args.warm:], "warm2", args.warm)
        # The same inputs again: other keys, so other jobs.
        phases.append(through_bucket(stack, bucket, bodies, "2 runners", timeout=120 + 10 * args.n))
        # The bare loop again, with the stack idle (no job queued): the load's drift meanwhile.
        phases.append(bare(args.n, args.size))
        if args.threads_per_runner:
            # Two runners again, each with ncnn threads = cores / runners.
            for name in ("runner-0", "runner-1"):
                stack.stop_runner(name)
            stack.settings = stack.settings.model_copy(update={"upscale_threads": args.threads_per_runner})
            for name in ("runner-2", "runner-3"):
                stack.start_runner(name)
            warm(stack, bucket, spare[2 * args.warm:], "warm3", args.warm)
            phases.append(through_bucket(stack, bucket, bodies, f"2 runners, {args.threads_per_runner} thread",
                                         timeout=120 + 10 * args.n))
    cores = os.cpu_count() or 1
    import ncnn

    print(f"### Burst: {args.n} upscale jobs (anime x2, {args.size} px) through the bucket vs the bare loop\n")
    print(f"Command: `python -m bench.burst_upscale --n {args.n} --size {args.size} --warm {args.warm} "
          f"--threads-per-runner {args.threads_per_runner}`; "
          f"{platform.machine()}, {cores} cores, ncnn {ncnn.__version__} (CPU, its default threads: "
          f"{ncnn.get_big_cpu_count()}); runner threads at the end of each phase: "
          + "; ".join(f"{p.name}: {p.threads}" for p in phases if p.threads) + "\n")
    print(table(phases, cores))


if __name__ == "__main__":
    main()
