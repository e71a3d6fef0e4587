"""Request checks beyond the library's pydantic schema: every value that would reach llama.cpp (or
crash the library on the way) is checked here and refused with an OpenAI-shaped 400.

What the library 0.3.36 does with these unchecked (found by hostile clients): NaN, ±∞ and negative
``temperature`` go to the sampler; ``max_tokens`` ≤ 0 means "until the context is full";
``max_completion_tokens`` (what newer OpenAI clients and LangChain send) is ignored; ``n > 1``
silently gives one choice; non-integer ``logit_bias`` keys and out-of-range token ids raise (500)
or kill the process; a list ``prompt`` of several strings fails an ``assert``.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any

from steam_persona.common.arguments import SAMPLING_RANGES
from steam_persona.serve.errors import RequestError, invalid_type

#: Inclusive ranges of the sampling fields (OpenAI's where it has one, else llama.cpp's meaning;
#: ``top_k`` -1 is vLLM's "disabled", which llama.cpp spells 0); those chat and eval also take, declared once.
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": SAMPLING_RANGES["temperature"], "top_p": SAMPLING_RANGES["top_p"], "min_p": (0.0, 1.0),
    "top_k": SAMPLING_RANGES["top_k"], "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0),
    "repeat_penalty": SAMPLING_RANGES["repeat_penalty"],
    "mirostat_mode": (0, 2), "mirostat_tau": (0.0, 10.0), "mirostat_eta": (0.001, 1.0),
    "min_tokens": (0, 2**31 - 1), "top_logprobs": (0, 20), "typical_p": (0.0, 1.0),
}
#: Integer fields of the chat and completion requests (``logprobs`` too, on /v1/completions).
_INTEGERS = ("n", "best_of", "seed", "max_tokens", "max_completion_tokens", "top_k", "min_tokens", "top_logprobs",
             "mirostat_mode")
#: Number fields (integers or decimals).
_NUMBERS = (*(name for name in _RANGES if name not in _INTEGERS), "tfs_z")
#: Boolean fields (``logprobs`` too, on /v1/chat/completions; ``stream``: :func:`check_stream_options`).
_BOOLEANS = ("echo", "parallel_tool_calls")
#: A token id as a ``logit_bias`` key: ASCII digits only (``int()`` also takes " 5", "5_0" and "٥").
_TOKEN_ID = re.compile(r"-?[0-9]+")
#: OpenAI's default ``max_tokens`` for /v1/completions (chat has none: the server cap applies).
COMPLETION_DEFAULT = 16
#: Longest integer accepted in a request body (seeds beyond 64 bits are reduced; larger means nothing).
MAX_INT_DIGITS = 100
#: OpenAI: logit_bias values are in [-100, 100].
_BIAS = 100.0
#: Most ``stop`` strings a request may send. OpenAI takes 4; llama.cpp's server and vLLM take any
#: number, and clients (Dify's stop list, agent frameworks) send more than 4, so more are accepted,
#: up to a bound: the library looks for every stop string in the whole reply after each token
#: (10,000 of them made each token 1.4× slower, 2.1× streamed; docs/serving.md).
MAX_STOPS = 16
#: Longest ``stop`` string, in characters (a longer one costs time per token and hardly ever matches).
MAX_STOP_CHARS = 1024
#: Most root ``$ref`` hops a JSON schema may take to reach its root schema (see :func:`_inline_root_ref`).
_MAX_ROOT_REFS = 32


def parse_json(body: bytes, charset: str | None = None) -> dict[str, Any]:
    """Parse a request body as a JSON object (UTF-8, or UTF-16/32 told by its first bytes, as RFC 8259 reads it).

    Args:
        body: the request body.
        charset: the ``charset`` its ``Content-Type`` declares, named by the message when the body
            does not decode and that charset is none of UTF-8/16/32 (:func:`_charset_advice`).

    Raises:
        RequestError: 400 ``invalid_json`` for bad JSON, ``NaN``/``Infinity`` (not JSON, but
            Python's parser takes them), numbers that overflow to ±∞ (``1e999``), integers of more
            than :data:`MAX_INT_DIGITS` digits (Python's own limit, 4300, raises a bare ``ValueError``),
            nesting deeper than Python's parser allows, lone UTF-16 surrogates (``"\\ud800"``, which cannot be
            encoded for llama.cpp), or a non-object.
    """
    try:
        data = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_short_int)
    except RequestError:
        raise
    except UnicodeDecodeError as e:
        raise RequestError(f"The request body is not valid JSON ({e}); {_charset_advice(charset)}",
                           code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError
        raise RequestError(f"The request body is not valid JSON ({e}); send a JSON object", code="invalid_json") from None
    except RecursionError:
        raise RequestError("The request body is nested too deeply; send a flat JSON object", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object", code="invalid_json")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("The request holds a lone UTF-16 surrogate (e.g. \\ud800 without its pair); "
                           "send valid Unicode text", code="invalid_json") from None
    return data


def _charset_advice(charset: str | None) -> str:
    """What to do about a body that does not decode: send UTF-8, naming a declared charset the server does not read."""
    try:
        utf = charset is None or codecs.lookup(charset).name.startswith(("utf-8", "utf-16", "utf-32"))
    except LookupError:
        utf = False
    return "send a JSON object in UTF-8" if utf else f"send it in UTF-8 (charset={charset[:40]} is not supported)"


def _no_constant(name: str) -> Any:
    raise RequestError(f"{name} is not a JSON number; send a finite number", code="invalid_json")


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError(f"An integer in the request has more than {MAX_INT_DIGITS} digits; send a smaller one",
                           code="invalid_json")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(f"{text[:20]} overflows a 64-bit float; send a finite number", code="invalid_json")
    return value


def check_generation(data: dict[str, Any], *, chat: bool, n_vocab: int, max_tokens_cap: int) -> None:
    """Check and normalise the generation fields of a chat or completion request, in place.

    OpenAI's ``response_format`` ``json_schema`` becomes the library's ``json_object`` with a
    ``schema``; ``max_completion_tokens`` becomes ``max_tokens`` (the smaller wins when both are sent); the
    result is capped at ``max_tokens_cap`` (the server's limit; also the default when none is
    sent to /v1/chat/completions; /v1/completions keeps OpenAI's 16); ``seed`` is reduced modulo 2³² (llama.cpp's seed
    type); a function without ``parameters`` takes none; a JSON schema's root ``$ref`` is resolved.

    Raises:
        RequestError: 400 naming the field: ``invalid_type`` for a value of the wrong JSON type
            (:func:`_check_types`), ``top_logprobs`` without ``logprobs``, ``n``/``best_of`` < 1
            (``integer_below_min_value``) or > 1, output ``modalities`` other than text,
            logprobs (need ``logits_all``),
            no ``prompt`` (completions), a list ``prompt`` of more than one string, ``max_tokens`` ≤ 0, a sampling value out of
            range, a ``logit_bias`` key that is not a token id in ``[0, n_vocab)``, more than
            :data:`MAX_STOPS` ``stop`` strings or one over :data:`MAX_STOP_CHARS` characters, a
            ``response_format`` type other than ``text``, ``json_object``, ``json_schema``, a
            ``json_schema`` response format without a schema object, a schema whose root ``$ref``
            cannot be resolved, ``tools: []`` (``empty_array``) or a function name outside
            :data:`TOOL_NAME` (``invalid_value``).
    """
    _check_types(data, chat)
    for name in ("n", "best_of"):
        if data.get(name) is not None and data[name] < 1:
            raise RequestError(f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got "
                               f"{data[name]} instead.", param=name, code="integer_below_min_value")
        if data.get(name) not in (None, 1):
            raise RequestError(f"'{name}' must be 1: this server generates one choice per request; "
                               "send several requests instead", param=name, code="unsupported_parameter")
    if (data.get("logprobs") if chat else data.get("logprobs") is not None):
        # llama.cpp needs logits_all=True for them (n_ctx × n_vocab floats); it would fail mid-stream
        raise RequestError("logprobs are not served by this server (they need logits_all); drop 'logprobs'",
                           param="logprobs", code="unsupported_parameter")
    if chat and data.get("top_logprobs") and not data.get("logprobs"):  # OpenAI: 400 too
        raise RequestError("'top_logprobs' needs 'logprobs': true (and logprobs are not served here); drop "
                           "'top_logprobs'", param="top_logprobs", code="invalid_value")
    if chat:
        _check_modalities(data.get("modalities"))
        _json_schema_format(data)
        _check_tool_names(data)
        _default_parameters(data)
        _check_tool_choice(data)
        _check_openai_only(data)
    else:
        _check_prompt(data)
    data["max_tokens"] = _max_tokens(data, max_tokens_cap, default=max_tokens_cap if chat else COMPLETION_DEFAULT)
    _check_sampling(data)
    if isinstance(data.get("seed"), int):
        data["seed"] %= 2**32
    _drop_empty_stops(data)
    _check_stops(data.get("stop"))
    _check_logit_bias(data, n_vocab)


def _check_modalities(modalities: Any) -> None:
    """Refuse output ``modalities`` other than ``["text"]``: these GGUFs write text only.

    Raises:
        RequestError: 400 ``invalid_type`` for a value that is not an array of strings,
            ``unsupported_value`` naming ``modalities`` for any other modality (``"audio"``).
    """
    if modalities is None:
        return
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise invalid_type("modalities", "an array of strings", modalities)
    other = [m for m in modalities if m != "text"]
    if other:
        raise RequestError(f"'modalities' may hold 'text' only: this model writes text, not {other[0][:40]!r}; "
                           "send [\"text\"] or leave 'modalities' out", param="modalities", code="unsupported_value")


#: OpenAI's limits on ``metadata`` (API reference, "metadata": 16 pairs, keys up to 64 characters, values up to 512)
METADATA_LIMITS = (16, 64, 512)


def _check_openai_only(data: dict[str, Any]) -> None:
    """Refuse what api.openai.com refuses for a text chat model, which the library took silently: ``tool_choice``
    ``"auto"`` without ``tools``, ``audio`` output, ``web_search_options``, ``metadata`` beyond
    :data:`METADATA_LIMITS` (``"none"`` without tools stays accepted: it asks for what is done anyway).

    Raises:
        RequestError: 400 naming the field (``invalid_value``, ``unsupported_parameter``, ``invalid_type``).
    """
    if data.get("tool_choice") == "auto" and not data.get("tools") and data.get("functions") is None:
        raise RequestError("'tool_choice' is only allowed when 'tools' are specified; drop it or send 'tools'",
                           param="tool_choice", code="invalid_value")
    for name, what in (("audio", "writes text, not audio"), ("web_search_options", "searches nothing")):
        if data.get(name) is not None:
            raise RequestError(f"'{name}' is not served: this model {what}; drop '{name}'", param=name,
                               code="unsupported_parameter")
    metadata, (pairs, key_chars, value_chars) = data.get("metadata"), METADATA_LIMITS
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise invalid_type("metadata", "an object of strings", metadata)
    if len(metadata) > pairs or any(len(k) > key_chars or len(v) > value_chars for k, v in metadata.items()):
        raise RequestError(f"'metadata' holds up to {pairs} pairs, keys of up to {key_chars} characters and values "
                           f"of up to {value_chars}", param="metadata", code="invalid_value")


def _check_prompt(data: dict[str, Any]) -> None:
    """A /v1/completions ``prompt``: present, text, one of it (a list of one becomes its string).

    Raises:
        RequestError: 400 for a missing prompt, token ids, or a list of more than one prompt.
    """
    prompt = data.get("prompt")
    if prompt is None:  # the library's default is "", which is a prompt
        raise RequestError("Missing required parameter: 'prompt'", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, list):
        if any(isinstance(p, (int, list)) for p in prompt):  # OpenAI also takes token ids; the library does not
            raise RequestError("'prompt' must be text: token-id prompts are not accepted by this server; send the "
                               "text (POST /extras/detokenize turns ids into text)", param="prompt",
                               code="unsupported_parameter")
        if len(prompt) > 1:
            raise RequestError("'prompt' may be one string (or a list of one): this server completes one prompt "
                               "per request", param="prompt", code="unsupported_parameter")
        data["prompt"] = prompt[0] if prompt else ""


def _check_sampling(data: dict[str, Any]) -> None:
    """The sampling fields within `_RANGES`; ``top_k`` -1 becomes llama.cpp's 0 (disabled).

    Raises:
        RequestError: 400 ``invalid_value`` naming a field out of its range, or ``repeat_penalty`` 0.
    """
    for name, (low, high) in _RANGES.items():
        value = data.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not low <= value <= high:
            raise RequestError(f"'{name}' must be between {_number(low)} and {_number(high)}", param=name,
                               code="invalid_value")
    if data.get("top_k") == -1:
        data["top_k"] = 0
    if data.get("repeat_penalty") == 0:  # llama.cpp divides logits by it (llama-server refuses 0, the library gives ±inf)
        raise RequestError("'repeat_penalty' must be greater than 0 (1 = no penalty)", param="repeat_penalty",
                           code="invalid_value")


def _number(value: float) -> str:
    """A range bound as text: integers in full (``2147483647``, not ``2.14748e+09``)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _check_types(data: dict[str, Any], chat: bool) -> None:
    """Refuse a number or boolean field of another JSON type, as OpenAI does (400 ``invalid_type``):
    pydantic's lax mode read ``"0.5"`` and ``true`` as numbers and ``"false"`` as a true ``logprobs``.
    An integer field takes a whole decimal (``512.0``, ``1e3``) as that integer, as JSON Schema and the
    library's own request models do: clients that compute or configure counts send them.

    Raises:
        RequestError: 400 ``invalid_type`` naming the first such field.
    """
    integers, booleans = (*_INTEGERS, *(() if chat else ("logprobs",))), (*_BOOLEANS, *(("logprobs",) if chat else ()))
    for name in integers:
        if isinstance(data.get(name), float) and data[name].is_integer():
            data[name] = int(data[name])
    for names, kinds, expected in ((integers, int, "an integer"), (_NUMBERS, (int, float), "a number"),
                                   (booleans, bool, "a boolean")):
        for name in names:
            value = data.get(name)
            if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool)):
                raise invalid_type(name, expected, value)


def _drop_empty_stops(data: dict[str, Any]) -> None:
    """Empty ``stop`` strings are dropped: the library ends a generation at the first stop string the
    text contains, and ``""`` is in every text, so the reply came back empty (OpenAI, llama-server
    ignore it). A list whose every entry is empty becomes ``None``; non-strings are left to the schema."""
    stop = data.get("stop")
    if stop == "":
        data["stop"] = None
    elif isinstance(stop, list) and "" in stop:
        data["stop"] = [s for s in stop if s != ""] or None


def _check_stops(stop: Any) -> None:
    """Refuse more than :data:`MAX_STOPS` stop strings or one longer than :data:`MAX_STOP_CHARS`, in
    OpenAI's words and codes for an over-long array or string (other types are left to the schema)."""
    if isinstance(stop, list) and len(stop) > MAX_STOPS:
        raise RequestError(f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOPS}, but "
                           f"got an array with length {len(stop)} instead.", param="stop", code="array_above_max_length")
    for i, text in enumerate([stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []):
        if isinstance(text, str) and len(text) > MAX_STOP_CHARS:
            param = "stop" if isinstance(stop, str) else f"stop[{i}]"
            raise RequestError(f"Invalid '{param}': string too long. Expected a string with maximum length "
                               f"{MAX_STOP_CHARS}, but got a string with length {len(text)} instead.", param=param,
                               code="string_above_max_length")


def _json_schema_format(data: dict[str, Any]) -> None:
    """OpenAI's structured outputs, ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``
    (what the OpenAI SDK's ``parse`` and LangChain's ``with_structured_output`` send), as the
    library's ``{"type": "json_object", "schema": ...}`` (0.3.36 knows only that one). ``strict``
    needs nothing more: the schema's grammar allows nothing else. A schema's root ``$ref`` is
    resolved (:func:`_inline_root_ref`).

    Raises:
        RequestError: 400 for a ``type`` other than ``text``, ``json_object`` and ``json_schema`` (the
            library's own message named only the first two), a ``json_schema`` without a schema
            object, or a root ``$ref`` that cannot be resolved.
    """
    fmt = data.get("response_format")
    if not isinstance(fmt, dict):
        return  # the library's schema reports it
    if fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise RequestError("'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                           param="response_format.type", code="invalid_value")
    if fmt["type"] == "json_object" and "schema" in fmt:
        fmt["schema"] = _inline_root_ref(fmt["schema"], "response_format.schema")
    if fmt["type"] != "json_schema":
        return
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise RequestError("'response_format.json_schema' must be an object with a JSON schema object in 'schema'",
                           param="response_format.json_schema", code="invalid_value")
    data["response_format"] = {"type": "json_object"}
    if "schema" in spec:
        data["response_format"]["schema"] = _inline_root_ref(spec["schema"], "response_format.json_schema.schema")


def _inline_root_ref(schema: Any, param: str) -> Any:
    """``schema`` with a local root ``$ref`` replaced by what it points to (the other root keys, such
    as ``$defs``, kept for the references below the root).

    pydantic's ``model_json_schema()`` of a recursive model is ``{"$defs": {"Node": …}, "$ref":
    "#/$defs/Node"}``; the library's json-schema-to-grammar converter (0.3.36) resolves ``$ref`` below
    the root but fails on one at the root (``KeyError: '#/$defs/Node'``). Other values are returned as
    they are (the converter reports remote references).

    Raises:
        RequestError: 400 naming ``param`` when the root ``$ref`` points to nothing in the schema or
            the root references form a cycle.
    """
    for _ in range(_MAX_ROOT_REFS):
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        target = _json_pointer(schema, ref[2:])
        if not isinstance(target, dict):
            raise RequestError(f"The JSON schema in '{param}' cannot be used: its root $ref {ref!r} points to no "
                               "schema object in it; put the schema under that path (e.g. in '$defs')",
                               param=param, code="invalid_value")
        schema = {**{k: v for k, v in schema.items() if k != "$ref"}, **target}
    raise RequestError(f"The JSON schema in '{param}' cannot be used: its root $ref leads through more than "
                       f"{_MAX_ROOT_REFS} references (a cycle?)", param=param, code="invalid_value")


def _json_pointer(document: Any, pointer: str) -> Any:
    """The value at JSON Pointer ``pointer`` (RFC 6901, without its leading ``/``) in ``document``, or
    ``None`` when there is none."""
    node = document
    for part in pointer.split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


#: What OpenAI takes as a function name (tools and the legacy functions).
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _check_tool_names(data: dict[str, Any]) -> None:
    """Refuse ``tools: []`` and function names OpenAI refuses (they also went into tool-call ids and
    grammars); other shapes are left to the library's schema."""
    tools = data.get("tools")
    if tools == []:
        raise RequestError("Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty "
                           "array instead.", param="tools", code="empty_array")
    listed = [(f"tools[{i}].function.name", t.get("function")) for i, t in enumerate(tools or [])
              if isinstance(t, dict)] if isinstance(tools, list) else []
    functions = data.get("functions")
    listed += [(f"functions[{i}].name", f) for i, f in enumerate(functions)] if isinstance(functions, list) else []
    for param, fn in listed:
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and not TOOL_NAME.fullmatch(name):
            raise RequestError(f"Invalid '{param}': a function name must be 1 to 64 letters, digits, underscores "
                               f"or dashes (^[a-zA-Z0-9_-]{{1,64}}$), not {name[:80]!r}", param=param,
                               code="invalid_value")


def _default_parameters(data: dict[str, Any]) -> None:
    """Give each function of ``tools`` (and of the legacy ``functions``) without ``parameters`` an
    empty parameter list, ``{"type": "object", "properties": {}}`` (OpenAI, API reference, "tools":
    "Omitting parameters defines a function with an empty parameter list"; the library's request
    schema requires the field, and its forced call reads it), and resolve a root ``$ref`` of those
    that have them (:func:`_inline_root_ref`; the library fell back to any JSON for such a forced tool).
    Other shapes are left to the library's schema."""
    tools = data.get("tools") if isinstance(data.get("tools"), list) else []
    functions = data.get("functions") if isinstance(data.get("functions"), list) else []
    listed = [(f"tools[{i}].function", t.get("function")) for i, t in enumerate(tools) if isinstance(t, dict)]
    listed += [(f"functions[{i}]", f) for i, f in enumerate(functions)]
    for param, fn in listed:
        if not isinstance(fn, dict):
            continue
        if fn.get("parameters") is None:
            fn["parameters"] = {"type": "object", "properties": {}}
        fn["parameters"] = _inline_root_ref(fn["parameters"], f"{param}.parameters")


def _check_tool_choice(data: dict[str, Any]) -> None:
    """Refuse forcing a tool that is not there (OpenAI: 400; the library answered without a tool when
    ``tools`` was absent, or raised a bare ``ValueError`` when the name was missing from it).

    ``tool_choice: "required"`` with one tool becomes that tool named (the library constrains only a
    named choice and answered ``"required"`` with plain text); with several tools it is a 400
    ``unsupported_value``, since the library cannot force one of several."""
    # the library's order: legacy `functions`, when sent, replace `tools`
    tools = data["functions"] if data.get("functions") is not None else data.get("tools")
    for key in ("tool_choice", "function_call"):
        choice = data.get(key)
        if not (choice == "required" or isinstance(choice, dict)):
            continue
        if not isinstance(tools, list) or not tools:
            raise RequestError(f"'{key}' forces a tool call, but the request has no 'tools'", param=key,
                               code="invalid_value")
        name = _function(choice).get("name") if isinstance(choice, dict) else None
        if name is not None and name not in {_function(t).get("name") for t in tools if isinstance(t, dict)}:
            raise RequestError(f"'{key}' names a function that is not in 'tools'", param=key, code="invalid_value")
    if data.get("tool_choice") == "required" and data.get("functions") is None:
        data["tool_choice"] = _required_as_named(tools)


def _required_as_named(tools: list[Any]) -> dict[str, Any]:
    """``tool_choice: "required"`` as ``{"type": "function", "function": {"name": …}}`` of the only tool."""
    if len(tools) != 1 or not _function(tools[0]).get("name"):
        raise RequestError("tool_choice 'required' with several tools is not served: name the tool to call, "
                           "tool_choice={'type': 'function', 'function': {'name': ...}}", param="tool_choice",
                           code="unsupported_value")
    return {"type": "function", "function": {"name": _function(tools[0])["name"]}}


def _function(item: dict[str, Any]) -> dict[str, Any]:
    """The ``{"name", …}`` part of a tool or tool choice (``{"type": "function", "function": {…}}``) or
    of a legacy function / function_call (the object itself)."""
    inner = item.get("function", item)
    return inner if isinstance(inner, dict) else {}


def _max_tokens(data: dict[str, Any], cap: int, default: int) -> int:
    values = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = data.pop(name, None)
        if value is None:
            continue
        if value <= 0:
            raise RequestError(f"'{name}' must be at least 1", param=name, code="invalid_value")
        values.append(value)
    return min(min(values) if values else default, cap)


def _check_logit_bias(data: dict[str, Any], n_vocab: int) -> None:
    bias = data.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise RequestError("'logit_bias' must map token ids to numbers", param="logit_bias", code="invalid_value")
    by_text = data.get("logit_bias_type") == "tokens"
    for key, value in bias.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -_BIAS <= value <= _BIAS:
            raise RequestError(f"logit_bias values must be numbers between -{_BIAS:g} and {_BIAS:g}",
                               param="logit_bias", code="invalid_value")
        if by_text:
            continue
        if not _TOKEN_ID.fullmatch(key):
            raise RequestError("logit_bias keys must be token ids (decimal integers as strings)",
                               param="logit_bias", code="invalid_value")
        token = int(key)
        if not 0 <= token < n_vocab:
            raise RequestError(f"logit_bias key {token} is not a token id of this model (0 … {n_vocab - 1})",
                               param="logit_bias", code="invalid_value")


def check_stream_options(options: Any, stream: Any = False) -> bool:
    """Whether a stream wants a final ``usage`` chunk (OpenAI's ``stream_options.include_usage``).

    Args:
        options: the request's ``stream_options`` (``None``: not sent).
        stream: its ``stream``; OpenAI takes ``stream_options`` only with ``stream: true``.

    Raises:
        RequestError: 400 ``invalid_type`` when ``stream`` is not a boolean (pydantic would read the
            string ``"true"`` as true; OpenAI refuses it), ``invalid_value`` when ``stream_options`` comes
            without ``stream: true`` (OpenAI's words), is not an object, or its ``include_usage`` not a boolean.
    """
    if stream is not None and not isinstance(stream, bool):
        raise invalid_type("stream", "a boolean", stream)
    if options is None:
        return False
    if stream is not True:
        raise RequestError("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           param="stream_options", code="invalid_value")
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object such as {\"include_usage\": true}",
                           param="stream_options", code="invalid_value")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise RequestError("'stream_options.include_usage' must be true or false",
                           param="stream_options.include_usage", code="invalid_value")
    return include


def check_token_ids(tokens: Any, n_vocab: int) -> None:
    """Raise a 400 unless ``tokens`` is a list of ids in ``[0, n_vocab)`` (llama.cpp reads past its
    vocabulary otherwise and the process dies)."""
    if not isinstance(tokens, list):
        return  # the schema check reports it
    for i, t in enumerate(tokens):
        if isinstance(t, int) and not isinstance(t, bool) and not 0 <= t < n_vocab:
            raise RequestError(f"tokens[{i}] = {t} is not a token id of this model (0 … {n_vocab - 1})",
                               param=f"tokens[{i}]", code="invalid_value")
