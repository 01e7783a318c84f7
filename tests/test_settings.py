"""Settings: grouped fields, unchanged names, and the sources they are read from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydantic
import pytest

from bucketbrush.settings import GROUPS, Settings, StorageSettings

# Every variable users set (BUCKETBRUSH_<FIELD>) and attribute code reads: renaming one breaks them.
FIELDS = """
s3_endpoint_url s3_region s3_access_key s3_secret_key s3_addressing_style bucket s3_public_endpoint_url
sqs_queue_url sqs_endpoint_url sqs_wait_time_s sqs_visibility_timeout_s functions_token sns_topic_arns
functions_max_body_bytes redis_url broker_namespace queue_name max_retries inbox_prefix jobs_prefix outputs_prefix
manifests_prefix cancel_prefix status_prefix max_upload_bytes max_image_pixels presign_expires_s dedupe_ttl_s
job_time_limit_s recipe_time_limits_s heartbeat_interval_s runner_poll_ms sweep_interval_s sweep_grace_s
inbox_retention_days outputs_retention_days manifests_retention_days cors_allowed_origins models_file
preload_models model_cache_bytes diffusion_device diffusion_dtype diffusion_attention_slicing diffusion_vae_tiling
diffusion_vae_slicing diffusion_cpu_offload diffusion_max_side depth_model segmentation_model segmentation_labels
state_dir local_redis
""".split()


@pytest.fixture
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp working dir (for .env) and state dir (for stack.json), and no BUCKETBRUSH_* from outside."""
    for name in list(os.environ):
        if name.upper().startswith("BUCKETBRUSH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("BUCKETBRUSH_STATE_DIR", str(state))
    return tmp_path


def write_stack(clean: Path, **values: object) -> Path:
    path = clean / "state" / "stack.json"
    path.write_text(json.dumps({"processes": [], **values}))
    return path


def test_every_field_is_in_exactly_one_group_in_group_order() -> None:
    grouped = [name for group in GROUPS.values() for name in group.model_fields]
    assert len(grouped) == len(set(grouped))
    assert grouped == list(Settings.model_fields)
    assert sorted(grouped) == sorted(FIELDS)


def test_every_field_has_a_description() -> None:
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_one_variable_per_group_reaches_its_attribute(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "BUCKETBRUSH_BUCKET": "b1", "BUCKETBRUSH_INBOX_PREFIX": "/in//",  # storage, layout
        "BUCKETBRUSH_REDIS_URL": "redis://r:1/2",  # broker
        "BUCKETBRUSH_SQS_WAIT_TIME_S": "5",  # events
        "BUCKETBRUSH_SNS_TOPIC_ARNS": '["arn:aws:sns:x"]',  # functions
        "BUCKETBRUSH_RECIPE_TIME_LIMITS_S": '{"upscale": 1200}',  # limits
        "BUCKETBRUSH_OUTPUTS_RETENTION_DAYS": "3",  # retention
        "BUCKETBRUSH_DIFFUSION_DEVICE": "cuda:1",  # diffusion
        "BUCKETBRUSH_LOCAL_REDIS": "never",  # local stack
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.bucket, s.inbox_prefix, s.redis_url, s.sqs_wait_time_s, s.sns_topic_arns) == (
        "b1", "in/", "redis://r:1/2", 5, ["arn:aws:sns:x"])
    assert (s.time_limit_s("upscale"), s.outputs_retention_days, s.diffusion_device, s.local_redis) == (
        1200, 3, "cuda:1", "never")
    assert s.state_dir == clean / "state"


@pytest.mark.parametrize(("init", "env", "dotenv", "state_file", "expected"), [
    ("i", "e", "d", "s", "i"),
    (None, "e", "d", "s", "e"),
    (None, None, "d", "s", "d"),
    (None, None, None, "s", "s"),
    (None, None, None, None, "bucketbrush"),
])
def test_precedence_init_env_dotenv_stack_default(clean: Path, monkeypatch: pytest.MonkeyPatch, init: str | None,
                                                  env: str | None, dotenv: str | None, state_file: str | None,
                                                  expected: str) -> None:
    if env:
        monkeypatch.setenv("BUCKETBRUSH_BUCKET", env)
    if dotenv:
        (clean / ".env").write_text(f"BUCKETBRUSH_BUCKET={dotenv}\n")
    if state_file:
        write_stack(clean, bucket=state_file)
    assert Settings(**({"bucket": init} if init else {})).bucket == expected


def test_frozen(clean: Path) -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings().bucket = "other"  # type: ignore[misc]


def test_a_group_alone_reads_the_same_sources(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKETBRUSH_BUCKET", "alone")
    write_stack(clean, s3_endpoint_url="http://127.0.0.1:41234", redis_url="redis://ignored:1/0")
    storage = StorageSettings()
    assert (storage.bucket, storage.s3_endpoint_url) == ("alone", "http://127.0.0.1:41234")
    assert not hasattr(storage, "redis_url")
    assert storage.s3_client_kwargs()["endpoint_url"] == "http://127.0.0.1:41234"
