"""What a commentary job (mode "commentary", LiveCC's protocol: docs/commentary.md) may ask. The protocol fixes
the sampling (2 fps, 6 then 2 frames a turn), so the options that would change it, or that its turns
cannot honour, are errors rather than silently ignored. Part of what worker/api/schema.py validates."""

from __future__ import annotations

from typing import Any

COMMENTARY = "commentary"
PROTOCOL_FPS = 2.0


def commentary_problems(request: Any) -> list[str]:
    """What is wrong with ``request`` (a CaptionRequest in mode "commentary"), in words."""
    given = request.model_fields_set
    problems = []
    if "fps" in given and request.fps != PROTOCOL_FPS:
        problems.append(f'mode "commentary" samples at {PROTOCOL_FPS:g} fps (LiveCC\'s protocol); leave fps out')
    if "max_frames" in given:
        problems.append('max_frames does not apply to mode "commentary" (its turns show 6 frames, then 2)')
    if request.messages is not None:
        problems.append('mode "commentary" takes its query as prompt, not messages')
    if request.json_schema is not None:
        problems.append('json_schema does not apply to mode "commentary" (its turns are free text)')
    if request.process_audio:
        problems.append('process_audio does not apply to mode "commentary" (LiveCC watches; it does not listen)')
    if request.combine is not None:
        problems.append('combine does not apply to mode "commentary" (every turn is returned)')
    for index, entry in enumerate(request.videos or ()):
        options = entry.options() if hasattr(entry, "options") else {}
        if options.get("mode", COMMENTARY) != COMMENTARY:
            continue  # the item runs in a mode of its own
        if options.get("fps", PROTOCOL_FPS) != PROTOCOL_FPS or "max_frames" in options:
            problems.append(f'videos[{index}]: fps and max_frames do not apply to mode "commentary"')
    return problems
