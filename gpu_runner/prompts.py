"""Prompt text to pipeline arguments: compel weighting when installed, and the length policy.

Over-long prompts are **truncated with a warning**, not failed: CLIP text encoders read 77
tokens (75 after the start/end markers) and everything after that has no effect. A job that
fails for a long prompt is worse for an app than an image plus a warning in the manifest
saying how many tokens were used and dropped, which is what happens here.

Weighting syntax (``(word)1.3``, ``word++``, ``[word]``, ``.blend()``, ``.and()``) is applied
through compel when it is installed; without compel the text goes to the pipeline as is
(the syntax characters are then read as ordinary text). Prompts without any weighting syntax
skip compel (the pipeline's own encoder gives the same embeddings, faster).
``details.prompt_weighting`` says which path ran: ``compel`` or ``none``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Compel's syntax: parentheses/brackets, trailing +/- runs ("word++", "(a b)-"), and the
# .and()/.blend()/.swap() operators. A hyphen inside a word ("well-lit") is not syntax.
_WEIGHTING = re.compile(r"[()\[\]]|[+-]+(?=[\s,.;]|$)|\.(?:and|blend|swap)\(")


def uses_weighting(text: str) -> bool:
    return bool(_WEIGHTING.search(text))


@dataclass
class EncodedPrompt:
    """Keyword arguments for the pipeline call, and what happened on the way."""

    kwargs: dict[str, Any]
    weighting: str
    warnings: list[str] = field(default_factory=list)


def compel_available() -> bool:
    try:
        import compel  # noqa: F401
    except ImportError:
        return False
    return True


def _length_warnings(tokenizer: Any, prompt: str, label: str) -> list[str]:
    limit = tokenizer.model_max_length
    count = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
    if count <= limit:
        return []
    return [f"the {label} is {count - 2} tokens; the text encoder reads {limit - 2}, "
            f"the rest was ignored (truncated)"]


def encode_prompt(pipe: Any, family: str, prompt: str, negative: str) -> EncodedPrompt:
    """Arguments that carry ``prompt``/``negative`` into ``pipe`` (embeddings with compel)."""
    warnings = _length_warnings(pipe.tokenizer, prompt, "prompt")
    warnings += _length_warnings(pipe.tokenizer, negative, "negative prompt")
    if not (uses_weighting(prompt) or uses_weighting(negative)) or not compel_available():
        return EncodedPrompt({"prompt": prompt, "negative_prompt": negative}, "none", warnings)
    import torch

    with torch.no_grad():
        kwargs = _compel_sdxl(pipe, prompt, negative) if family == "sdxl" else _compel_sd(pipe, prompt, negative)
    return EncodedPrompt(kwargs, "compel", warnings)


def _compel_sd(pipe: Any, prompt: str, negative: str) -> dict[str, Any]:
    from compel import Compel

    compel = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate_long_prompts=True)
    return {"prompt_embeds": compel(prompt), "negative_prompt_embeds": compel(negative)}


def _compel_sdxl(pipe: Any, prompt: str, negative: str) -> dict[str, Any]:
    import torch
    from compel import Compel, ReturnedEmbeddingsType

    kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    first = Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                   returned_embeddings_type=kind, truncate_long_prompts=True)
    second = Compel(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2,
                    returned_embeddings_type=kind, truncate_long_prompts=True, requires_pooled=True)

    def both(text: str) -> tuple[Any, Any]:
        embeds_2, pooled = second(text)
        # Truncated to 77 tokens each, so the two encoders' outputs line up token for token.
        return torch.cat([first(text), embeds_2], dim=-1), pooled

    embeds, pooled = both(prompt)
    negative_embeds, negative_pooled = both(negative)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
            "negative_prompt_embeds": negative_embeds, "negative_pooled_prompt_embeds": negative_pooled}
