"""Tools in ``tool_choice`` "auto" mode: refused where the chat template hides them, parsed from
the text where the template asks for Hermes ``<tool_call>`` blocks.

llama-cpp-python 0.3.36 constrains only a *named* tool choice (a grammar for its ``parameters``);
with ``tool_choice`` "auto" (or absent) it renders ``tools`` through the chat template and returns
the generated text as ``content``. Two consequences this module handles:

* A template that renders no tools (SmolLM2's) never shows them to the model, which then can never
  choose one: :func:`check_auto_tools` answers such a request with a 400, as Ollama answers
  "model does not support tools". Named and ``required`` choices keep working: their grammar
  forces the call.
* A template in the Hermes format (Qwen2.5's: it tells the model to answer
  ``<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>``) gets
  its calls back as text; :func:`parse_tool_calls` and :class:`ToolCallStream` turn each block into
  an OpenAI ``tool_calls`` entry (API reference, "Chat Completions": ``message.tool_calls`` and the
  streamed ``delta.tool_calls``, whose first delta per ``index`` carries ``id``, ``type`` and
  ``function.name``, later ones only ``function.arguments``).
* Calls sent back in the history carry ``arguments`` as a JSON string, which templates would quote
  once more: :func:`arguments_as_objects` gives them the object.

Why our own parser: llama-cpp-python has none for Hermes blocks in "auto" mode, and the parsers
that exist live inside other servers (vLLM's ``hermes_tool_parser``, llama.cpp's C++ chat parser,
Ollama's Go template parser), not in a library we could call. The format is small: a block is the
text between ``<tool_call>`` and ``</tool_call>``, holding one JSON object with a string ``name``
and an object ``arguments``; anything else stays content.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from typing import Any, Iterator

from steam_persona.serve.errors import RequestError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)
#: The tool rendered to learn whether a template shows tools (its name is looked for in the prompt).
_PROBE_NAME = "steam_persona_probe_tool"
_PROBE = {"name": _PROBE_NAME, "description": "Probe.", "parameters": {"type": "object", "properties": {}}}


@functools.lru_cache(maxsize=16)
def shows_tools(formatter: Any, key: str = "tools") -> bool:
    """Does ``formatter`` (a ``Jinja2ChatFormatter``) put tools sent as ``key`` ("tools" or the
    legacy "functions") into the prompt? One user turn is rendered with a probe tool and its name
    looked for; cached per formatter (one per loaded model). A template that fails on tools shows none."""
    probe = [{"type": "function", "function": _PROBE}] if key == "tools" else [_PROBE]
    try:
        prompt = formatter(messages=[{"role": "user", "content": "hi"}], **{key: probe}).prompt
    except Exception:  # noqa: BLE001 -- jinja2 errors and the template's raise_exception
        return False
    return _PROBE_NAME in prompt


def _auto_tools(request: dict[str, Any]) -> str | None:
    """``"tools"`` or ``"functions"``: the non-empty list a chat request lets the model choose from
    itself (``tool_choice`` / ``function_call`` absent or "auto"); ``None`` otherwise. The library's
    order: ``functions`` replace ``tools``, ``function_call`` overrides ``tool_choice``."""
    key = "functions" if request.get("functions") else "tools"
    choice = request.get("function_call") if request.get("function_call") is not None else request.get("tool_choice")
    listed = request.get(key)
    if not isinstance(listed, list) or not listed or choice not in (None, "auto"):
        return None
    return key


def check_auto_tools(request: dict[str, Any], formatter: Any) -> None:
    """Refuse tools in "auto" mode when the chat template shows the model none.

    Args:
        request: the chat request's fields (``tools``, ``tool_choice``, ``functions``, ``function_call``).
        formatter: the served model's ``Jinja2ChatFormatter``.

    Raises:
        RequestError: 400 ``tools_unsupported`` naming ``tools`` (or ``functions``).
    """
    key = _auto_tools(request)
    if key is None or shows_tools(formatter, key):
        return
    raise RequestError(f"This model does not support tools: its chat template shows no '{key}' to the model, so "
                       "with tool_choice 'auto' it can never call one. With --engine llama-cpp-python, force a call "
                       "(tool_choice {'type': 'function', 'function': {'name': ...}} or 'required': the arguments are "
                       "grammar-constrained); else send "
                       "tool_choice 'none', or serve a model whose template renders tools (Qwen2.5)",
                       param=key, code="tools_unsupported")


def parses_calls(request: dict[str, Any], template: str) -> bool:
    """Should this chat request's text be read for Hermes ``<tool_call>`` blocks? (tools in "auto"
    mode and a template that asks for them)."""
    return _auto_tools(request) is not None and OPEN in template


def arguments_as_objects(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each assistant ``tool_calls[].function.arguments`` that is a JSON object
    sent as a string (OpenAI's form, which clients send back in the history) given as that object.

    Chat templates follow transformers' convention (its chat-templating docs: ``arguments`` is a
    dict) and render it with ``| tojson``: a string came out JSON-quoted, so the model saw its own
    call as ``"arguments": "{\\"game\\": …}"``, unlike what it wrote. Other values are left as
    they are; the list and the changed messages are new objects (the request's stay as sent).
    """
    return [_with_object_arguments(m) if m.get("role") == "assistant" and isinstance(m.get("tool_calls"), list)
            else m for m in messages]


def _with_object_arguments(message: dict[str, Any]) -> dict[str, Any]:
    calls = []
    for call in message["tool_calls"]:
        function = call.get("function") if isinstance(call, dict) else None
        args = function.get("arguments") if isinstance(function, dict) else None
        try:
            parsed = json.loads(args) if isinstance(args, str) else None
        except ValueError:
            parsed = None
        calls.append({**call, "function": {**function, "arguments": parsed}} if isinstance(parsed, dict) else call)
    return {**message, "tool_calls": calls}


def tool_call_id() -> str:
    """A new tool call id as OpenAI writes them: ``call_`` and 24 random characters."""
    return "call_" + uuid.uuid4().hex[:24]


def _call(block: str, index: int) -> dict[str, Any] | None:
    """The OpenAI tool call in a block's text, or ``None`` when it is not ``{"name": str, "arguments": object}``."""
    try:
        obj = json.loads(block)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", {})
    if not isinstance(args, (dict, str)):
        return None
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"index": index, "id": tool_call_id(), "type": "function",
            "function": {"name": obj["name"], "arguments": arguments}}


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Split generated text into ``(content, tool_calls)``.

    Each ``<tool_call>{json}</tool_call>`` block whose JSON is ``{"name": str, "arguments": object}``
    becomes ``{"id": "call_…", "type": "function", "function": {"name", "arguments": JSON string}}``;
    other blocks, and an unclosed one, stay in the content. With calls, the content is the text
    outside them less the whitespace that ends it or precedes a call (as :class:`ToolCallStream`
    streams it), ``None`` when nothing is left; without calls it is ``text`` unchanged.
    """
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    pos = 0
    for match in _BLOCK.finditer(text):
        call = _call(match.group(1), len(calls))
        if call is None:
            continue
        kept.append(text[pos:match.start()].rstrip())
        pos = match.end()
        del call["index"]
        calls.append(call)
    if not calls:
        return text, []
    content = "".join(kept + [text[pos:]]).rstrip()
    return content or None, calls


def _held_back(text: str) -> int:
    """Length of the longest end of ``text`` that could begin :data:`OPEN` (held until the next piece)."""
    for n in range(min(len(text), len(OPEN) - 1), 0, -1):
        if OPEN.startswith(text[-n:]):
            return n
    return 0


class ToolCallStream:
    """Streamed text in, OpenAI deltas out: text passes through until ``<tool_call>`` starts, a block
    is held to its ``</tool_call>`` and then given as two deltas (``id``/``type``/``name`` with empty
    ``arguments``, then the ``arguments``), or as content when it is not a valid call.

    Whitespace that ends the text so far is held until more text follows: before a call it is
    dropped (the newlines around blocks are not content), as at the end after calls; otherwise it
    is given, so text without valid calls comes out unchanged. The content equals
    :func:`parse_tool_calls`'s.
    """

    def __init__(self) -> None:
        self.pending = ""  # text not given yet (in a block: the block's text after <tool_call>)
        self.gap = ""  # whitespace held before the open block
        self.in_call = False
        self.calls = 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas for the next piece of generated text (possibly none yet)."""
        self.pending += text
        out: list[dict[str, Any]] = []
        while True:
            if self.in_call:
                end = self.pending.find(CLOSE)
                if end < 0:
                    return out
                out += self._block(self.pending[:end])
                self.pending, self.in_call = self.pending[end + len(CLOSE):], False
                continue
            start = self.pending.find(OPEN)
            before = self.pending[:len(self.pending) - _held_back(self.pending)] if start < 0 else self.pending[:start]
            body = before.rstrip()
            if body:
                out.append({"content": body})
            if start < 0:
                self.pending = self.pending[len(body):]
                return out
            self.gap, self.pending, self.in_call = before[len(body):], self.pending[start + len(OPEN):], True

    def _block(self, block: str) -> list[dict[str, Any]]:
        call = _call(block, self.calls)
        gap, self.gap = self.gap, ""
        if call is None:
            return [{"content": gap + OPEN + block + CLOSE}]
        self.calls += 1
        function = call.pop("function")
        return [{"tool_calls": [{**call, "function": {"name": function["name"], "arguments": ""}}]},
                {"tool_calls": [{"index": call["index"], "function": {"arguments": function["arguments"]}}]}]

    def finish(self) -> list[dict[str, Any]]:
        """Deltas for what is still held when generation ends (an unclosed block is content)."""
        rest = self.gap + OPEN + self.pending if self.in_call else self.pending
        self.pending, self.gap, self.in_call = "", "", False
        return [{"content": rest}] if rest and (rest.strip() or not self.calls) else []


def with_tool_calls(result: Any, stream: bool) -> Any:
    """A chat completion (or its chunks, when ``stream``) from the library, with Hermes blocks in its
    text as ``tool_calls`` and ``finish_reason`` "tool_calls" when it stopped after calls (a
    "length" stays: the text was cut)."""
    return _stream_calls(result) if stream else _message_calls(result)


def _message_calls(result: dict[str, Any]) -> dict[str, Any]:
    choice = result["choices"][0]
    content, calls = parse_tool_calls(choice["message"].get("content") or "")
    if calls:
        choice["message"].update(content=content, tool_calls=calls)
        if choice.get("finish_reason") == "stop":
            choice["finish_reason"] = "tool_calls"
    return result


def _stream_calls(chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    convert = ToolCallChunks()
    for chunk in chunks:
        yield from convert(chunk)


class ToolCallChunks:
    """A chat stream's chunks, one at a time, with Hermes blocks in their ``content`` deltas as
    ``tool_calls`` deltas (:class:`ToolCallStream`): a chunk becomes none, one or several; the
    last (with its ``finish_reason``) says "tool_calls" instead of "stop" after calls. Chunks
    without choices (``usage``) and without content pass unchanged."""

    def __init__(self) -> None:
        self.parser = ToolCallStream()

    def __call__(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if not chunk.get("choices"):
            return [chunk]
        choice = chunk["choices"][0]
        text, finish = choice["delta"].get("content"), choice.get("finish_reason")
        if text is None and finish is None:
            return [chunk]
        deltas = self.parser.feed(text or "") + (self.parser.finish() if finish is not None else [])
        out = [{**chunk, "choices": [{**choice, "delta": delta, "finish_reason": None}]} for delta in deltas]
        if finish is not None:
            finish = "tool_calls" if self.parser.calls and finish == "stop" else finish
            out.append({**chunk, "choices": [{**choice, "delta": {}, "finish_reason": finish}]})
        return out
