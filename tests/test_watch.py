"""``bucketbrush watch`` on the local stack (the SeaweedFS filer subscription), as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import wait_final
from tests.test_recipes_e2e import spec

pytestmark = pytest.mark.e2e


def watch(settings, *args: str) -> subprocess.Popen:
    env = {**os.environ, "BUCKETBRUSH_BUCKET": settings.bucket, "BUCKETBRUSH_STATE_DIR": str(settings.state_dir),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bucketbrush.cli", "watch", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stderr:  # log lines may come first
        if line.startswith("watching manifests/"):
            return proc
    raise AssertionError(f"watch exited with {proc.wait()} before it was watching")


def test_watch_job_follows_it_to_the_end(settings, bucket):
    proc = watch(settings, "--job", "watch-ok", "--json")
    spec(bucket, "watch-ok", {"recipe": "txt2img", "params": {"prompt": "a boat", "steps": 2, "seed": 3}})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    states = [json.loads(line) for line in out.splitlines()]
    assert {s["job_id"] for s in states} == {"watch-ok"}
    assert states[-1]["status"] == "succeeded" and states[-1]["outputs"]
    assert [s["updated_at"] for s in states] == sorted({s["updated_at"] for s in states})  # newer each time

    # A job already over: one line, at once; a failed one exits with 1.
    proc = watch(settings, "--job", "watch-ok")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.split()[1:4] == ["watch-ok", "txt2img", "succeeded"]
    spec(bucket, "watch-bad", {"recipe": "filter", "input": "inbox/filter/nothing-here.png"})
    wait_final(bucket, "watch-bad")
    proc = watch(settings, "--job", "watch-bad", "--final")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "input_missing" in out


def test_watch_filters_by_recipe_and_final(settings, bucket):
    proc = watch(settings, "--recipe", "txt2img", "--final", "--json")
    try:
        spec(bucket, "watch-other", {"recipe": "filter", "input": "inbox/filter/nothing-here.png"})
        wait_final(bucket, "watch-other")
        spec(bucket, "watch-mine", {"recipe": "txt2img", "params": {"prompt": "a kite", "steps": 2, "seed": 4}})
        # The filter job ended first, so by the time the txt2img job's line arrives, its events
        # have long been seen: it was filtered out, not missed.
        line = json.loads(proc.stdout.readline())
        assert (line["job_id"], line["status"]) == ("watch-mine", "succeeded")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "watch-other" not in out
