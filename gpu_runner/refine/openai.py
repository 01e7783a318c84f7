"""The ``openai`` refiner: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
llama.cpp's server, Ollama, LM Studio, ...), configured by URL, model, key and timeout.

Standard library HTTP (urllib): no SDK. The model is asked for one JSON object; its answer is
validated (``ModelAnswer``): invalid JSON, a wrong field, an intent outside the vocabulary, an
HTTP error or a timeout falls back to the rules, with a warning.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gpu_runner.presets import PRESETS
from gpu_runner.refine.rules import RulesRefiner, build
from gpu_runner.refine.schema import INTENT_HELP, INTENTS, ModelAnswer, Refinement, RefinerName, context_problem

if TYPE_CHECKING:
    from bucketbrush.settings import Settings

SYSTEM = (
    "You turn requests to an image studio into JSON. Reply with one JSON object and nothing else:\n"
    '{"intent": ..., "prompt": ..., "negative_prompt": ..., "style": ..., "answer": ...}\n'
    "intent, one of:\n" + "\n".join(f"- {i}: {INTENT_HELP[i]}" for i in INTENTS) + "\n"
    "prompt: for generate, edit and sketch, an English description of the picture to make, in the style of "
    "a Stable Diffusion prompt (subject, details, lighting); for stylize, extra words for the style; else \"\".\n"
    "negative_prompt: what to avoid (for remove_object: the object to remove); may be \"\".\n"
    f"style: for stylize (and video), one of {', '.join(PRESETS)}; else null.\n"
    "answer: for chat, a short friendly reply; else null."
)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class RefineEndpointError(Exception):
    """The endpoint failed or answered something unusable."""


class OpenAIRefiner:
    name: RefinerName = "openai"

    def __init__(self, url: str | None, model: str = "gpt-4o-mini", key: str | None = None,
                 timeout_s: float = 20) -> None:
        self.url = url
        self.model = model
        self.key = key
        self.timeout_s = timeout_s
        self.rules = RulesRefiner()

    @classmethod
    def from_settings(cls, settings: Settings | None) -> OpenAIRefiner:
        if settings is None:
            return cls(None)
        key = settings.refine_openai_key.get_secret_value() if settings.refine_openai_key else None
        return cls(settings.refine_openai_url, settings.refine_openai_model, key, settings.refine_openai_timeout_s)

    def endpoint(self) -> str:
        if not self.url:
            raise RefineEndpointError("no endpoint configured (BUCKETBRUSH_REFINE_OPENAI_URL)")
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"

    def ask(self, text: str, has_image: bool) -> dict[str, Any]:
        """The model's answer as a JSON object (not yet validated)."""
        context = "The user has a picture (an upload or the previous result)." if has_image else \
            "The user has no picture yet."
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 400,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": f"{context}\nRequest: {text}"}],
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.endpoint(), data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        deadline = time.monotonic() + self.timeout_s
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read(1_000_001)
        except urllib.error.HTTPError as exc:
            raise RefineEndpointError(f"HTTP {exc.code} from the endpoint") from exc
        except TimeoutError as exc:
            raise RefineEndpointError(f"no answer within {self.timeout_s:g} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise RefineEndpointError(f"no answer within {self.timeout_s:g} s") from exc
            raise RefineEndpointError(f"endpoint unreachable: {exc.reason}") from exc
        if time.monotonic() > deadline:
            raise RefineEndpointError(f"no answer within {self.timeout_s:g} s")
        if len(raw) > 1_000_000:
            raise RefineEndpointError("the answer is over 1 MB")
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RefineEndpointError("not a chat-completions response") from exc
        if not isinstance(content, str):
            raise RefineEndpointError("the message has no text content")
        try:
            answer = json.loads(_FENCE.sub("", content.strip()))
        except ValueError as exc:
            raise RefineEndpointError(f"the model's answer is not JSON: {content[:80]!r}") from exc
        if not isinstance(answer, dict):
            raise RefineEndpointError("the model's answer is not a JSON object")
        return answer

    def refine(self, text: str, *, has_image: bool = False) -> Refinement:
        try:
            answer = ModelAnswer.model_validate(self.ask(text, has_image))
            if problem := context_problem(answer, has_image):
                raise RefineEndpointError(problem)
        except (RefineEndpointError, ValidationError) as exc:
            reason = str(exc) if isinstance(exc, RefineEndpointError) else _validation_summary(exc)
            fallback = self.rules.refine(text, has_image=has_image)
            fallback.warnings.insert(0, f"openai refiner: {reason}; used the rules")
            return fallback
        return build(answer.intent, text, has_image, refiner="openai", prompt=answer.prompt or None,
                     negative_prompt=answer.negative_prompt or None, style=answer.style, answer=answer.answer)


def _validation_summary(exc: ValidationError) -> str:
    e = exc.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "answer"
    return f"invalid answer ({where}: {e['msg']})"
