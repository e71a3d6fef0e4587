"""The review tool's whole code path, without ``dify_plugin``: prompt (the training format) + HTTP.

``write_steam_review`` (the Dify tool) is a thin shell around :func:`write_review`; ``steam-train
demo`` calls :func:`write_review` in the packaged plugin's folder from the host Python (3.11)
(``steam_persona.plugin.call.PluginCode``) to produce the very same request.

Imports ``persona`` and ``server_client`` as top-level modules: ``steam-train plugin package``
copies ``common/persona.py`` (the one definition of the prompt format) and
``plugin/common/server_client.py`` to the package root. Tests: ``tests/`` beside this folder.
"""

from __future__ import annotations

import ast
import json
from typing import Any, Mapping

import persona
import server_client

#: ``max_tokens`` per requested length when the caller gives none ("auto": medium's; the persona writes ~1.5 tokens
#: per Chinese character; "long" leaves room for several paragraphs).
MAX_TOKENS_BY_LENGTH = {"short": 200, "medium": 500, "long": 1000}
#: The largest ``max_tokens`` the tool accepts (its YAML's ``max``).
MAX_TOKENS_LIMIT = 4096
VERDICTS = ("auto", "recommend", "not_recommend")
LANGUAGES = ("zh", "en")
LENGTHS = ("auto", *MAX_TOKENS_BY_LENGTH)


class ReviewError(ValueError):
    """A review could not be written; ``str(e)`` is one line for the Dify user (no traceback)."""


def _choice(name: str, value: Any, allowed: tuple[str, ...], default: str) -> str:
    v = str(value).strip().lower().replace(" ", "_") if value not in (None, "") else default
    if v and v not in allowed:
        raise ReviewError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return v


def prompt_args(game_name: Any, tags: Any = None, verdict: Any = "auto", language: Any = "zh",
                length: Any = None, extra_instructions: Any = None) -> dict[str, Any]:
    """The tool's parameters as keyword arguments of :func:`persona.review_messages` (which builds
    the very user turn the model was trained on).

    Args:
        verdict, language, length: the tool's option values, case and spaces forgiven; ``length``
            ``None`` or ``"auto"`` (the tool's default) adds no length line: the training format exactly.

    Raises:
        ReviewError: empty game name, an object as ``game_name`` or ``tags`` (:func:`_text`), or an
            unknown verdict / language / length.
    """
    game_name = _game(game_name)
    if not game_name.strip():
        raise ReviewError("game_name is required: give the game to review, e.g. 《黑神话：悟空》")
    length = _choice("length", length, LENGTHS, "auto")
    tags = _text("tags", _tag_list(tags), "动作, 类魂系列")
    if isinstance(tags, (list, tuple)):
        tags = [str(t).strip() for t in tags if t is not None and str(t).strip()]
    return {"game_name": str(game_name), "tags": tags if isinstance(tags, list) else (str(tags) if tags else None),
            "verdict": _choice("verdict", verdict, VERDICTS, "auto").replace("_", " "),
            "language": _choice("language", language, LANGUAGES, "zh"),
            "length": None if length == "auto" else length,
            "extra_instructions": str(extra_instructions or "") or None}


def _game(game_name: Any) -> str:
    """The game's name as text: a one-item list (an agent's call, or a Dify array variable rendered
    into text, ``'["Hades"]'``) is its item, not ``"['Hades']"``.

    Raises:
        ReviewError: a list of several names (one review is of one game).
    """
    value = _text("game_name", _tag_list(game_name), "《黑神话：悟空》")
    if not isinstance(value, (list, tuple)):
        return str(game_name if game_name is not None else "")
    names = [str(v).strip() for v in value if v is not None and str(v).strip()]
    if len(names) > 1:
        raise ReviewError(f"game_name must be one game, not a list of {len(names)} ({', '.join(names)[:100]});"
                          f" write one review per game")
    return names[0] if names else ""


def _text(name: str, value: Any, example: str) -> Any:
    """``value`` as it is, unless it (or an item of a list) is an object or a nested list: those are no
    names, and went into the prompt as Python wrote them (``《{'a': 1}》``).

    Raises:
        ReviewError: naming ``name``, with ``example`` of what to give.
    """
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, (dict, list, tuple, set)) for v in items):
        raise ReviewError(f"{name} must be text, not an object; give e.g. {example}")
    return value


def _tag_list(tags: Any) -> Any:
    """``tags`` as a list when it is a list rendered into text (``'["fps", "retro"]'`` as JSON, or
    ``"['fps', 'retro']"`` as Python writes it: what a Dify template gives for an array variable);
    anything else unchanged."""
    text = tags.strip() if isinstance(tags, str) else ""
    if not (text.startswith("[") and text.endswith("]")):
        return tags
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list):
            return value
    return tags


def write_review(credentials: Mapping[str, Any], game_name: Any, tags: Any = None, verdict: Any = "auto",
                 language: Any = "zh", length: Any = None, extra_instructions: Any = None,
                 max_tokens: Any = None, temperature: Any = None, seed: Any = None) -> dict:
    """Write one review with the persona model.

    Args:
        credentials: the tool provider's credentials: ``endpoint_url`` (API base, …/v1), ``api_key``
            (optional), ``model`` (optional id as the server calls it), ``persona_system_prompt``
            (``enabled`` sends :data:`persona.DEFAULT_SYSTEM`; default: the server's own).
        max_tokens: reply limit in tokens, 1 … :data:`MAX_TOKENS_LIMIT`; default by ``length``
            (:data:`MAX_TOKENS_BY_LENGTH`; ``auto`` takes ``medium``'s).
        temperature, seed: sampling settings passed through when given.

    Returns:
        ``{"game", "verdict", "review", "model", "usage"}`` — ``game`` cleaned (no 《》/™),
        ``verdict`` ``recommend``/``not_recommend``: the one asked for (the key is absent for ``auto``);
        ``usage`` the server's OpenAI usage object.
        The whole call is bounded by the ``request_timeout`` credential (:func:`server_client.request_timeout`).

    Raises:
        ReviewError: bad parameters, server down / rejected key / refused request (one line each).
    """
    system = persona.DEFAULT_SYSTEM if server_client.is_on(credentials.get("persona_system_prompt")) else None
    try:
        messages = persona.review_messages(system, **prompt_args(game_name, tags, verdict, language, length,
                                                                 extra_instructions))
    except ValueError as e:  # ReviewError included; persona's own checks (e.g. a name that is only 《》)
        raise ReviewError(str(e)) from None
    limit = _max_tokens(max_tokens, _choice("length", length, LENGTHS, "auto"))
    try:
        response = server_client.chat_completion(
            credentials.get("endpoint_url"), credentials.get("api_key"),
            messages, model=(credentials.get("model") or "").strip() or None, max_tokens=limit,
            temperature=float(temperature) if temperature not in (None, "") else None,
            seed=int(seed) if seed not in (None, "") else None,
            read_timeout=server_client.request_timeout(credentials))
    except server_client.ServerError as e:
        raise ReviewError(str(e)) from None
    review = server_client.completion_text(response)
    result = {"game": persona.clean_game_name(_game(game_name)), "verdict": _verdict_of(verdict),
              "review": review, "model": response.get("model") or credentials.get("model") or "",
              "usage": response.get("usage") or {}}
    if result["verdict"] is None:
        del result["verdict"]
    return result


def _max_tokens(max_tokens: Any, length: str) -> int:
    """The reply limit: ``max_tokens`` when given (1 … :data:`MAX_TOKENS_LIMIT`), else by ``length``.

    Raises:
        ReviewError: not a whole number (:func:`server_client.whole_number`, as the chat
            credentials read them: ``1.5``, ``"0.9"``, ``"1e1"`` are refused), or out of range.
    """
    if max_tokens in (None, ""):
        return MAX_TOKENS_BY_LENGTH.get(length, MAX_TOKENS_BY_LENGTH["medium"])
    limit = server_client.whole_number(max_tokens)
    if limit is None:
        raise ReviewError(f"max_tokens must be a whole number of tokens, not {max_tokens!r}")
    if not 1 <= limit <= MAX_TOKENS_LIMIT:
        raise ReviewError(f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, not {limit}")
    return limit


def _verdict_of(asked: Any) -> str | None:
    """The verdict for the JSON result: the one asked for; ``None`` with ``auto`` (a guess from the
    review's words could state the opposite of what it says, e.g. "推荐指数：1/10，千万别买")."""
    v = _choice("verdict", asked, VERDICTS, "auto")
    return None if v == "auto" else v


def check_credentials(credentials: Mapping[str, Any]) -> list[str]:
    """Ping ``GET /v1/models`` with the provider credentials; return the served model ids.

    Raises:
        ReviewError: unreachable server (with the Docker hint for localhost URLs), rejected or
            unsendable key, or a ``request_timeout`` that is not a whole number of seconds >= 1.
    """
    try:
        server_client.request_timeout(credentials)
        return server_client.list_models(credentials.get("endpoint_url"),
                                         credentials.get("api_key"))
    except server_client.ServerError as e:
        raise ReviewError(str(e)) from None
