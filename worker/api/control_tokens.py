"""Caller text must stay text: the model's control tokens typed into a prompt are refused.

The prompt goes to vLLM as one string, and the tokenizer turns every exact occurrence of a special token
in it into that token, wherever it came from. Typed into a prompt, ``<|video_pad|>`` would add video
placeholders the frames do not match (vLLM's multimodal processing fails on the count) and
``<|im_end|><|im_start|>system`` would forge a turn of the conversation. Refusing names the token, so the
caller knows what to change; rewriting the text instead would change what the model reads without saying
so. The set is the tokenizer's own (every added token flagged special, the chat markers and each
family's media placeholders among them), so a new family needs no list here.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from worker.api.errors import ValidationError
from worker.api.schema import CaptionRequest


@lru_cache(maxsize=8)
def _pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """One regex of the tokenizer's special tokens, longest first (built once per tokenizer)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    tokens = {t.content for t in decoder.values() if t.special} | set(tokenizer.all_special_tokens)
    tokens.discard("")
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def refuse_control_tokens(request: CaptionRequest, tokenizer: Any) -> None:
    """Raise ``ValidationError`` naming each field of ``request`` whose text holds a control token."""
    pattern = _pattern(tokenizer)
    if pattern is None:
        return
    texts: list[tuple[str, str]] = []
    if request.prompt is not None:
        texts.append(("prompt", request.prompt))
    for i, message in enumerate(request.messages or ()):
        texts.append((f"messages[{i}].content", message.content))
    for name in ("videos", "images"):
        for i, entry in enumerate(getattr(request, name) or ()):
            if not isinstance(entry, str) and entry.prompt is not None:
                texts.append((f"{name}[{i}].prompt", entry.prompt))
    # The captions of a context job go into its prompt as they are: a caller could put anything there.
    for i, segment in enumerate(request.context_segments):
        texts.append((f"context[{i}].caption", segment.caption))
    problems = []
    for field, text in texts:
        found = list(dict.fromkeys(match.group() for match in pattern.finditer(text)))
        if found:
            problems.append(
                {
                    "field": field,
                    "message": f"contains the model's control token{'s' if len(found) > 1 else ''} "
                    f"{', '.join(found[:5])}{' ...' if len(found) > 5 else ''}; they cannot be sent as text",
                }
            )
    if problems:
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise ValidationError(f"invalid input: {summary}", details=problems)
