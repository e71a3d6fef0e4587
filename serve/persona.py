"""The persona system prompt on the server side: where it comes from and how it meets a request.

Source order: :func:`steam_persona.common.persona.resolve`'s, with the export dir's
``export_report.json`` (``persona``: a string, or an object with ``system``) as the exported
persona and the GGUF chat template's default system prompt (``steam-train export`` embeds the
persona there) as the fallback; ``--system ''`` serves no persona: a request without a system message
gets an empty one, so the template's default system prompt is dropped too. A request without a system
message gets the persona; a client system (or ``developer``) message, first or not, replaces it
(``persona_mode=replace``, OpenAI semantics) or follows it (``prepend``).
"""

from __future__ import annotations

from typing import Any

from steam_persona.serve.modelinfo import ModelInfo
from steam_persona.common import persona as persona_lib


def resolve_persona(system: str | None, info: ModelInfo) -> tuple[str | None, str]:
    """Return ``(persona, source)``. ``persona``: the text; ``""`` for none (``--system ''``: requests get an
    empty system message); ``None`` when nothing is known (the template's own default applies). ``source``:
    ``--system``, ``export_report.json``, ``GGUF chat template`` or ``none``."""
    exported = persona_lib.exported(info.export_report)
    chosen = persona_lib.resolve(system, gguf=exported, default=info.template_system)
    if system is not None:
        source = "--system"
    elif exported is not None:
        source = "export_report.json"
    else:
        source = "GGUF chat template" if chosen else "none"
    return chosen if system == "" else chosen or None, source


def apply_persona(messages: list[dict[str, Any]], persona: str | None, mode: str = "replace") -> list[dict[str, Any]]:
    """Put the persona into ``messages`` (already normalised: every content a string, ``developer``
    turned ``system``).

    * no system message → ``[{"role": "system", "content": persona}, *messages]`` (an empty one for
      ``persona == ""``: the chat template then adds no default system prompt either);
    * a system message first and ``mode == "prepend"`` → its content becomes
      ``persona + "\\n\\n" + content``; a later one → the persona's system message goes first;
    * a system message anywhere, ``mode == "replace"`` → it is the client's own: the messages stand,
      with an empty system message first when theirs is not (chat templates put their default system
      prompt, which ``steam-train export`` makes the persona, before a first message that is not one);
    * ``persona is None`` → the messages stand.
    """
    if persona is None:
        return messages
    first = next((i for i, m in enumerate(messages) if m.get("role") == "system"), None)
    if first is None:
        return [{"role": "system", "content": persona}, *messages]
    if first > 0:
        return [{"role": "system", "content": persona if mode == "prepend" else ""}, *messages]
    if mode == "prepend" and persona:
        return [{**messages[0], "content": f"{persona}\n\n{messages[0]['content']}"}, *messages[1:]]
    return messages
