"""Remote inference providers: txt2img on a model someone else serves (DreamSketch's fallback
to the Hugging Face Inference API when there is no local GPU).

Three providers, each with the request and answer shapes its documentation gives:

- ``hf-inference``: the Hugging Face Inference API's text-to-image task
  (https://huggingface.co/docs/inference-providers/tasks/text-to-image): ``POST
  <endpoint>/<model id>`` with ``{"inputs": prompt, "parameters": {...}}``; the answer is the
  image's bytes, or ``503 {"error": ..., "estimated_time": s}`` while the model loads.
- ``openai-images``: ``POST <endpoint>/images/generations``
  (https://platform.openai.com/docs/api-reference/images/create) with ``response_format:
  "b64_json"``; the answer is ``{"created", "data": [{"b64_json"}]}``, errors
  ``{"error": {"message", "type", "code"}}``.
- ``replicate``: create a prediction (https://replicate.com/docs/reference/http):
  ``POST <endpoint>/models/<owner>/<name>/predictions`` (or ``/predictions`` with a
  ``version``) with ``{"input": {...}}``, then poll ``urls.get`` until ``status`` is final;
  ``output`` holds image URLs, ``metrics.predict_time`` the remote run time.

Behaviour: a param the provider cannot honour is refused (``invalid_params``) when the job set
it, not dropped; 503 while loading is retried until ``provider_deadline_s``; 429 waits
``Retry-After``; anything else ends the job ``provider_error`` with the provider's message. The
token goes in the Authorization header only: it is never logged, nor put in a manifest or an
error message.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from bucketbrush.errors import InvalidParams, JobCancelled, ProviderError
from gpu_runner.models import RemoteSpec

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS = {
    "hf-inference": "https://router.huggingface.co/hf-inference/models",
    "openai-images": "https://api.openai.com/v1",
    "replicate": "https://api.replicate.com/v1",
}
MAX_SEED = 2**32 - 1
# Recipe params the runner itself handles (output encoding, model choice): never the provider's.
RUNNER_PARAMS = frozenset({"format", "quality", "model"})
# Each provider's name for the txt2img params it accepts (None: sent by the runner's own loop).
FIELDS: dict[str, dict[str, str | None]] = {
    "hf-inference": {"prompt": "inputs", "negative_prompt": "negative_prompt", "steps": "num_inference_steps",
                     "guidance": "guidance_scale", "width": "width", "height": "height", "seed": "seed",
                     "num_images": None},
    "openai-images": {"prompt": "prompt", "num_images": "n", "width": "size", "height": "size"},
    "replicate": {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "num_inference_steps",
                  "guidance": "guidance_scale", "width": "width", "height": "height", "seed": "seed",
                  "num_images": "num_outputs"},
}
POLL_S = 1.0  # replicate: between two reads of a running prediction


@dataclass
class Remote:
    """What a provider call returned: images, their seeds (when the provider takes one), and the
    timings the manifest records."""

    images: list[Image.Image]
    seeds: list[int]
    timings: dict[str, Any] = field(default_factory=dict)


def check_params(provider: str, given: set[str]) -> None:
    """InvalidParams naming every param the job set that ``provider`` cannot honour."""
    unsupported = sorted(given - RUNNER_PARAMS - set(FIELDS[provider]))
    if unsupported:
        supported = ", ".join(sorted(set(FIELDS[provider]) | RUNNER_PARAMS))
        raise InvalidParams(f"{provider} does not support {', '.join(unsupported)}; it takes: {supported}")


class Client:
    """One job's calls to one provider, under one deadline."""

    def __init__(self, spec: RemoteSpec, settings: Any, *, cancelled: Callable[[], bool] = lambda: False) -> None:
        import httpx

        self.spec = spec
        self.endpoint = (settings.provider_endpoints.get(spec.provider) or DEFAULT_ENDPOINTS[spec.provider]).rstrip("/")
        token = settings.provider_tokens.get(spec.provider)
        # Sent to the provider's endpoint only, never to the hosts its outputs are served from.
        self.auth = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self.http = httpx.Client(timeout=settings.provider_timeout_s)
        self.deadline = time.monotonic() + settings.provider_deadline_s
        self.deadline_s = settings.provider_deadline_s
        self.cancelled = cancelled
        self.timings: dict[str, Any] = {"requests": 0, "request_s": 0.0, "loading_wait_s": 0.0,
                                        "rate_limited_wait_s": 0.0, "polling_s": 0.0}

    def close(self) -> None:
        self.http.close()

    # -- the HTTP exchange, with the retry rules --------------------------------------------

    def request(self, method: str, url: str, *, authorized: bool = True, **kwargs: Any) -> Any:
        """One answer that is not 503-loading nor 429: those are waited out (to the deadline)."""
        import httpx

        if authorized:
            kwargs["headers"] = {**kwargs.get("headers", {}), **self.auth}
        while True:
            if self.cancelled():
                raise JobCancelled("cancelled by the user")
            started = time.monotonic()
            try:
                answer = self.http.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                raise ProviderError(f"{self.spec.provider} did not answer within the request timeout "
                                    f"({type(exc).__name__})") from None
            except httpx.HTTPError as exc:
                raise ProviderError(f"{self.spec.provider} could not be reached: {type(exc).__name__}: {exc}") from None
            finally:
                self.timings["requests"] += 1
                self.timings["request_s"] += time.monotonic() - started
            if answer.status_code == 503 and self._loading(answer) is not None:
                self._wait(self._loading(answer), "loading_wait_s", "the model was still loading")
            elif answer.status_code == 429:
                self._wait(_retry_after(answer), "rate_limited_wait_s", "rate limited (429)")
            elif answer.status_code >= 400:
                raise ProviderError(f"{self.spec.provider} answered {answer.status_code}: {_message(answer)}")
            else:
                return answer

    def _loading(self, answer: Any) -> float | None:
        """Seconds to wait when a 503 says the model is loading (hf-inference's estimated_time)."""
        try:
            body = answer.json()
        except ValueError:
            return None
        if isinstance(body, dict) and "estimated_time" in body:
            return float(body["estimated_time"] or 1.0)
        return None

    def _wait(self, seconds: float, timing: str, why: str) -> None:
        left = self.deadline - time.monotonic()
        if seconds > left:
            raise ProviderError(f"{self.spec.provider}: {why}; waiting {seconds:.0f} s more would pass "
                                f"provider_deadline_s ({self.deadline_s:.0f} s)")
        log.info("%s %s: %s; retrying in %.1f s", self.spec.provider, self.spec.remote_model, why, seconds)
        end = time.monotonic() + seconds
        while (now := time.monotonic()) < end:
            if self.cancelled():
                raise JobCancelled("cancelled by the user")
            time.sleep(min(0.2, end - now))
        self.timings[timing] += seconds

    # -- the providers ----------------------------------------------------------------------

    def txt2img(self, params: Any, width: int, height: int) -> Remote:
        check_params(self.spec.provider, set(params.model_fields_set))
        started = time.monotonic()
        run = {"hf-inference": self._hf, "openai-images": self._openai, "replicate": self._replicate}
        remote = run[self.spec.provider](params, width, height)
        self.timings["total_s"] = time.monotonic() - started
        remote.timings = {**self.timings, **remote.timings}
        return remote

    def _seeds(self, params: Any) -> list[int]:
        first = params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1)
        return [(first + i) % (MAX_SEED + 1) for i in range(params.num_images)]

    def _hf(self, params: Any, width: int, height: int) -> Remote:
        seeds, images = self._seeds(params), []
        for seed in seeds:  # one image per request
            body = {"inputs": params.prompt, "parameters": {
                "negative_prompt": params.negative_prompt or None, "num_inference_steps": params.steps,
                "guidance_scale": params.guidance, "width": width, "height": height, "seed": seed}}
            body["parameters"] = {k: v for k, v in body["parameters"].items() if v is not None}
            answer = self.request("POST", f"{self.endpoint}/{self.spec.remote_model}", json=body,
                                  headers={"Accept": "image/png"})
            images.append(_image(answer.content, self.spec.provider))
        return Remote(images, seeds)

    def _openai(self, params: Any, width: int, height: int) -> Remote:
        body = {"model": self.spec.remote_model, "prompt": params.prompt, "n": params.num_images,
                "size": f"{width}x{height}", "response_format": "b64_json"}
        answer = self.request("POST", f"{self.endpoint}/images/generations", json=body)
        data = _json(answer, self.spec.provider).get("data") or []
        images = [_image(base64.b64decode(d.get("b64_json") or ""), self.spec.provider) for d in data]
        if len(images) != params.num_images:
            raise ProviderError(f"openai-images returned {len(images)} images for n={params.num_images}")
        return Remote(images, [])  # no seed: the provider does not take one

    def _replicate(self, params: Any, width: int, height: int) -> Remote:
        seeds = self._seeds(params)
        inputs = {"prompt": params.prompt, "width": width, "height": height, "num_outputs": params.num_images,
                  "num_inference_steps": params.steps, "guidance_scale": params.guidance, "seed": seeds[0]}
        if params.negative_prompt:
            inputs["negative_prompt"] = params.negative_prompt
        model, _, version = self.spec.remote_model.partition(":")
        if version:
            url, body = f"{self.endpoint}/predictions", {"version": version, "input": inputs}
        else:
            url, body = f"{self.endpoint}/models/{model}/predictions", {"input": inputs}
        prediction = _json(self.request("POST", url, json=body), self.spec.provider)
        while prediction.get("status") not in ("succeeded", "failed", "canceled"):
            self._wait(POLL_S, "polling_s", "the prediction is still running")
            get = (prediction.get("urls") or {}).get("get")
            if not get:
                raise ProviderError("replicate: the prediction has no urls.get to poll")
            prediction = _json(self.request("GET", get), self.spec.provider)
        if prediction["status"] != "succeeded":
            raise ProviderError(f"replicate: prediction {prediction.get('id')} {prediction['status']}: "
                                f"{prediction.get('error') or 'no error message'}")
        output = prediction.get("output")
        urls = output if isinstance(output, list) else [output]
        images = [_image(self.request("GET", u, authorized=False).content, self.spec.provider) for u in urls if u]
        metrics = prediction.get("metrics") or {}
        # A seeded sdxl run makes image k from seed + k (as the local recipes record them).
        return Remote(images, seeds[:len(images)], {"prediction_id": prediction.get("id"),
                                                    "predict_time_s": metrics.get("predict_time")})


def _retry_after(answer: Any) -> float:
    value = answer.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:  # an HTTP date: wait a second and ask again
        return 1.0


def _message(answer: Any) -> str:
    """The provider's own error message, from the shapes each documents."""
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:300] or answer.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # openai
            return str(error.get("message") or error)[:300]
        if error:  # hf-inference
            return str(error)[:300]
        if body.get("detail"):  # replicate (problem+json)
            return str(body["detail"])[:300]
    return str(body)[:300]


def _json(answer: Any, provider: str) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        raise ProviderError(f"{provider} answered something that is not JSON") from None
    if not isinstance(body, dict):
        raise ProviderError(f"{provider} answered JSON that is not an object")
    return body


def _image(data: bytes, provider: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # noqa: BLE001 - any undecodable answer is the provider's failure
        raise ProviderError(f"{provider} returned no image it could decode ({type(exc).__name__})") from None
    return image


def generate_remote(ctx: Any, params: Any, spec: RemoteSpec, *, recipe: str) -> Any:
    """``txt2img`` on ``spec``'s provider: one artifact per image, the manifest's model block
    naming the provider, the remote model and the remote timings."""
    from gpu_runner.recipes.base import Artifact, RecipeResult

    if ctx.settings is None:
        raise InvalidParams("remote models run inside a runner")
    width, height = params.width or spec.width, params.height or spec.height
    client = Client(spec, ctx.settings, cancelled=ctx.cancelled)
    ctx.progress(0, 1)
    try:
        remote = client.txt2img(params, width, height)
    finally:
        client.close()
    ctx.progress(1, 1)
    warnings = [] if remote.seeds else [f"{spec.provider} takes no seed: the images cannot be reproduced"]
    artifacts = [Artifact(name=f"{recipe}_{i}", image=img, meta={"seed": remote.seeds[i]} if remote.seeds else {})
                 for i, img in enumerate(remote.images)]
    model = {"id": spec.id, "provider": spec.provider, "remote_model": spec.remote_model,
             "timings": {k: round(v, 3) if isinstance(v, float) else v for k, v in remote.timings.items()}}
    return RecipeResult(artifacts=artifacts, model=model, seeds=remote.seeds, warnings=warnings,
                        details={"width": width, "height": height})


__all__ = ["DEFAULT_ENDPOINTS", "Client", "check_params", "generate_remote"]
