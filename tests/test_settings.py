"""Settings: grouped fields, unchanged names, and the sources they are read from."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pydantic
import pytest

from bucketbrush.cli import main
from bucketbrush.settings import GROUPS, Settings, Source, StorageSettings

# Every variable users set (BUCKETBRUSH_<FIELD>) and attribute code reads: renaming one breaks them.
FIELDS = """
s3_endpoint_url s3_region s3_access_key s3_secret_key s3_addressing_style bucket s3_public_endpoint_url
sqs_queue_url sqs_endpoint_url sqs_wait_time_s sqs_visibility_timeout_s functions_token sns_topic_arns
functions_max_body_bytes redis_url broker_namespace queue_name max_retries inbox_prefix jobs_prefix outputs_prefix
manifests_prefix cancel_prefix status_prefix max_upload_bytes max_image_pixels presign_expires_s dedupe_ttl_s
job_time_limit_s recipe_time_limits_s heartbeat_interval_s runner_poll_ms runner_busy_poll_ms sweep_interval_s
sweep_grace_s inbox_retention_days outputs_retention_days manifests_retention_days cors_allowed_origins models_file
preload_models model_cache_bytes diffusion_device diffusion_dtype diffusion_attention_slicing diffusion_vae_tiling
diffusion_vae_slicing diffusion_cpu_offload diffusion_max_side diffusion_batch_max diffusion_batch_wait_ms
depth_model segmentation_model segmentation_labels
state_dir local_redis seaweedfs_ttl_unit test_recipes
studio_origins
webhook_subscriptions webhook_job_secret webhook_queue_name webhook_retry_schedule_s webhook_timeout_s
webhook_allow_private webhook_worker_threads manifests_queue_url
index_prefix heartbeat_expire_s hard_time_limit_recipes
refiner refine_local_model refine_local_max_new_tokens refine_local_min_confidence refine_local_timeout_s
refine_openai_url refine_openai_model refine_openai_key refine_openai_timeout_s
video_max_duration_s video_max_frames video_max_side video_max_fps video_temporal_weight
content_credentials c2pa_signing_key c2pa_signing_certs c2pa_tsa_url c2pa_trust_anchors
recipe_capabilities runner_serve runner_devices runner_device_inventory
tenant tenants_prefix tenants_file tenant_jobs_per_hour tenant_max_concurrent tenant_input_bytes_per_day
tenant_recipes tenant_quota_stale_s
broker_heartbeat_timeout_s broker_maintenance_chance runner_metrics_port runner_metrics_host
max_runner_deaths
provider_endpoints provider_tokens provider_timeout_s provider_deadline_s
handler_concurrency
tenant_queues
conversations_prefix conversation_wait_s
handler_max_pending
png_compress_level upscale_threads
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


SECRETS = ("tok-9f3a7c", "stack-sk-51e0b2", "dotenv-ak-77d4", "redis-pw-3c8e")


@pytest.fixture
def layered(clean: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Values from each source: env, a .env file, and the stack's state file; secrets among them."""
    monkeypatch.setenv("BUCKETBRUSH_REDIS_URL", f"redis://:{SECRETS[3]}@127.0.0.1:6390/0")
    monkeypatch.setenv("BUCKETBRUSH_FUNCTIONS_TOKEN", SECRETS[0])
    monkeypatch.setenv("BUCKETBRUSH_RECIPE_TIME_LIMITS_S", '{"upscale": 1200}')
    (clean / ".env").write_text(f"BUCKETBRUSH_BUCKET=from-dotenv\nBUCKETBRUSH_S3_ACCESS_KEY={SECRETS[2]}\n"
                                'BUCKETBRUSH_RECIPE_TIME_LIMITS_S={"filter": 30}\n')
    return write_stack(clean, s3_endpoint_url="http://127.0.0.1:41234", s3_access_key="stack-ak",
                       s3_secret_key=SECRETS[1], redis_url="redis://127.0.0.1:1/0", filer="127.0.0.1:8888")


def run_settings(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["settings", *args]) == 0
    out = capsys.readouterr().out
    assert not [secret for secret in SECRETS if secret in out]
    return out


def test_settings_prints_each_value_masked_with_its_source(layered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_settings(capsys)
    rows = {m[1]: (m[2], m[3]) for m in re.finditer(r"^  (\w+) += (.*?) +\((.*)\)$", out, re.MULTILINE)}
    assert sorted(rows) == sorted(FIELDS)
    stack = f"stack: {layered}"
    assert rows["s3_endpoint_url"] == ("http://127.0.0.1:41234", stack)
    assert rows["s3_secret_key"] == ("****", stack)
    assert rows["s3_access_key"] == ("****", "dotenv: .env")  # .env above the state file
    assert rows["bucket"] == ("from-dotenv", "dotenv: .env")
    assert rows["redis_url"] == ("redis://:****@127.0.0.1:6390/0", "env: BUCKETBRUSH_REDIS_URL")
    assert rows["functions_token"] == ("****", "env: BUCKETBRUSH_FUNCTIONS_TOKEN")
    assert rows["sqs_queue_url"] == ("unset", "default")
    assert rows["queue_name"] == ("bucketbrush", "default")
    assert rows["state_dir"] == (str(layered.parent), "env: BUCKETBRUSH_STATE_DIR")
    # Dicts from several sources are merged, and the row says so.
    assert rows["recipe_time_limits_s"] == ('{"filter": 30, "upscale": 1200}',
                                            "env+dotenv: BUCKETBRUSH_RECIPE_TIME_LIMITS_S, .env")
    headers = re.findall(r"^\[(\w+)\]", out, re.MULTILINE)
    assert headers == list(GROUPS)


def test_settings_json_groups_sources_and_secrets(layered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    groups = json.loads(run_settings(capsys, "--json"))
    assert {group: list(fields) for group, fields in groups.items()} == {
        group: list(cls.model_fields) for group, cls in GROUPS.items()}
    storage, broker = groups["storage"], groups["broker"]
    assert storage["s3_endpoint_url"] | {"description": ""} == {
        "value": "http://127.0.0.1:41234", "secret": False, "source": "stack", "from": str(layered),
        "env": "BUCKETBRUSH_S3_ENDPOINT_URL", "description": ""}
    assert (storage["s3_secret_key"]["value"], storage["s3_secret_key"]["secret"]) == ("****", True)
    assert (broker["redis_url"]["source"], broker["redis_url"]["from"]) == ("env", "BUCKETBRUSH_REDIS_URL")
    assert groups["functions"]["functions_token"]["value"] == "****"
    assert groups["events"]["sqs_queue_url"] | {"description": ""} == {
        "value": None, "secret": False, "source": "default", "from": None,
        "env": "BUCKETBRUSH_SQS_QUEUE_URL", "description": ""}
    assert all(field["description"] for fields in groups.values() for field in fields.values())


def test_an_unset_secret_is_shown_unset(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = json.loads(run_settings(capsys, "--json"))["storage"]
    assert (storage["s3_secret_key"]["value"], storage["s3_secret_key"]["source"]) == (None, "default")
    assert storage["s3_access_key"]["secret"]


def test_field_sources_sees_init_above_everything(layered: Path) -> None:
    sources = Settings.field_sources(bucket="explicit")
    assert sources["bucket"] == (Source("init"),)
    assert sources["s3_secret_key"] == (Source("stack", str(layered)),)
    assert sources["queue_name"] == ()
