"""The whole bucket path vs the bare diffusers call, on the same warm model.

For each model and dtype: a private local stack whose runner loads the model through its
models file; this process loads the same folder through the runner's own ``ModelCache``.
"bare" calls that cached diffusers pipeline directly (``pipe(prompt, ...)``); "recipe, same
process" is the ``txt2img`` recipe called on the same cache (one copy of the weights in this
process); "recipe in runner" is the runner's ``processing_s``; the total is the PUT of
``jobs/<id>.json`` -> the final manifest's ``finished_at`` (same clock). Runs alternate
(bare, recipe, job, bare, ...) so all three see the same machine load; the headline is
total / bare.

Models: ``tiny`` is tests/tiny_models.py's random SD1.5-style model; ``full`` is
bench/full_size.py's random-weight pipeline with the real SD1.5 architecture (UNet 860M; built
once into ~/.cache, 4.3 GB in float32).

While each job runs, the CPU time of every thread of the runner and of the stack's other
processes is read from /proc (utime + stime, 10 ms ticks), and printed as a second table:
where the machine's cores went during the job.

Usage:
    python -m bench.diffusion_bucket                 # tiny: 10 and 4 steps, float32
    python -m bench.diffusion_bucket --full-size     # and the real SD1.5 architecture: 4 steps, float32
    python -m bench.diffusion_bucket --models full --steps 4 --dtypes float32 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

PROMPT, SEED = "a lighthouse on a cliff at sunset", 7
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int | str) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def thread_wakeups(pid: int | str) -> dict[int, int]:
    """Voluntary context switches (sleeps that ended: wake-ups) of each thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        out[int(task.name)] = int(status.split("voluntary_ctxt_switches:", 1)[1].split()[0])
    return out


def process_cpu(pid: int | str) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class CpuMeter:
    """CPU seconds spent during timed calls: every thread of the runner and of this process
    (by id), and the stack's other processes; ``summary`` splits off the computing threads."""

    runner_pid: int
    others: dict[str, int]
    threads: dict[tuple[str, int], float] = field(default_factory=dict)
    processes: dict[str, float] = field(default_factory=dict)
    wakeups: dict[tuple[str, int], int] = field(default_factory=dict)
    wall: float = 0.0

    def _wakeups(self) -> dict[tuple[str, int], int]:
        return ({("runner", t): n for t, n in thread_wakeups(self.runner_pid).items()}
                | {("bench", t): n for t, n in thread_wakeups(os.getpid()).items()})

    def _threads(self) -> dict[tuple[str, int], float]:
        return ({("runner", t): c for t, c in thread_cpu(self.runner_pid).items()}
                | {("bench", t): c for t, c in thread_cpu(os.getpid()).items()})

    @contextmanager
    def measure(self) -> Iterator[None]:
        t0, before, wakes = time.perf_counter(), self._threads(), self._wakeups()
        before_p = {name: process_cpu(pid) for name, pid in self.others.items()}
        yield
        after = self._threads()
        for key, n in self._wakeups().items():
            self.wakeups[key] = self.wakeups.get(key, 0) + n - wakes.get(key, 0)
        self.wall += time.perf_counter() - t0
        for key, cpu in after.items():
            self.threads[key] = self.threads.get(key, 0.0) + cpu - before.get(key, 0.0)
        for name, pid in self.others.items():
            self.processes[name] = self.processes.get(name, 0.0) + process_cpu(pid) - before_p[name]

    def summary(self, compute_threads: int) -> dict[str, float]:
        """Cores used on average (CPU seconds per wall second): the ``compute_threads``
        busiest threads (the caller's and torch's OpenMP pool, in whichever process computed),
        then the other threads of the runner and of this process, then each other process."""
        ranked = sorted(self.threads.items(), key=lambda kv: kv[1], reverse=True)
        out = {"compute threads": sum(c for _, c in ranked[:compute_threads]),
               "runner, other threads": sum(c for (who, _), c in ranked[compute_threads:] if who == "runner"),
               "bench, other threads": sum(c for (who, _), c in ranked[compute_threads:] if who == "bench")}
        out |= self.processes
        computing = {key for key, _ in ranked[:compute_threads]}
        out["compute threads: sleeps/s"] = sum(self.wakeups.get(key, 0) for key in computing)
        out["runner, other threads: wake-ups/s"] = sum(n for key, n in self.wakeups.items()
                                                       if key[0] == "runner" and key not in computing)
        return {k: v / self.wall for k, v in out.items()}


def stack_pids(stack) -> dict[str, int]:
    state = stack.read_state()
    return {p.name: p.pid for p in state.processes}


def runner_torch_threads(runner_log: Path) -> str:
    """The runner's own report of its torch threads (logged when its worker thread runs a job)."""
    lines = [ln for ln in runner_log.read_text().splitlines() if "torch threads" in ln]
    return lines[-1].split("torch threads", 1)[1].strip(" :") if lines else "not logged"


def bench_model(model: str, dtype: str, steps_list: list[int], args, models_toml: Path, rows: list, cpu_rows: list,
                notes: list, busy_poll_ms: int = 1000) -> None:
    import torch

    from bench.stack import private_stack
    from bucketbrush.store import Bucket
    from gpu_runner.devices import RuntimeOptions
    from gpu_runner.models import ModelRegistry
    from gpu_runner.pipelines import ModelCache
    from gpu_runner.recipes import get_recipe
    from gpu_runner.recipes.base import JobContext
    from gpu_runner.runner import resolve_params

    registry = ModelRegistry.from_toml(models_toml)
    model_id = registry.default
    repeat = args.repeat or (5 if model == "full" else 7)
    label = model if len(args.busy_polls) == 1 else f"{model}, busy poll {busy_poll_ms} ms"
    with private_stack(models_file=models_toml, diffusion_dtype=dtype, preload_models=[model_id],
                       runner_poll_ms=args.runner_poll_ms, runner_busy_poll_ms=busy_poll_ms) as stack:
        bucket = Bucket(stack.settings_for_clients())
        pids = stack_pids(stack)
        runner_pid = pids.pop("runner-0")
        runner_log = next(p for p in stack.read_state().processes if p.name == "runner-0").log
        cache = ModelCache(registry, RuntimeOptions(device="cpu", dtype=dtype))
        recipe = get_recipe("txt2img")
        for steps in steps_list:
            params = {"prompt": PROMPT, "steps": steps, "seed": SEED, "width": args.size, "height": args.size}
            resolved = resolve_params(recipe, params, {})

            def in_process(resolved=resolved) -> float:
                t0 = time.perf_counter()
                recipe.run(JobContext("bench", models=cache), None, resolved)
                return time.perf_counter() - t0

            bare_cpu, job_cpu = CpuMeter(runner_pid, pids), CpuMeter(runner_pid, pids)

            def bare(steps=steps, meter=None) -> float:
                # The pipeline object the recipe uses (its scheduler as the recipe set it).
                pipe, _ = cache.pipeline(model_id, "txt2img")
                with meter.measure() if meter else nullcontext():
                    t0 = time.perf_counter()
                    pipe(PROMPT, num_inference_steps=steps, width=args.size, height=args.size,
                         generator=torch.Generator("cpu").manual_seed(SEED))
                    return time.perf_counter() - t0

            def job(i: int, expect_s: float, steps=steps, params=params, meter=None) -> tuple[float, float]:
                job_id = f"bench-{model}-{dtype}-{steps}-{i}"
                # Let this process's OpenMP threads stop spinning before the runner starts:
                # measured, without a pause the job ran 1.5x slower on 2 cores.
                time.sleep(0.5)
                with meter.measure() if meter else nullcontext():
                    t0 = time.time()
                    bucket.s3.put_object(Bucket=bucket.name, Key=f"jobs/{job_id}.json",
                                         Body=json.dumps({"recipe": "txt2img", "params": params}))
                    # The stamps are exact, so this process need not poll while the job runs
                    # (each poll is a GET: CPU here and in SeaweedFS, taken from the job).
                    time.sleep(expect_s * 0.9)
                    while (m := bucket.read_manifest(job_id)) is None or not m.is_final:
                        time.sleep(args.poll)
                assert m.status == "succeeded", m.error
                return m.timings["finished_at"] - t0, m.timings["processing_s"]

            load0 = os.getloadavg()[0]
            in_process()
            warm = bare()  # warm all: first calls allocate and pick kernels
            job(0, warm)
            b, local, total, proc = [], [], [], []
            for i in range(1, repeat + 1):
                b.append(bare(meter=bare_cpu))
                local.append(in_process())
                t, p = job(i, min(b), meter=job_cpu)
                total.append(t)
                proc.append(p)
            med = statistics.median
            ratios = [t / x for t, x in zip(total, b, strict=True)]
            rows.append((label, dtype, steps, repeat, med(b), med(local), med(proc), med(total),
                         med(total) / med(b), med(proc) / med(b), min(ratios), max(ratios), load0,
                         os.getloadavg()[0]))
            compute = torch.get_num_threads()
            cpu_rows.append((label, dtype, steps, "bare call", bare_cpu.summary(compute)))
            cpu_rows.append((label, dtype, steps, "job (PUT -> final manifest)", job_cpu.summary(compute)))
            print(f"  {model} {dtype} {steps} steps: total/bare {med(total) / med(b):.3f}", file=sys.stderr)
        notes.append(f"{label} {dtype}: the runner's torch threads in its job thread: "
                     f"{runner_torch_threads(Path(runner_log))}; "
                     f"this process: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
        cache.clear()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny", help="comma list of tiny, full")
    ap.add_argument("--full-size", action="store_true", help="add the full-size model (same as --models tiny,full)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", default=None, help="comma list (default: 10,4 for tiny, 4 for full)")
    ap.add_argument("--repeat", type=int, default=0, help="alternating runs per row (default: 7 tiny, 5 full)")
    ap.add_argument("--dtypes", default=None, help="comma list, e.g. float32,bfloat16")
    ap.add_argument("--poll", type=float, default=0.05, help="manifest poll interval once the job is due, s")
    ap.add_argument("--runner-poll-ms", type=int, default=100,
                    help="the runner's BUCKETBRUSH_RUNNER_POLL_MS (an idle runner's Redis poll; default 100)")
    ap.add_argument("--runner-busy-poll-ms", default="1000",
                    help="comma list of BUCKETBRUSH_RUNNER_BUSY_POLL_MS values (its other consumers' poll while a "
                         "job runs), one stack each, side by side: e.g. 100,1000")
    args = ap.parse_args()
    args.busy_polls = [int(v) for v in args.runner_busy_poll_ms.split(",")]
    # Stopped with SIGTERM, the private stacks still go down (their `finally`).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    models = args.models.split(",") + (["full"] if args.full_size and "full" not in args.models else [])

    import torch

    rows: list = []
    cpu_rows: list = []
    notes: list = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            steps_list = [int(s) for s in (args.steps or ("4" if model == "full" else "10,4")).split(",")]
            dtypes = (args.dtypes or "float32").split(",")
            if model == "full":
                from bench.full_size import write_full_size_models

                models_toml = write_full_size_models()
            else:
                from tests.tiny_models import write_tiny_models

                models_toml = write_tiny_models(Path(tmp) / "models")
            for dtype in dtypes:
                for busy_poll_ms in args.busy_polls:
                    bench_model(model, dtype, steps_list, args, models_toml, rows, cpu_rows, notes, busy_poll_ms)

    cmd = " ".join(["python -m bench.diffusion_bucket", *sys.argv[1:]])
    print(f"### Diffusion through the bucket vs the bare call ({args.size} px, warm)\n")
    print(f"Command: `{cmd}`. Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"median of alternating runs (bare, recipe, job); load average (1 min) at the start / end of each row.\n")
    print("| model | dtype | steps | runs | **total / bare** | runner recipe / bare | bare call s "
          "| recipe, same process s | recipe in runner s | PUT -> final manifest s | bucket path s (total - runner) "
          "| total / bare, min-max of pairs | load avg |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model_, dtype, steps, n, b, local, p, t, r, rp, lo, hi, l0, l1 in rows:
        print(f"| {model_} | {dtype} | {steps} | {n} | **{r:.3f}** | {rp:.3f} | {b:.3f} | {local:.3f} | {p:.3f} "
              f"| {t:.3f} | {t - p:.3f} | {lo:.2f}-{hi:.2f} | {l0:.1f} / {l1:.1f} |")
    print("\nWhere the cores went during the timed calls, in cores (CPU seconds per wall second over the "
          "row's calls; /proc utime + stime, 10 ms ticks); the last two columns count voluntary context "
          "switches per second: the computing threads' waits (for the GIL, a lock, OpenMP's barrier) and the runner's "
          "other threads' wake-ups:\n")
    names = list(dict.fromkeys(k for *_, s in cpu_rows for k in s))
    print("| model | dtype | steps | during | " + " | ".join(names) + " |")
    print("|---|---|---:|---|" + "---:|" * len(names))
    for model_, dtype, steps, during, s in cpu_rows:
        print(f"| {model_} | {dtype} | {steps} | {during} | "
              + " | ".join(f"{s.get(k, 0):.3f}" if "/s" not in k else f"{s.get(k, 0):.0f}" for k in names) + " |")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
