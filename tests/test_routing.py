"""Queues by capability and priority (bucketbrush/routing.py), and per-device runners
(gpu_runner/supervisor.py): the rules, without servers."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from bucketbrush.broker import enqueue_job
from bucketbrush.jobs import JobSpec, ObjectRef
from bucketbrush.routing import (
    RECIPE_NEEDS,
    RUN_BULK_JOB_ACTOR,
    RUN_JOB_ACTOR,
    all_queues,
    needs,
    queue_for,
    redis_key,
    served_queues,
)
from bucketbrush.settings import Settings
from gpu_runner.recipes import RECIPES, catalog
from gpu_runner.recipes.testing import TEST_RECIPES
from gpu_runner.supervisor import child_command, child_env, device_list


def spec(recipe: str, priority: str = "interactive") -> JobSpec:
    ref = ObjectRef(bucket="b", key=f"inbox/{recipe}/a.png", etag="e")
    return JobSpec(job_id="a" * 24, recipe=recipe, source=ref, input=ref, priority=priority)


def test_every_recipe_declares_what_it_needs() -> None:
    names = {r.name for r in (*RECIPES.values(), *TEST_RECIPES)}
    assert names == set(RECIPE_NEEDS), "a new recipe needs a line in bucketbrush.routing.RECIPE_NEEDS"
    assert {r["name"]: r["needs"] for r in catalog(testing=True)} == dict(RECIPE_NEEDS)


def test_jobs_go_to_their_capability_and_priority_queue() -> None:
    s = Settings(queue_name="bb", broker_namespace="ns")
    assert queue_for(s, "filter") == "bb-cpu"
    assert queue_for(s, "txt2img") == "bb-gpu"
    assert queue_for(s, "txt2img", "bulk") == "bb-gpu-bulk"
    assert queue_for(s, "remove-bg") == "bb-any"
    assert queue_for(s, "no-such-recipe") == "bb-any"  # the runner that takes it fails it: unknown_recipe
    assert redis_key(s, "bb-gpu") == "ns:bb-gpu"
    remapped = Settings(recipe_capabilities={"test-slow": "gpu", "filter": "any"})
    assert needs(remapped, "test-slow") == "gpu" and needs(remapped, "filter") == "any"
    with pytest.raises(ValueError):
        Settings(recipe_capabilities={"filter": "tpu"})


def test_a_runner_serves_what_it_names_and_any() -> None:
    s = Settings(queue_name="bb")
    assert served_queues(s, ["cpu"]) == [("bb-cpu", "interactive"), ("bb-cpu-bulk", "bulk"),
                                         ("bb-any", "interactive"), ("bb-any-bulk", "bulk")]
    # Serving everything also drains the single queue of earlier versions.
    assert {q for q, _ in served_queues(s, ["cpu", "gpu", "any"])} == {*all_queues(s), "bb"}
    with pytest.raises(ValueError, match="unknown capability tpu"):
        served_queues(s, ["cpu", "tpu"])


def test_enqueue_routes_and_names_the_priority_actor() -> None:
    s, broker = Settings(queue_name="bb"), StubBroker()
    enqueue_job(broker, s, spec("filter"))
    enqueue_job(broker, s, spec("txt2img", "bulk"))
    got = {q: [dramatiq.Message.decode(m) for m in broker.queues[q].queue] for q in broker.queues
           if broker.queues[q].qsize()}
    assert set(got) == {"bb-cpu", "bb-gpu-bulk"}
    assert got["bb-cpu"][0].actor_name == RUN_JOB_ACTOR
    assert got["bb-gpu-bulk"][0].actor_name == RUN_BULK_JOB_ACTOR
    assert got["bb-gpu-bulk"][0].args[0]["priority"] == "bulk"
    # That interactive jobs then run ahead of bulk ones is shown by real runners:
    # test_scale_out.py::test_interactive_jobs_go_ahead_of_bulk_ones.


def test_device_list_from_a_forced_inventory() -> None:
    inventory = ["0", "1", "2"]
    assert device_list("all", inventory) == ["0", "1", "2"]
    assert device_list("0,2", inventory) == ["0", "2"]
    assert device_list("GPU-8f2c", ["GPU-8f2c"]) == ["GPU-8f2c"]
    for bad, message in (("3", "no device 3"), ("0,0", "twice"), ("", "wants all"), ("x", "no device index"),
                         ):
        with pytest.raises(ValueError, match=message):
            device_list(bad, inventory)
    with pytest.raises(ValueError, match="no CUDA device"):
        device_list("all", [])


def test_each_device_worker_is_pinned_and_serves_the_same_queues(tmp_path) -> None:
    s = Settings(runner_serve=["gpu"])
    cmd = child_command(s, tmp_path / "r")
    assert cmd[cmd.index("--serve") + 1] == "gpu" and cmd[cmd.index("--devices") + 1] == ""
    env = child_env("1")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["BUCKETBRUSH_RUNNER_DEVICES"] == ""
