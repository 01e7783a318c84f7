"""Each refiner's intent accuracy and latency on the labelled requests (tests/data/).

- rules: every request.
- local: SmolLM2-135M-Instruct (cold load timed once); the model's own intent choice on every
  request, accuracy by confidence threshold, and the whole refiner (choice + rewrite + checks)
  on a sample of ``--rewrites`` requests whose chosen intent asks for a rewrite.
- openai: against tests/openai_server.py on loopback (no real endpoint is reachable here): with a
  well-behaved model (valid JSON) the time is the HTTP path itself; with a broken one the
  fallback. Its accuracy is the endpoint's model's, which this machine cannot measure.

Usage: python -m bench.refine [--rewrites 12]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stack import pct

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def load() -> list[dict]:
    rows = []
    for name in ("refine_requests.jsonl", "refine_fresh.jsonl"):
        rows += [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
    return rows


def correct(row: dict, intent: str, style: str | None) -> bool:
    return intent == row["intent"] and (row["intent"] != "stylize" or style == row["style"])


def ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.1f} | {1000 * pct(values, 95):.1f}"


def run_refiner(refiner, rows: list[dict]) -> tuple[list[float], list[bool], list]:
    """Each request through ``refiner``: (seconds per request, correct or not, the results)."""
    times, hits, results = [], [], []
    for row in rows:
        t = time.perf_counter()
        r = refiner.refine(row["text"], has_image=row["has_image"])
        times.append(time.perf_counter() - t)
        hits.append(correct(row, r.intent, r.params.get("style")))
        results.append(r)
    return times, hits, results


def accuracy_by_split(rows: list[dict], hits: list[bool]) -> str:
    parts = []
    for split in ("dev", "holdout", "fresh"):
        chosen = [h for r, h in zip(rows, hits, strict=True) if r["split"] == split]
        parts.append(f"{100 * sum(chosen) / len(chosen):.1f}% ({sum(chosen)}/{len(chosen)})")
    return " | ".join(parts) + f" | {100 * sum(hits) / len(hits):.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rewrites", type=int, default=12)
    args = ap.parse_args()
    from gpu_runner.refine.local import LocalRefiner, load_model
    from gpu_runner.refine.openai import OpenAIRefiner
    from gpu_runner.refine.rules import RulesRefiner

    rows = load()
    print(f"## Refine: intent accuracy and latency\n\n`python -m bench.refine --rewrites {args.rewrites}` on "
          f"{platform.machine()}, Python {platform.python_version()}; {len(rows)} labelled requests "
          f"(tests/data/: dev and holdout, written with the rules; fresh, written after them). A stylize "
          f"request counts only with the right style.\n")
    header = ("| refiner | dev | holdout | fresh | all | p50 ms | p95 ms |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
    lines = []

    rules = RulesRefiner()
    times, hits, _ = run_refiner(rules, rows)
    lines.append(f"| rules | {accuracy_by_split(rows, hits)} | {ms(times)} |")

    started = time.perf_counter()
    model = load_model()
    cold = time.perf_counter() - started
    times, hits, scored = [], [], []
    for row in rows:
        t = time.perf_counter()
        scores = model.intent_scores(row["text"], row["has_image"])
        times.append(time.perf_counter() - t)
        intent = max(scores, key=scores.__getitem__)
        # The model picks the intent; the style comes from the rules' words (build does the same).
        style = rules.refine(row["text"], has_image=row["has_image"]).params.get("style") \
            if intent == "stylize" else None
        if intent == "stylize" and style is None:
            style = "auto"
        hits.append(correct(row, intent, style))
        scored.append((scores[intent], intent == row["intent"]))
    lines.append(f"| local: the model's intent choice (one forward pass) | {accuracy_by_split(rows, hits)} | "
                 f"{ms(times)} |")

    times, hits, results = run_refiner(LocalRefiner(max_new_tokens=0), rows)
    fell_back = sum(r.refiner == "rules" for r in results)
    lines.append(f"| local refiner, intent part (model choice; answers that need a missing picture go to the rules: "
                 f"{fell_back}/{len(rows)}) | {accuracy_by_split(rows, hits)} | {ms(times)} |")

    local = LocalRefiner()
    sample = [r for r in rows if rules.refine(r["text"], has_image=r["has_image"]).intent
              in ("generate", "edit", "sketch")][: args.rewrites]
    local_times, attempted, accepted, examples = [], 0, 0, []
    for row in sample:
        t = time.perf_counter()
        r = local.refine(row["text"], has_image=row["has_image"])
        local_times.append(time.perf_counter() - t)
        if r.refiner == "local" and r.intent in ("generate", "edit", "sketch"):
            attempted += 1
            accepted += not any("rewrite" in w for w in r.warnings)
        if len(examples) < 6:
            examples.append((row["text"], r.intent, r.warnings[0] if r.warnings else r.prompt))

    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, "-m", "tests.openai_server", "--ready-file", str(ready)])
        try:
            while not (ready.exists() and ready.read_text()):
                time.sleep(0.05)
            url = f"http://127.0.0.1:{ready.read_text()}/v1"
            for model_name, label in (("rules", "valid JSON answers"), ("badjson", "invalid answers -> fallback")):
                times, hits, _ = run_refiner(OpenAIRefiner(url, model_name, timeout_s=10), rows)
                lines.append(f"| openai, loopback test server, {label} | {accuracy_by_split(rows, hits)} | "
                             f"{ms(times)} |")
        finally:
            server.terminate()
            server.wait(10)

    print(header)
    print("\n".join(lines))
    print(f"\nlocal: cold load {cold:.1f} s (dequantising the GGUF, in an already warm Python with torch imported); "
          f"the whole local refiner on {len(sample)} generate/edit/sketch requests (a rewrite when the model "
          f"also chose one of those): p50 {statistics.median(local_times):.2f} s, max {max(local_times):.2f} s; "
          f"rewrites that passed the checks: {accepted} of {attempted}.")
    print("\nlocal, accuracy of the model's choice by its confidence (probability of the chosen word):\n")
    print("| confidence >= | requests | accuracy |\n|---:|---:|---:|")
    for threshold in (0.0, 0.3, 0.5, 0.7, 0.9):
        chosen = [ok for p, ok in scored if p >= threshold]
        if chosen:
            print(f"| {threshold:.1f} | {len(chosen)} | {100 * sum(chosen) / len(chosen):.1f}% |")
    print("\nlocal refiner examples (request -> intent: prompt or the first warning):\n")
    for text, intent, what in examples:
        print(f"- {text!r} -> {intent}: {what[:200]!r}")


if __name__ == "__main__":
    main()
