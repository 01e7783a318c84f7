"""Remote inference providers (gpu_runner/providers.py) against tests/provider_server.py, a
local server answering with the shapes hf-inference, openai-images and replicate document
(each named in that file), and the whole path: a runner whose models file names a provider,
and a local model whose missing weights fall back to one."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr

from bucketbrush.errors import InvalidParams, ModelUnavailable, OutOfMemory, ProviderError
from bucketbrush.settings import Settings
from gpu_runner.models import ModelRegistry, ModelSpec, RemoteSpec, WeightsSource
from gpu_runner.providers import Client, check_params
from gpu_runner.recipes import validate_params
from gpu_runner.recipes.base import RecipeResult
from gpu_runner.recipes.txt2img import with_fallback
from tests.helpers import wait_final
from tests.test_scale_out import remote_runner, submit


def params(**given):
    return validate_params("txt2img", {"prompt": "a lighthouse", **given})


def client(server, provider: str, model: str, *, deadline_s: float = 20, key: str | None = None) -> Client:
    url, token, _ = server
    base = {"hf-inference": f"{url}/hf", "openai-images": f"{url}/openai/v1", "replicate": f"{url}/replicate/v1"}
    s = Settings(provider_endpoints={provider: base[provider]}, provider_tokens={provider: SecretStr(key or token)},
                 provider_deadline_s=deadline_s, provider_timeout_s=10)
    return Client(RemoteSpec(id="r", provider=provider, remote_model=model), s)


def requests(log: Path, path_part: str) -> list[dict]:
    return [r for r in map(json.loads, log.read_text().splitlines()) if path_part in r["path"]]


# -- without a server -------------------------------------------------------------------------

def test_unsupported_params_are_refused_not_dropped() -> None:
    check_params("hf-inference", {"prompt", "steps", "guidance", "seed", "width", "format"})
    with pytest.raises(InvalidParams, match="openai-images does not support guidance, negative_prompt, seed"):
        check_params("openai-images", {"prompt", "seed", "guidance", "negative_prompt"})
    with pytest.raises(InvalidParams, match="does not support scheduler"):
        check_params("replicate", {"prompt", "scheduler"})


def test_models_file_entries_name_a_provider_or_a_fallback(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('default = "local"\n'
                      '[models.local]\nfamily = "sd15"\npath = "./missing"\nfallback = "hf-inference:acme/sdxl"\n'
                      '[models.remote]\nprovider = "replicate"\nremote_model = "acme/sdxl"\nwidth = 768\n')
    registry = ModelRegistry.from_toml(models)
    local, remote = registry["local"], registry["remote"]
    assert isinstance(remote, RemoteSpec) and remote.provider == "replicate" and remote.width == 768
    assert local.fallback == RemoteSpec(id="local@hf-inference", provider="hf-inference", remote_model="acme/sdxl",
                                        width=512, height=512)
    with pytest.raises(InvalidParams, match="only txt2img runs remote models"):
        registry.get_model("remote")  # what every other diffusion recipe asks for
    assert [r.ok for r in registry.doctor()] == [False, True]
    models.write_text('[models.x]\nprovider = "nope"\nremote_model = "m"\n')
    with pytest.raises(Exception, match="provider"):
        ModelRegistry.from_toml(models)


@pytest.mark.parametrize("failure", [ModelUnavailable("no weights"), OutOfMemory("out of memory on cuda")])
def test_fallback_runs_remote_when_local_weights_are_missing_or_memory_runs_out(failure) -> None:
    remote = RemoteSpec(id="m@hf-inference", provider="hf-inference", remote_model="acme/sdxl")
    spec = ModelSpec(id="m", family="sd15", weights=WeightsSource(path=Path("/nowhere")), fallback=remote)

    def local() -> RecipeResult:
        raise failure

    result = with_fallback(local, spec, lambda r: RecipeResult(artifacts=[], model={"provider": r.provider}))
    assert result.model == {"provider": "hf-inference"}
    assert result.warnings[0].startswith(f"ran on hf-inference (acme/sdxl), the fallback of model 'm': {failure.code}")
    with pytest.raises(type(failure)):  # no fallback: the local failure stands
        with_fallback(local, spec.model_copy(update={"fallback": None}), lambda r: RecipeResult(artifacts=[]))


# -- against the documented shapes ------------------------------------------------------------

def test_hf_inference_maps_params_and_returns_the_image(provider_server) -> None:
    c = client(provider_server, "hf-inference", "acme/sdxl")
    got = c.txt2img(params(negative_prompt="fog", steps=12, guidance=5.0, seed=258, num_images=2), 64, 48)
    assert [i.size for i in got.images] == [(64, 48)] * 2 and got.seeds == [258, 259]
    assert got.images[0].getpixel((0, 0)) == (2, 1, 0)  # the server painted seed 258
    sent = [r for r in requests(provider_server[2], "/hf/acme/sdxl")
            if r["body"]["parameters"].get("seed") in (258, 259)]
    assert sent[0]["body"] == {"inputs": "a lighthouse", "parameters": {
        "negative_prompt": "fog", "num_inference_steps": 12, "guidance_scale": 5.0, "width": 64, "height": 48,
        "seed": 258}}
    assert sent[0]["auth"] == f"Bearer {provider_server[1]}"


def test_hf_inference_retries_while_the_model_loads(provider_server) -> None:
    got = client(provider_server, "hf-inference", "acme/loading-client").txt2img(params(), 64, 64)
    assert len(got.images) == 1 and got.timings["requests"] == 2 and got.timings["loading_wait_s"] == 0.5
    with pytest.raises(ProviderError, match="still loading; waiting 30 s more would pass provider_deadline_s"):
        client(provider_server, "hf-inference", "acme/cold", deadline_s=5).txt2img(params(), 64, 64)


def test_429_honours_retry_after(provider_server) -> None:
    got = client(provider_server, "hf-inference", "acme/busy").txt2img(params(), 64, 64)
    assert len(got.images) == 1 and got.timings["rate_limited_wait_s"] == 1.0
    first, second = requests(provider_server[2], "/hf/acme/busy")[:2]
    assert second["time"] - first["time"] >= 1.0  # the server's own clock: it was asked again after Retry-After


def test_other_failures_carry_the_providers_message_and_never_the_token(provider_server) -> None:
    cases = [("hf-inference", "acme/broken", "answered 400: Input validation error: `inputs` cannot be empty"),
             ("openai-images", "dall-e-bad", "answered 400: Invalid value for 'size'"),
             ("replicate", "acme/nsfw", "failed: NSFW content detected"),
             ("hf-inference", "acme/sdxl@wrong-key", "answered 401: Invalid credentials")]
    for provider, model, message in cases:
        key = "hf_wrong_key_xyz" if model.endswith("@wrong-key") else None
        with pytest.raises(ProviderError, match=message) as caught:
            client(provider_server, provider, model.removesuffix("@wrong-key"), key=key).txt2img(params(), 64, 64)
        assert provider_server[1] not in str(caught.value) and "hf_wrong_key_xyz" not in str(caught.value)


def test_openai_images_b64_answers(provider_server) -> None:
    got = client(provider_server, "openai-images", "dall-e-test").txt2img(params(num_images=2), 256, 256)
    assert [i.size for i in got.images] == [(256, 256)] * 2 and got.seeds == []
    body = requests(provider_server[2], "/images/generations")[-1]["body"]
    assert body == {"model": "dall-e-test", "prompt": "a lighthouse", "n": 2, "size": "256x256",
                    "response_format": "b64_json"}


def test_replicate_polls_the_prediction_and_downloads_without_the_token(provider_server) -> None:
    got = client(provider_server, "replicate", "acme/sdxl").txt2img(params(seed=7, num_images=2, steps=4), 64, 64)
    assert got.seeds == [7, 8] and [i.getpixel((0, 0)) for i in got.images] == [(7, 0, 0), (8, 0, 0)]
    assert got.timings["predict_time_s"] == 1.234 and got.timings["polling_s"] >= 1.0
    log = provider_server[2]
    created = requests(log, "/replicate/v1/models/acme/sdxl/predictions")[-1]
    assert created["body"]["input"] == {"prompt": "a lighthouse", "width": 64, "height": 64, "num_outputs": 2,
                                        "num_inference_steps": 4, "guidance_scale": 7.5, "seed": 7}
    files = requests(log, "/replicate/files/")
    assert files and all(f["auth"] is None for f in files)


# -- the whole path: a runner with remote models ----------------------------------------------

def test_a_runner_runs_remote_models_and_falls_back(settings, bucket, provider_server, tmp_path) -> None:
    url, token, _ = provider_server
    models = tmp_path / "models.toml"
    models.write_text('default = "local-sd"\n'
                      '[models.local-sd]\nfamily = "sd15"\npath = "./no-weights-here"\nwidth = 64\nheight = 64\n'
                      'fallback = "hf-inference:acme/loading-runner"\n'
                      '[models.hf]\nprovider = "hf-inference"\nremote_model = "acme/sdxl"\nwidth = 64\nheight = 64\n'
                      '[models.hf-broken]\nprovider = "hf-inference"\nremote_model = "acme/broken"\n'
                      '[models.dalle]\nprovider = "openai-images"\nremote_model = "dall-e-test"\n')
    prefix = f"prov-{uuid.uuid4().hex[:6]}"
    mine = settings.model_copy(update={"queue_name": prefix})
    extra = {"BUCKETBRUSH_QUEUE_NAME": prefix, "BUCKETBRUSH_MODELS_FILE": str(models),
             "BUCKETBRUSH_PROVIDER_ENDPOINTS": json.dumps({"hf-inference": f"{url}/hf",
                                                           "openai-images": f"{url}/openai/v1"}),
             "BUCKETBRUSH_PROVIDER_TOKENS": json.dumps({"hf-inference": token, "openai-images": token})}
    workdir = tmp_path / "runner"
    with remote_runner(settings, workdir, ["--serve", "gpu"], extra) as log:
        jobs = {
            "remote": submit(bucket, mine, "txt2img", {"prompt": "a lighthouse", "model": "hf", "seed": 3}),
            "fallback": submit(bucket, mine, "txt2img", {"prompt": "a lighthouse"}),
            "broken": submit(bucket, mine, "txt2img", {"prompt": "a lighthouse", "model": "hf-broken"}),
            "unsupported": submit(bucket, mine, "txt2img", {"prompt": "a lighthouse", "model": "dalle", "seed": 1}),
        }
        done = {name: wait_final(bucket, job, timeout=120) for name, job in jobs.items()}
        runner_log = log.read_text()
    remote = done["remote"]
    assert remote.status == "succeeded", remote.error
    assert remote.model["provider"] == "hf-inference" and remote.model["remote_model"] == "acme/sdxl"
    assert remote.model["timings"]["requests"] == 1 and remote.model["timings"]["request_s"] > 0
    assert remote.seeds == [3] and remote.outputs[0].width == 64
    fallback = done["fallback"]
    assert fallback.status == "succeeded", fallback.error
    assert fallback.model["provider"] == "hf-inference" and fallback.model["timings"]["loading_wait_s"] == 0.5
    assert "the fallback of model 'local-sd': model_unavailable" in fallback.warnings[0]
    assert done["broken"].status == "failed" and done["broken"].error.code == "provider_error"
    assert "`inputs` cannot be empty" in done["broken"].error.message
    assert done["unsupported"].error.code == "invalid_params" and "seed" in done["unsupported"].error.message
    manifests = json.dumps([m.model_dump(mode="json") for m in done.values()])
    assert token not in manifests and token not in runner_log
