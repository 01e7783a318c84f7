"""What the diffusion recipes share: their params, and one generation loop on the model cache.

Not a recipe itself. Importing it needs no torch (params are plain pydantic); torch and
diffusers are imported inside ``generate`` when a job runs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from pydantic import Field

from bucketbrush.errors import InvalidParams, ModelUnavailable
from gpu_runner.models import ModelSpec, SchedulerName
from gpu_runner.recipes.base import Artifact, JobContext, RecipeParams, RecipeResult

if TYPE_CHECKING:
    from gpu_runner.batching import Batcher
    from gpu_runner.pipelines import LoadedModel, ModelCache, Task

MAX_SEED = 2**32 - 1
MODELS_HELP = ("no diffusion models are configured on this runner: copy infra/models.example.toml, set "
               "BUCKETBRUSH_MODELS_FILE to it in the environment of `bucketbrush up` (or of `bucketbrush runner`) "
               "or in the .env of the directory you run it from, and restart the runner "
               "(README, section Models)")
# Pipelines whose per-image generators map one to one onto the images of a batched call, so
# ``batching="batched"`` may run them as one call. Even then a batched CPU/GPU kernel is not
# bitwise equal to an unbatched one (about 1e-5 apart), so image k of a batch is only within a
# small tolerance of a lone call with seeds[k]; the default ``per_image`` is exact.
_BATCH_SAFE = {("txt2img", False), ("txt2img", True)}
Batching = Literal["per_image", "batched"]
# Tasks whose calls jobs may share (the ``diffusion_batch_max`` setting, gpu_runner/batching.py):
# without ControlNet or mask, a call takes one prompt and one init image per image.
_CROSS_JOB = {"txt2img", "img2img"}


class DiffusionParams(RecipeParams):
    prompt: str = Field(default="", max_length=4000)
    negative_prompt: str = Field(default="", max_length=4000)
    model: str | None = Field(default=None, description="a model id from the models file; None: its default")
    steps: int = Field(default=30, ge=1, le=150)
    guidance: float = Field(default=7.5, ge=0.0, le=30.0, description="classifier-free guidance scale")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="None: random (recorded)")
    num_images: int = Field(default=1, ge=1, le=4)
    batching: Batching = Field(
        default="per_image",
        description="per_image: one denoising call per image, so image k is byte-identical to a lone "
                    "run with seeds[k]; batched: one call for all images (faster on a GPU; image k is "
                    "then within a few pixel levels of a lone run). A runner with diffusion_batch_max > 1 may "
                    "share a call with other jobs' images: within a few levels too (details.batch says so)")
    width: int | None = Field(default=None, ge=64, le=4096, multiple_of=8)
    height: int | None = Field(default=None, ge=64, le=4096, multiple_of=8)
    scheduler: SchedulerName | None = Field(default=None, description="None: the model's default")


class ImageDiffusionParams(DiffusionParams):
    """Params of recipes that start from the input image. Unset width/height: the input's
    aspect ratio at the model's default size."""

    strength: float = Field(default=0.6, ge=0.0, le=1.0, description="how much the image may change")


@dataclass
class Generation:
    """One generation request, after a recipe has resolved its inputs."""

    task: Task
    prompt: str
    negative_prompt: str
    image: Image.Image | None = None
    mask: Image.Image | None = None
    control: str | None = None
    control_image: Image.Image | None = None
    control_scale: float = 1.0
    strength: float | None = None
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def model_cache(ctx: JobContext) -> ModelCache:
    cache = getattr(ctx, "models", None)
    if cache is None:
        raise ModelUnavailable(MODELS_HELP)
    return cache


def output_size(ctx: JobContext, params: DiffusionParams, spec: ModelSpec,
                image: Image.Image | None = None) -> tuple[int, int]:
    """Width and height to generate, checked against the runner's limit."""
    width, height = params.width, params.height
    if image is not None and (width is None or height is None):
        # Keep the input's aspect ratio: from the one side given, or with the longer side at
        # the model's native size.
        aspect = image.width / image.height
        if width is None and height is None:
            side = max(spec.width, spec.height)
            width, height = (side, side / aspect) if aspect >= 1 else (side * aspect, side)
        elif width is None:
            width = height * aspect
        else:
            height = width / aspect
        width, height = (max(64, round(v / 8) * 8) for v in (width, height))
    width, height = width or spec.width, height or spec.height
    limit = model_cache(ctx).options.max_side
    if max(width, height) > limit:
        raise InvalidParams(f"size {width}x{height} is over this runner's limit of {limit} px per side")
    return width, height


def check_strength(steps: int, strength: float) -> None:
    if int(steps * strength) < 1:
        raise InvalidParams(f"steps x strength = {steps} x {strength} runs no denoising step; "
                            f"raise steps or strength")


def generate(ctx: JobContext, params: DiffusionParams, spec: ModelSpec, size: tuple[int, int],
             gen: Generation, *, recipe: str) -> RecipeResult:
    """Run ``gen`` on ``spec`` and return one artifact per image. Per-image seeds (one
    torch.Generator each); progress and cancellation through ``ctx``."""
    import torch

    from bucketbrush.errors import JobCancelled
    from gpu_runner.devices import report_torch_threads
    from gpu_runner.pipelines import make_scheduler
    from gpu_runner.prompts import encode_prompt

    report_torch_threads()
    cache = model_cache(ctx)
    if gen.control:
        spec.controlnet(gen.control)  # fail before loading anything
    pipe, loaded = cache.pipeline(spec.id, gen.task, gen.control)
    scheduler = params.scheduler or spec.scheduler

    width, height = size
    first = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1)
    seeds = [(first + i) % (MAX_SEED + 1) for i in range(params.num_images)]
    call: dict[str, Any] = {"num_inference_steps": params.steps, "guidance_scale": params.guidance}
    if gen.task == "txt2img" or gen.control:
        call.update(width=width, height=height)
    if gen.image is not None:
        call["image"] = gen.image.convert("RGB").resize(size, Image.LANCZOS)
    if gen.mask is not None:
        call["mask_image"] = gen.mask.resize(size, Image.NEAREST)
    if gen.strength is not None:
        call["strength"] = gen.strength
    if gen.control_image is not None:
        control_image = gen.control_image.convert("RGB").resize(size, Image.LANCZOS)
        call["controlnet_conditioning_scale"] = gen.control_scale
        call["control_image" if gen.task != "txt2img" else "image"] = control_image

    batcher = getattr(ctx, "batcher", None)
    if batcher is not None and gen.task in _CROSS_JOB and not gen.control and gen.mask is None:
        return _generate_batched(ctx, batcher, params, spec, size, gen, recipe=recipe, pipe=pipe, loaded=loaded,
                                 scheduler=scheduler, call=call, seeds=seeds)
    batched = params.batching == "batched" and (gen.task, bool(gen.control)) in _BATCH_SAFE
    batches = [seeds] if batched else [[s] for s in seeds]
    done = [0]

    def on_step_end(p: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        total = p.num_timesteps * len(batches)
        ctx.progress(done[0] + step + 1, total)
        if ctx.cancelled():
            # Raised inside the step loop, so no further UNet step or VAE decode runs.
            raise JobCancelled("cancelled by the user")
        return callback_kwargs

    images: list[Image.Image] = []
    warnings = list(gen.warnings)
    pipe.scheduler = make_scheduler(scheduler, loaded.scheduler_config)
    with cache.guard():
        encoded = encode_prompt(pipe, spec.family, gen.prompt, gen.negative_prompt)
        warnings += encoded.warnings
        for batch in batches:
            generators = [torch.Generator("cpu").manual_seed(s) for s in batch]
            out = pipe(**call, **encoded.kwargs, num_images_per_prompt=len(batch), generator=generators,
                       callback_on_step_end=on_step_end)
            done[0] += pipe.num_timesteps
            images += out.images
            flagged = getattr(out, "nsfw_content_detected", None) or []
            if any(flagged):
                warnings.append("the model's safety checker blanked one or more images")

    return _result(params, spec, size, gen, recipe=recipe, loaded=loaded, scheduler=scheduler, seeds=seeds,
                   images=images, warnings=warnings, weighting=encoded.weighting,
                   batching="batched" if batched else "per_image")


def _generate_batched(ctx: JobContext, batcher: Batcher, params: DiffusionParams, spec: ModelSpec,
                      size: tuple[int, int], gen: Generation, *, recipe: str, pipe: Any, loaded: LoadedModel,
                      scheduler: str, call: dict[str, Any], seeds: list[int]) -> RecipeResult:
    """``generate`` through the cross-job batcher (gpu_runner/batching.py): this job's share
    of a call that other compatible jobs may join. The prompt is encoded here, under this
    job's compute slot; the call itself runs on the batcher's thread."""
    from gpu_runner.batching import Request, prompt_key
    from gpu_runner.pipelines import make_scheduler
    from gpu_runner.prompts import encode_prompt

    cache = model_cache(ctx)
    with cache.guard():
        encoded = encode_prompt(pipe, spec.family, gen.prompt, gen.negative_prompt)
    image = call.pop("image", None)
    key = (spec.id, id(pipe), gen.task, size, params.steps, scheduler, params.guidance, gen.strength,
           loaded.dtype_name, prompt_key(encoded.kwargs))
    request = batcher.submit(Request(
        job_id=ctx.job_id, key=key, pipe=pipe, guard=cache.guard, call=call, prompt=encoded.kwargs, seeds=seeds,
        make_scheduler=lambda: make_scheduler(scheduler, loaded.scheduler_config),
        progress=ctx.progress, cancelled=ctx.cancelled, image=image))
    warnings = list(gen.warnings) + encoded.warnings
    if any(request.flagged):
        warnings.append("the model's safety checker blanked one or more images")
    result = _result(params, spec, size, gen, recipe=recipe, loaded=loaded, scheduler=scheduler, seeds=seeds,
                     images=request.images, warnings=warnings, weighting=encoded.weighting,
                     batching="batched" if request.batch["images"] > 1 else "per_image")
    result.details["batch"] = request.batch
    return result


def _result(params: DiffusionParams, spec: ModelSpec, size: tuple[int, int], gen: Generation, *, recipe: str,
            loaded: LoadedModel, scheduler: str, seeds: list[int], images: list[Image.Image],
            warnings: list[str], weighting: str, batching: str) -> RecipeResult:
    width, height = size
    model = {"id": spec.id, "family": spec.family, "license": spec.license, "revision": loaded.revision,
             "weights": loaded.fingerprint, "scheduler": scheduler,
             "dtype": loaded.dtype_name, "device": loaded.device}
    if gen.control:
        model["controlnet"] = {"kind": gen.control, "source": spec.controlnet(gen.control).describe()}
    details = {
        **gen.details, "steps": params.steps, "guidance": params.guidance, "width": width, "height": height,
        "prompt_weighting": weighting, "batching": batching, "versions": library_versions(),
    }
    artifacts = [Artifact(name=f"{recipe}_{i}", image=img, meta={"seed": s})
                 for i, (img, s) in enumerate(zip(images, seeds, strict=True))]
    return RecipeResult(artifacts=artifacts, model=model, seeds=seeds, warnings=warnings, details=details)


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in ("torch", "diffusers", "transformers", "compel"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
