"""Message normalisation: make what Dify and the OpenAI SDK send safe for a Jinja chat template.

llama-cpp-python 0.3.36 passes ``content`` straight into the template, so a list of parts
(``[{"type": "text", "text": "…"}]``) or ``null`` crashes templates that concatenate strings
(HTTP 500). We join text parts (and the ``refusal`` parts OpenAI puts in assistant history) with
a newline (as vLLM does for text-only models), turn ``null`` into ``""``, and reject non-text parts
with a 400 that names the part, since these GGUFs are text-only.
"""

from __future__ import annotations

from typing import Any

from steam_persona.serve.errors import RequestError, invalid_type

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
#: The message keys chat templates read (OpenAI's and the library's); others are dropped, as OpenAI ignores them.
_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call")


def normalise_messages(messages: Any) -> list[dict[str, Any]]:
    """Return ``messages`` with every ``content`` a string, ``developer`` as ``system`` and only the keys
    templates read (:data:`_KEYS`; the library's pydantic model warns, into the server's output, about others).

    Args:
        messages: the request's ``messages`` value (a list of dicts, as OpenAI's schema).

    Raises:
        RequestError: 400 naming the message or part, with OpenAI's codes for these mistakes:
            ``invalid_type`` when ``messages`` is not a list or a message not an object,
            ``empty_array`` for ``[]`` (``messages`` or a ``content``), ``invalid_value`` for an unknown ``role``
            or a ``tool`` message that answers no assistant ``tool_calls`` or names an id none of them has
            (:func:`_check_tool_replies`),
            ``missing_required_parameter`` for a message without ``role``, one other than the assistant's without
            ``content`` (``null`` is accepted) or a ``tool`` message without ``tool_call_id``,
            ``invalid_type`` for a ``content`` that is neither a string, a list of parts nor null, or a
            ``name`` that is no string,
            ``invalid_value`` / ``unsupported_content_type`` for a part that is not text (image,
            audio and file parts are refused: this model reads text only), and, for an assistant's
            ``tool_calls`` (see :func:`_check_tool_calls`), ``invalid_type`` / ``missing_required_parameter``.
    """
    if not isinstance(messages, list):
        raise RequestError("'messages' must be a list of {role, content} objects", param="messages",
                           code="invalid_type")
    if not messages:
        raise RequestError("'messages' is an empty array; send at least one {role, content} object",
                           param="messages", code="empty_array")
    out = [_normalise(msg, f"messages[{i}]") for i, msg in enumerate(messages)]
    _check_tool_replies(out)
    return out


def _check_tool_replies(messages: list[dict[str, Any]]) -> None:
    """Refuse a ``tool`` message that does not follow an assistant's ``tool_calls`` (other tool messages between
    them allowed), or whose ``tool_call_id`` is none of those calls' ids (checked when every call has an id:
    clients that replay their own history may omit them), in OpenAI's words (the template rendered it as a reply
    to nothing)."""
    answering, ids = False, None
    for i, msg in enumerate(messages):
        if msg["role"] == "tool" and not answering:
            raise RequestError("Invalid parameter: messages with role 'tool' must be a response to a preceding "
                               "message with 'tool_calls'.", param=f"messages[{i}].role", code="invalid_value")
        if msg["role"] == "tool" and ids is not None and msg["tool_call_id"] not in ids:
            raise RequestError(f"Invalid parameter: 'tool_call_id' of '{msg['tool_call_id']}' not found in "
                               "'tool_calls' of previous message.", param=f"messages[{i}].tool_call_id",
                               code="invalid_value")
        if msg["role"] == "assistant":
            ids = _call_ids(msg.get("tool_calls") or [])
        answering = bool(msg.get("tool_calls")) if msg["role"] == "assistant" else answering and msg["role"] == "tool"


def _call_ids(calls: list[dict[str, Any]]) -> set[str] | None:
    """The ids of an assistant's ``tool_calls``, or ``None`` when a call has none."""
    ids = [call.get("id") for call in calls]
    return set(ids) if all(isinstance(i, str) for i in ids) else None


def _normalise(msg: Any, where: str) -> dict[str, Any]:
    """One message with its ``content`` a string (raises as :func:`normalise_messages`)."""
    if not isinstance(msg, dict):
        raise RequestError(f"{where} must be an object with 'role' and 'content'", param=where, code="invalid_type")
    role = msg.get("role")
    if role is None:
        raise RequestError(f"Missing required parameter: '{where}.role'.", param=f"{where}.role",
                           code="missing_required_parameter")
    if role not in _ROLES:
        raise RequestError(f"{where}.role must be one of {', '.join(_ROLES)}, not {role!r}", param=f"{where}.role",
                           code="invalid_value")
    for field, needed in (("content", role != "assistant"), ("tool_call_id", role == "tool")):
        if needed and field not in msg:
            raise RequestError(f"Missing required parameter: '{where}.{field}'", param=f"{where}.{field}",
                               code="missing_required_parameter")
    if role == "tool" and not isinstance(msg["tool_call_id"], str):
        raise invalid_type(f"{where}.tool_call_id", "a string", msg["tool_call_id"])
    if msg.get("name") is not None and not isinstance(msg["name"], str):
        raise invalid_type(f"{where}.name", "a string", msg["name"])
    if role == "assistant" and msg.get("tool_calls") is not None:
        _check_tool_calls(msg["tool_calls"], f"{where}.tool_calls")
    content = msg.get("content")
    if content is None:
        content = ""
    elif content == []:
        raise RequestError(f"Invalid '{where}.content': empty array. Expected an array with minimum length 1, "
                           "but got an empty array instead.", param=f"{where}.content", code="empty_array")
    elif isinstance(content, list):
        content = _join_parts(content, f"{where}.content")
    elif not isinstance(content, str):
        raise RequestError(f"{where}.content must be a string, a list of text parts or null, "
                           f"not {type(content).__name__}", param=f"{where}.content", code="invalid_type")
    if role == "developer":  # OpenAI's newer name for the system role; templates know "system"
        role = "system"
    return {**{k: v for k, v in msg.items() if k in _KEYS}, "role": role, "content": content}


def _check_tool_calls(calls: Any, where: str) -> None:
    """Refuse an assistant's ``tool_calls`` that a chat template would skip or render as garbage: OpenAI's
    schema (an array of ``{"id", "type", "function": {"name", "arguments"}}``) in its error codes.
    ``id``, ``type`` and ``arguments`` are not required: clients that replay their own history omit them.

    Raises:
        RequestError: 400 ``invalid_type`` naming ``where`` (not an array), ``where[j]`` (an item not
            an object), ``where[j].function`` (not an object) or ``where[j].function.name`` (not a
            string); ``missing_required_parameter`` naming ``where[j].function`` or ``…function.name``.
    """
    if not isinstance(calls, list):
        raise invalid_type(where, "an array of objects", calls)
    for j, call in enumerate(calls):
        if not isinstance(call, dict):
            raise invalid_type(f"{where}[{j}]", "an object", call)
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        for field, value, kind in (("function", function, dict), ("function.name", name, str)):
            param = f"{where}[{j}].{field}"
            if value is None:
                raise RequestError(f"Missing required parameter: '{param}'.", param=param,
                                   code="missing_required_parameter")
            if not isinstance(value, kind):
                raise invalid_type(param, "an object" if kind is dict else "a string", value)


def _join_parts(parts: list[Any], where: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        p = f"{where}[{j}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):  # OpenAI's assistant history parts
            texts.append(part["refusal"])
        elif kind in ("image_url", "image", "input_image", "input_audio", "audio", "file"):
            article = "an" if kind[0] in "aeiou" else "a"
            raise RequestError(f"{p} is {article} {kind} part, but this model reads text only; send text parts only",
                               param=p, code="unsupported_content_type")
        else:
            raise RequestError(f"{p} must be {{\"type\": \"text\", \"text\": \"...\"}}", param=p, code="invalid_value")
    return "\n".join(texts)
