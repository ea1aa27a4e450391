"""A commentary's conversation kept as token ids, as LiveCC keeps ``past_ids``: each turn's text is tokenized
on its own and appended to the ids of everything before it, the model's answers as the ids it generated,
never decoded and tokenized again. vLLM gets the whole conversation each turn (one placeholder per clip,
which it expands) and its prefix cache recognises all but the new turn. When MAX_MODEL_LEN is full, a new
context window starts, seeded with the last turns' commentary (their labels and answer ids, no frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.api.errors import UnsupportedInputError
from worker.media.turn_plan import TurnPlan, turn_fits
from worker.models.adapters.base import ModelAdapter

# A new context window carries at most this many of the last turns, in at most this share of the context.
SEED_TURNS = 8
SEED_SHARE = 0.25


@dataclass(frozen=True)
class Clip:
    """A turn's clip as every later request of its window re-sends it."""

    item: Any  # the vLLM video item (frames, metadata)
    uuid: str  # its identity in vLLM's caches (processor cache, prefix-cache block hashes)
    tokens: int  # prompt tokens vLLM expands its placeholder to


@dataclass(frozen=True)
class Said:
    """What a turn leaves behind for a new window's seed: its label and the answer ids it kept."""

    label: str
    answer_ids: list[int]


@dataclass(frozen=True)
class TurnPrompt:
    """One turn's request: the conversation so far and the new turn, as vLLM takes it."""

    inputs: dict[str, Any]  # a vLLM TokensPrompt with every clip of the window
    ids: list[int]  # prompt ids, one placeholder per clip
    expanded: int  # prompt tokens once vLLM has expanded the placeholders
    clip: Clip
    label: str
    query_sent: str | None  # the query this turn carries (None: unchanged since the last)
    window: int
    reset: str | None = None  # the warning, when this turn opened a new context window


@dataclass
class Conversation:
    """The ids of one commentary's current context window and the clips it holds."""

    adapter: ModelAdapter
    tokenizer: Any
    max_model_len: int
    max_tokens: int  # each answer's room
    max_clips: int  # clips one prompt may hold (the engine's limit)
    salt: str  # makes the clips' ids unique to this run
    window: int = 0
    _ids: list[int] = field(default_factory=list)
    _expanded: int = 0
    _clips: list[Clip] = field(default_factory=list)
    _said: list[Said] = field(default_factory=list)
    _query: str | None = None  # the query last sent in this window

    def encode(self, text: str) -> list[int]:
        """``text`` as the model reads it: its own ids, no special tokens added (as the seed's processor)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _turn(self, label: str, video: bool, query: str | None, first: bool) -> list[int]:
        return self.encode(self.adapter.commentary_turn(self.tokenizer, label, video, query, first))

    def prompt(
        self, turn: TurnPlan, item: Any, clip_tokens: int, query: str, mm_kwargs: dict[str, Any]
    ) -> TurnPrompt:
        """The request for ``turn``: the window's conversation, then the turn's label, clip and, when it
        changed (or the window is new), the query. Opens a new window when the turn would not fit.
        ``mm_kwargs``: the processor arguments, the same for every clip."""
        clip = Clip(item, f"{self.salt}-{turn.index}", clip_tokens)
        sent = query if query != self._query else None
        ids = self._turn(turn.label, True, sent, not self._ids)
        need = len(ids) - 1 + clip_tokens
        reset = None
        full = len(self._clips) >= self.max_clips
        if not self._ids or full or not turn_fits(self._expanded, need, self.max_tokens, self.max_model_len):
            if self._ids:
                reset = self._new_window(turn, clip_tokens, query, full)
                sent = query
                ids = self._turn(turn.label, True, query, not self._ids)
                need = len(ids) - 1 + clip_tokens
            if not turn_fits(self._expanded, need, self.max_tokens, self.max_model_len):
                raise UnsupportedInputError(
                    f"one commentary turn ({turn.label}: {need} prompt tokens) and max_tokens={self.max_tokens} "
                    f"do not fit MAX_MODEL_LEN={self.max_model_len}; lower VIDEO_MAX_PIXELS or raise MAX_MODEL_LEN"
                )
        clips = [*self._clips, clip]
        prompt_ids = self._ids + ids
        inputs = {
            "prompt_token_ids": prompt_ids,
            "multi_modal_data": {"video": [c.item for c in clips]},
            "multi_modal_uuids": {"video": [c.uuid for c in clips]},
            "mm_processor_kwargs": dict(mm_kwargs),
        }
        return TurnPrompt(inputs, prompt_ids, self._expanded + need, clip, turn.label, sent, self.window, reset)

    def commit(self, prompt: TurnPrompt, generated: Sequence[int]) -> None:
        """The turn's answer joins the conversation as the seed's ``past_ids``: every generated id but the
        last (the end-of-turn token; the next turn's text closes the answer again)."""
        kept = list(generated[:-1])
        self._ids = prompt.ids + kept
        self._expanded = prompt.expanded + len(kept)
        self._clips.append(prompt.clip)
        self._said.append(Said(prompt.label, kept))
        if prompt.query_sent is not None:
            self._query = prompt.query_sent

    def restart(self, turn: TurnPlan, clip_tokens: int, query: str, reason: str) -> str:
        """A new window before ``turn`` whatever the room left (a turn's request failed); its warning."""
        return self._new_window(turn, clip_tokens, query, False, reason)

    def _new_window(self, turn: TurnPlan, clip_tokens: int, query: str, full: bool, reason: str = "") -> str:
        """Start the next window: the last turns' labels and answers (as many as fit the seed's share), with
        no frames, then ``turn`` opens with the query again. Returns the warning that says so."""
        old = self.window
        candidates = self._said[-SEED_TURNS:]
        ids: list[int] = []
        for count in range(len(candidates), -1, -1):
            ids = []
            for j, said in enumerate(candidates[len(candidates) - count :]):
                ids += self._turn(said.label, False, None, j == 0) + said.answer_ids
            need = len(self._turn(turn.label, True, query, not ids)) - 1 + clip_tokens
            if len(ids) <= self.max_model_len * SEED_SHARE and turn_fits(
                len(ids), need, self.max_tokens, self.max_model_len
            ):
                break
        seeded = count if ids else 0
        self._ids, self._expanded, self._clips, self._query = ids, len(ids), [], None
        self.window += 1
        why = reason or (
            f"the window holds {self.max_clips} clips at most"
            if full
            else f"the conversation filled MAX_MODEL_LEN={self.max_model_len}"
        )
        return (
            f"turn {turn.index} ({turn.label}): {why}; context window {old + 1} started, seeded with the last "
            f"{seeded} turns' commentary (their words, not their frames)"
        )
