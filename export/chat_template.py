"""The persona inside the chat template, the end-of-turn token, and the Ollama template.

Why our own: no library rewrites a Jinja chat template's default system prompt. We do not edit the
upstream template's text (Qwen hard-codes "You are Qwen, created by Alibaba Cloud…", SmolLM2 "You
are a helpful AI assistant named SmolLM…", plain ChatML has none). Instead a small header is put in
front of it that, when the conversation has no system message, prepends one holding the persona.
Every template that honours a leading system message then renders the persona, whatever its own
default was. The header is Jinja2 (used by transformers, llama-cpp-python, LM Studio) and uses only
``if`` / ``set`` / list ``+`` so llama.cpp's own Jinja engine renders it too.
"""

from __future__ import annotations

import json

_BEGIN = "{#- steam-persona: default system prompt #}"
_END = "{#- steam-persona: end #}"


def jinja_string(text: str) -> str:
    """Quote ``text`` as a Jinja string literal (JSON escapes are also Jinja/Python escapes)."""
    return json.dumps(text, ensure_ascii=False)


def with_default_system(template: str, system: str | None) -> str:
    """Return ``template`` whose default system prompt is ``system``.

    A conversation that starts with a system message renders exactly as before; one without gets
    ``{"role": "system", "content": system}`` in front. Idempotent: an earlier header of ours is
    replaced, so exporting an exported model does not stack headers.

    Args:
        template: a Jinja2 chat template (``tokenizer.chat_template``).
        system: the persona; ``None`` or ``""`` removes our header and keeps the upstream default.

    Returns:
        The new template text.
    """
    body = strip_default_system(template)
    if not system:
        return body
    header = (
        _BEGIN
        + "{%- if not messages or messages[0]['role'] != 'system' %}"
        + "{%- set messages = [{'role': 'system', 'content': " + jinja_string(system) + "}] + messages %}"
        + "{%- endif %}"
        + _END
    )
    return header + body


def strip_default_system(template: str) -> str:
    """Remove a header written by :func:`with_default_system` (no-op when there is none)."""
    if template.startswith(_BEGIN) and _END in template:
        return template[template.index(_END) + len(_END):]
    return template


def end_of_turn_token(tokenizer) -> str:
    """The token that ends an assistant turn in ``tokenizer``'s chat template.

    Found by rendering a two-turn conversation and reading which special token follows the
    assistant's text (``<|im_end|>`` for ChatML/Qwen/SmolLM2, ``<|eot_id|>`` for Llama 3). Falls
    back to ``tokenizer.eos_token`` when the template puts no special token there.

    Raises:
        ValueError: the tokenizer has no chat template.
    """
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template")
    reply = "STEAM_PERSONA_REPLY"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}], tokenize=False)
    rest = text[text.rindex(reply) + len(reply):].lstrip(" ")
    specials = sorted({*tokenizer.all_special_tokens, *(str(t) for t in tokenizer.added_tokens_decoder.values())},
                      key=len, reverse=True)
    for tok in specials:
        if tok and rest.startswith(tok):
            return tok
    return tokenizer.eos_token


def is_chatml(template: str) -> bool:
    """True when the template speaks ChatML (``<|im_start|>role\\n…<|im_end|>``)."""
    return "<|im_start|>" in template and "<|im_end|>" in template


#: Ollama (Go text/template) version of ChatML, after Ollama's own qwen2.5 template: the system
#: prompt comes from ``.System`` (the Modelfile's SYSTEM, or the request's system message).
OLLAMA_CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""
