"""The persona system prompt on the server side: where it comes from and how it meets a request.

Source order (first found wins): ``--system``; the export dir's ``export_report.json``
(``persona``: a string, or an object with ``system``); the GGUF chat template's default system
prompt (``steam-train export`` embeds the persona there). A request without a system message gets
the persona; a client system message replaces it (``persona_mode=replace``, OpenAI semantics) or
follows it (``prepend``).
"""

from __future__ import annotations

from typing import Any

from steam_persona.serve.modelinfo import ModelInfo


def resolve_persona(system: str | None, info: ModelInfo) -> tuple[str | None, str]:
    """Return ``(persona text or None, where it came from)``."""
    if system:
        return system, "--system"
    report = info.export_report or {}
    persona = report.get("persona")
    if isinstance(persona, dict):
        persona = persona.get("system") or persona.get("text")
    if isinstance(persona, str) and persona.strip():
        return persona, "export_report.json"
    if info.template_system:
        return info.template_system, "GGUF chat template"
    return None, "none"


def apply_persona(messages: list[dict[str, Any]], persona: str | None, mode: str = "replace") -> list[dict[str, Any]]:
    """Put the persona into ``messages`` (already normalised: every content a string).

    * no system message → ``[{"role": "system", "content": persona}, *messages]``;
    * a system message first and ``mode == "prepend"`` → its content becomes
      ``persona + "\\n\\n" + content``;
    * otherwise the client's system message stands.
    """
    if not persona:
        return messages
    if messages and messages[0].get("role") == "system":
        if mode == "prepend":
            return [{**messages[0], "content": f"{persona}\n\n{messages[0]['content']}"}, *messages[1:]]
        return messages
    return [{"role": "system", "content": persona}, *messages]
