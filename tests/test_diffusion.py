"""Diffusion recipes on the real diffusers code path, with a tiny random model (no hub).

Needs the ``diffusion`` extra. The model is built once per session and loaded through the
models TOML, the registry and ``from_pretrained``, as a runner loads real weights.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bucketbrush.errors import BucketbrushError, InputMissing, JobCancelled
from gpu_runner.devices import RuntimeOptions, cpu_has_native_bf16, resolve_dtype
from gpu_runner.images import encode_image
from gpu_runner.models import ModelRegistry
from gpu_runner.pipelines import ModelCache
from gpu_runner.presets import PRESETS
from gpu_runner.recipes import RECIPES, get_recipe
from gpu_runner.recipes.base import JobContext, RecipeResult
from gpu_runner.runner import resolve_params
from tests.tiny_models import TINY_SIZE

DIFFUSION_RECIPES = ("txt2img", "img2img", "sketch", "stylize", "inpaint")
FAST = {"steps": 2, "seed": 1234}


def new_cache(models_toml: Path, **options: object) -> ModelCache:
    return ModelCache(ModelRegistry.from_toml(models_toml), RuntimeOptions(device="cpu", dtype="float32", **options))


@pytest.fixture(scope="session")
def cache(models_toml: Path) -> ModelCache:
    return new_cache(models_toml)


def photo() -> Image.Image:
    """A non-square test picture with edges: sky gradient, a sun, a house."""
    y = np.linspace(0, 1, 72)[:, None, None]
    img = Image.fromarray((np.array([90, 140, 230]) * (1 - y) + np.array([250, 240, 200]) * y)
                          .repeat(96, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((60, 6, 84, 30), fill=(255, 210, 0))
    draw.rectangle((12, 34, 44, 70), fill=(150, 60, 40))
    draw.polygon([(8, 36), (28, 16), (48, 36)], fill=(90, 30, 20))
    return img


def sketch() -> Image.Image:
    img = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((10, 10, 54, 54), outline="black", width=3)
    draw.line((20, 40, 44, 40), fill="black", width=2)
    return img


def mask() -> Image.Image:
    img = Image.new("L", (96, 72), 0)
    ImageDraw.Draw(img).rectangle((50, 0, 96, 40), fill=255)
    return img


BUCKET = {"masks/sun.png": mask(), "masks/empty.png": Image.new("L", (96, 72), 0)}
INPUTS = {"txt2img": None, "img2img": photo(), "sketch": sketch(), "stylize": photo(), "inpaint": photo()}
PARAMS = {
    "txt2img": {"prompt": "a red house"},
    "img2img": {"prompt": "a red house at dusk", "strength": 0.75},
    "sketch": {"prompt": "a smiling face"},
    "stylize": {"style": "oil_painting"},
    "inpaint": {"prompt": "a full moon", "mask_key": "masks/sun.png"},
}


def make_ctx(cache: ModelCache, *, progress: list | None = None,
             cancelled: Callable[[], bool] | None = None) -> JobContext:
    def load_image(key: str) -> Image.Image:
        try:
            return BUCKET[key]
        except KeyError:
            raise InputMissing(f"{key!r} does not exist") from None

    return JobContext("job-1", on_progress=(lambda s, t: progress.append((s, t))) if progress is not None else None,
                      load_image=load_image, cancelled=cancelled, models=cache)


def run_recipe(cache: ModelCache, name: str, **overrides: object) -> RecipeResult:
    recipe = get_recipe(name)
    params = resolve_params(recipe, {**FAST, **PARAMS[name], **overrides}, {})
    return recipe.run(make_ctx(cache), INPUTS[name], params)


def png(result: RecipeResult) -> list[bytes]:
    return [encode_image(a.image, "png")[0] for a in result.artifacts]


def test_recipes_are_registered() -> None:
    assert set(DIFFUSION_RECIPES) <= set(RECIPES)
    assert not RECIPES["txt2img"].needs_input
    assert all(RECIPES[name].needs_input for name in DIFFUSION_RECIPES if name != "txt2img")


@pytest.mark.parametrize("name", DIFFUSION_RECIPES)
def test_recipe_produces_images(cache: ModelCache, name: str) -> None:
    result = run_recipe(cache, name)
    assert len(result.artifacts) == 1
    image = result.artifacts[0].image
    assert image.mode == "RGB"
    assert image.size == (TINY_SIZE, TINY_SIZE)
    assert np.asarray(image).std() > 0  # not a blank frame
    assert result.seeds == [1234]
    assert result.artifacts[0].meta == {"seed": 1234}
    assert result.model is not None
    assert result.model["id"] == "tiny" and result.model["family"] == "sd15"
    assert result.model["dtype"] == "float32" and result.model["device"] == "cpu"
    assert result.model["scheduler"] == "euler_a"
    assert result.model["weights"].startswith("files:")
    assert set(result.details["versions"]) >= {"torch", "diffusers", "transformers"}
    assert result.details["prompt_weighting"] == "none"  # plain prompts skip compel


def test_input_aspect_ratio_is_kept(cache: ModelCache) -> None:
    assert run_recipe(cache, "img2img", width=96).artifacts[0].image.size == (96, 72)
    assert run_recipe(cache, "stylize", height=96).artifacts[0].image.size == (128, 96)


def test_controlnet_recipes_record_their_controlnet(cache: ModelCache) -> None:
    assert run_recipe(cache, "sketch").model["controlnet"]["kind"] == "scribble"
    assert run_recipe(cache, "stylize").model["controlnet"]["kind"] == "canny"


@pytest.mark.parametrize("name", ["txt2img", "stylize", "inpaint"])
def test_same_spec_gives_identical_bytes(cache: ModelCache, name: str) -> None:
    first, second = run_recipe(cache, name), run_recipe(cache, name)
    assert png(first) == png(second)
    assert png(run_recipe(cache, name, seed=99)) != png(first)


@pytest.mark.parametrize("name", ["txt2img", "inpaint"])
def test_each_image_regenerates_exactly_from_its_seed(cache: ModelCache, name: str) -> None:
    """The default ``batching="per_image"``: image k is byte-identical to a lone run with seeds[k]."""
    batch = run_recipe(cache, name, num_images=2)
    assert batch.seeds == [1234, 1235]
    assert batch.details["batching"] == "per_image"
    assert png(batch)[1] == png(run_recipe(cache, name, seed=1235))[0]
    assert png(batch)[0] != png(batch)[1]


# Measured with this file's helpers (run_recipe, both batchings): 96 comparisons (64/128/192 px, seeds 1,
# 1234, 77777, 2**31, euler_a and dpmpp_2m, 4 steps, 4 images): max 1 level, mean <= 0.00025;
# 12 of 96 identical. oneDNN's batched convolutions differ from unbatched ones by ~1e-5, which
# flips a rounding now and then. A wrong seed assignment differs by tens of levels on average.
BATCHED_MAX_LEVELS = 2
BATCHED_MEAN_LEVELS = 0.01


@pytest.mark.parametrize("size", [64, 128])
def test_batched_images_are_within_tolerance_of_their_seed(cache: ModelCache, size: int) -> None:
    batch = run_recipe(cache, "txt2img", num_images=3, batching="batched", width=size, height=size, steps=3)
    assert batch.details["batching"] == "batched"
    for k, seed in enumerate(batch.seeds):
        lone = run_recipe(cache, "txt2img", seed=seed, width=size, height=size, steps=3).artifacts[0].image
        diff = np.abs(np.asarray(batch.artifacts[k].image, dtype=int) - np.asarray(lone, dtype=int))
        assert diff.max() <= BATCHED_MAX_LEVELS and diff.mean() <= BATCHED_MEAN_LEVELS, (k, diff.max(), diff.mean())
    other = np.asarray(batch.artifacts[1].image, dtype=int) - np.asarray(batch.artifacts[0].image, dtype=int)
    assert np.abs(other).mean() > 10 * BATCHED_MEAN_LEVELS  # the tolerance does tell seeds apart


def test_batched_falls_back_to_per_image_where_it_cannot_batch(cache: ModelCache) -> None:
    looped = run_recipe(cache, "inpaint", num_images=2, batching="batched")
    assert looped.details["batching"] == "per_image"
    assert png(looped)[1] == png(run_recipe(cache, "inpaint", seed=1235))[0]


def test_random_seed_is_recorded(cache: ModelCache) -> None:
    result = run_recipe(cache, "txt2img", seed=None)
    assert len(result.seeds) == 1
    assert png(result) == png(run_recipe(cache, "txt2img", seed=result.seeds[0]))


def test_progress_is_reported_per_step(cache: ModelCache) -> None:
    progress: list[tuple[int, int]] = []
    recipe = get_recipe("txt2img")
    params = resolve_params(recipe, {**PARAMS["txt2img"], "steps": 3, "num_images": 2, "seed": 1,
                                     "batching": "batched"}, {})
    recipe.run(make_ctx(cache, progress=progress), None, params)
    assert progress == [(1, 3), (2, 3), (3, 3)]  # one batched call for two images
    progress.clear()
    recipe = get_recipe("inpaint")
    params = resolve_params(recipe, {**PARAMS["inpaint"], "steps": 2, "num_images": 2}, {})
    recipe.run(make_ctx(cache, progress=progress), photo(), params)
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]  # one call per image


def test_cancel_stops_between_steps(cache: ModelCache) -> None:
    progress: list[tuple[int, int]] = []
    recipe = get_recipe("txt2img")
    params = resolve_params(recipe, {**PARAMS["txt2img"], "steps": 5}, {})
    ctx = make_ctx(cache, progress=progress, cancelled=lambda: len(progress) >= 2)
    with pytest.raises(JobCancelled) as info:
        recipe.run(ctx, None, params)
    assert info.value.code == "cancelled"
    assert progress == [(1, 5), (2, 5)]


def busy() -> Image.Image:
    """A picture full of detail: random noise with hard edges everywhere."""
    return Image.fromarray(np.random.default_rng(7).integers(0, 256, (72, 96, 3), dtype=np.uint8))


def test_stylize_auto_strength_from_image_complexity(cache: ModelCache) -> None:
    """docs/recipes.md: ``auto`` takes its strength from the image's complexity, 0.20-0.70,
    detailed images getting less change. Checked from the outside: a flat picture and a busy
    one, and the documented preset strengths."""
    recipe = get_recipe("stylize")
    params = resolve_params(recipe, {**FAST, "style": "auto", "steps": 5}, {})
    flat, detailed = (recipe.run(make_ctx(cache), image, params).details
                      for image in (Image.new("RGB", (96, 72), (128, 128, 128)), busy()))
    assert flat["strength_source"] == detailed["strength_source"] == "auto"
    assert 0.20 <= detailed["strength"] < flat["strength"] <= 0.70, (flat, detailed)
    assert flat["strength"] == 0.70  # nothing to keep: the most change the range allows
    documented = {"realistic": 0.35, "hdr": 0.40, "noir": 0.50, "sepia": 0.45}  # docs/recipes.md
    for style, strength in documented.items():
        details = run_recipe(cache, "stylize", style=style, steps=3).details
        assert (details["strength"], details["strength_source"]) == (strength, "preset"), style
    assert run_recipe(cache, "stylize", strength=0.5).details["strength_source"] == "params"


def test_sixteen_presets() -> None:
    assert len(PRESETS) == 16  # "one of 16 presets", docs/recipes.md


def test_pose_preset_without_keypoints_falls_back_to_canny(cache: ModelCache) -> None:
    result = run_recipe(cache, "stylize", style="anime")
    assert result.details["control"] == "canny"
    assert any("pose" in w for w in result.warnings)


def test_long_prompt_is_truncated_with_a_warning(cache: ModelCache) -> None:
    result = run_recipe(cache, "txt2img", prompt="a very long prompt " * 20)
    assert any("truncated" in w for w in result.warnings)
    assert not run_recipe(cache, "txt2img").warnings


def test_prompt_weighting_syntax_changes_the_image(cache: ModelCache) -> None:
    plain = run_recipe(cache, "txt2img", prompt="a red house")
    weighted = run_recipe(cache, "txt2img", prompt="a (red)1.8 house")
    assert png(plain) != png(weighted)
    assert (plain.details["prompt_weighting"], weighted.details["prompt_weighting"]) == ("none", "compel")
    # A weight of 1.0 through compel gives the pipeline's own embeddings: the same image.
    assert png(run_recipe(cache, "txt2img", prompt="a (red)1.0 house, well-lit")) == png(
        run_recipe(cache, "txt2img", prompt="a red house, well-lit"))


def test_weighting_syntax_detection() -> None:
    from gpu_runner.prompts import uses_weighting

    assert all(map(uses_weighting, ["(red)1.3", "red++ house", "[blurry]", 'a.blend("b")', "cat-"]))
    assert not any(map(uses_weighting, ["well-lit room", "a red house, 8k", "t-shirt"]))


def test_schedulers_can_be_chosen(cache: ModelCache) -> None:
    for scheduler in ("dpmpp_2m", "lcm", "euler_a"):
        assert run_recipe(cache, "txt2img", scheduler=scheduler).model["scheduler"] == scheduler


@pytest.mark.parametrize(("name", "overrides"), [
    ("txt2img", {"width": 65}),
    ("txt2img", {"height": 32}),
    ("txt2img", {"steps": 0}),
    ("txt2img", {"steps": 151}),
    ("txt2img", {"guidance": 31}),
    ("txt2img", {"num_images": 5}),
    ("txt2img", {"scheduler": "plms"}),
    ("txt2img", {"prompt": ""}),
    ("stylize", {"style": "vaporwave"}),
    ("stylize", {"strength": 1.5}),
    ("img2img", {"strength": -0.1}),
    ("inpaint", {"mask_key": None}),
    ("txt2img", {"sampler": "euler"}),
])
def test_bad_params_are_invalid_params(name: str, overrides: dict) -> None:
    recipe = get_recipe(name)
    params = {k: v for k, v in {**FAST, **PARAMS[name], **overrides}.items() if v is not None}
    with pytest.raises(BucketbrushError) as info:
        resolve_params(recipe, params, {})
    assert info.value.code == "invalid_params"


@pytest.mark.parametrize(("name", "overrides", "code"), [
    ("txt2img", {"width": 2048}, "invalid_params"),  # over the runner's max_side
    ("img2img", {"strength": 0.1}, "invalid_params"),  # 2 steps x 0.1 = no step at all
    ("inpaint", {"mask_key": "masks/nope.png"}, "invalid_params"),
    ("inpaint", {"mask_key": "masks/empty.png"}, "invalid_params"),
    ("txt2img", {"model": "sd99"}, "unknown_model"),
    ("txt2img", {"model": "gone"}, "model_unavailable"),
    ("sketch", {"model": "tiny-alias"}, "model_unavailable"),  # no scribble ControlNet
])
def test_bad_jobs_fail_with_stable_codes(cache: ModelCache, name: str, overrides: dict, code: str) -> None:
    with pytest.raises(BucketbrushError) as info:
        run_recipe(cache, name, **overrides)
    assert info.value.code == code
    if code == "unknown_model":
        assert "tiny" in info.value.message and "gone" in info.value.message


def test_no_models_configured_is_model_unavailable() -> None:
    recipe = get_recipe("txt2img")
    with pytest.raises(BucketbrushError) as info:
        recipe.run(JobContext("job-1"), None, resolve_params(recipe, PARAMS["txt2img"], {}))
    assert info.value.code == "model_unavailable"


def test_doctor_reports_present_and_missing_weights(models_toml: Path) -> None:
    reports = {r.id: r for r in ModelRegistry.from_toml(models_toml).doctor()}
    assert reports["tiny"].ok and len(reports["tiny"].components) == 4  # weights + 3 ControlNets
    assert not reports["gone"].ok
    assert "not-downloaded" in reports["gone"].components[0].hint


def test_repo_missing_from_hf_cache_is_model_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    toml = tmp_path / "models.toml"
    toml.write_text('[models.sd15]\nfamily = "sd15"\nrepo = "example/not-cached"\n')
    [report] = ModelRegistry.from_toml(toml).doctor()
    assert not report.ok and "hf download example/not-cached" in report.components[0].hint


def test_cache_evicts_least_recently_used(cache: ModelCache, models_toml: Path) -> None:
    roomy = new_cache(models_toml)
    roomy.preload(["tiny", "tiny-alias"])
    assert roomy.loaded == ["tiny", "tiny-alias"]
    one_model = roomy.model("tiny").nbytes
    assert roomy.nbytes == 2 * one_model and roomy.loaded == ["tiny-alias", "tiny"]  # tiny used last
    small = new_cache(models_toml, memory_budget_bytes=int(one_model * 1.5))
    small.preload(["tiny"])
    small.pipeline("tiny-alias", "txt2img")
    assert small.loaded == ["tiny-alias"]


def test_derived_pipelines_share_components(cache: ModelCache) -> None:
    base, _ = cache.pipeline("tiny", "txt2img")
    img2img, _ = cache.pipeline("tiny", "img2img")
    controlled, _ = cache.pipeline("tiny", "img2img", "canny")
    assert img2img.unet is base.unet and controlled.vae is base.vae
    assert cache.pipeline("tiny", "img2img")[0] is img2img


def test_out_of_memory_frees_the_cache(models_toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    own = new_cache(models_toml)
    pipe, _ = own.pipeline("tiny", "txt2img")

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(type(pipe), "__call__", oom)
    with pytest.raises(BucketbrushError) as info:
        run_recipe(own, "txt2img")
    assert info.value.code == "out_of_memory" and not info.value.retryable
    assert own.loaded == []


def test_dtype_policy(tmp_path: Path) -> None:
    import torch

    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(flags)
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_native_bf16(flags)
    assert resolve_dtype("cuda", "auto") == torch.float16
    assert resolve_dtype("mps", "auto") == torch.float16
    assert resolve_dtype("cpu", "auto") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("cpu", "bfloat16") == torch.bfloat16


def test_torch_threads_in_a_job_thread_are_the_process_s() -> None:
    """A runner's job runs in a Dramatiq worker thread: torch's intra-op threads there are the
    ones the process has (the runner-vs-in-process gap is not a thread-count difference), and
    the runner logs them once per job thread (read by bench.diffusion_bucket)."""
    import logging
    import threading

    from gpu_runner import devices

    main = devices.torch_threads()
    seen: list[dict[str, object]] = []
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    devices.log.addHandler(handler)
    devices.log.setLevel(logging.INFO)

    def job() -> None:
        seen.append(devices.torch_threads())
        devices.report_torch_threads()
        devices.report_torch_threads()

    try:
        thread = threading.Thread(target=job, name="job-thread")
        thread.start()
        thread.join()
    finally:
        devices.log.removeHandler(handler)
    assert seen == [main] and main["intra_op"] >= 1
    assert [r.getMessage() for r in records] == [f"torch threads in thread 'job-thread': {main}"]


def test_recipe_registry_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "
            "import gpu_runner.recipes as r; print(sorted(r.RECIPES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "stylize" in out.stdout
