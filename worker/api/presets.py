"""Named tasks (``"task"`` of a job or a bulk manifest): a prompt and a JSON Schema by name, so a common output
shape needs no schema in every request. ``structured_caption`` is the JSONL pipeline's task of that name
(docs/seeds.md); ``describe`` is a plain caption, there for manifests written for that pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TaskName = Literal["describe", "structured_caption"]


@dataclass(frozen=True)
class TaskPreset:
    prompt: str | None  # used when the job gives neither prompt nor messages; None: the usual default
    json_schema: dict[str, Any] | None  # None: a free-text caption


STRUCTURED_CAPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string", "description": "what is shown, in one paragraph"},
        "scene": {"type": "string", "description": "the setting: place, time of day, surroundings"},
        "objects": {"type": "array", "items": {"type": "string"}, "description": "visible things, most salient first"},
        "actions": {"type": "array", "items": {"type": "string"}, "description": "what happens, in order"},
        "text_on_screen": {"type": "array", "items": {"type": "string"}, "description": "legible text, if any"},
    },
    "required": ["summary", "scene", "objects", "actions", "text_on_screen"],
    "additionalProperties": False,
}

TASKS: dict[str, TaskPreset] = {
    "describe": TaskPreset(prompt=None, json_schema=None),
    "structured_caption": TaskPreset(
        prompt=(
            "Describe what is shown as a JSON object with: summary (one paragraph), scene (the setting), "
            "objects (the visible things), actions (what happens, in order) and text_on_screen (legible text)."
        ),
        json_schema=STRUCTURED_CAPTION_SCHEMA,
    ),
}
