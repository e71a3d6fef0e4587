"""The persona and the review prompt format: the one definition every stage uses.

``prepare`` writes its records with :data:`INSTRUCTION_TEMPLATE` / :data:`INPUT_TEMPLATE`, ``train``
records :data:`DEFAULT_SYSTEM` in ``run_config.yaml``, ``export`` embeds it as the chat template's
default system prompt, ``serve`` applies it when a request has none, and the Dify review tool builds
its prompts with :func:`build_review_prompt` + :func:`user_message`.

This module must stay standard-library only: ``steam-train plugin package`` copies this file into
the review plugin (as ``persona.py``) so the plugin stays self-contained.

The prompt format reproduces the seed dataset (``../shared/data/steam_sft_sample.json``):
instruction ``请以资深玩家的身份，点评一下《NAME》这款游戏。``, input ``游戏类型标签：TAG, TAG``. An alpaca
record becomes one user turn ``instruction + "\\n" + input`` (LLaMA-Factory's alpaca converter,
``src/llamafactory/data/converter.py``), which :func:`user_message` reproduces.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: this module stays standard-library only at run time
    from steam_persona.common.run_record import RunRecord

#: Persona system prompt used in training, in the exported chat template and by the server.
DEFAULT_SYSTEM = (
    "你是“老G”，一位玩了二十年游戏的资深 Steam 玩家：说话风趣、带点毒舌，但评价公道、言之有物。"
    "点评游戏时直说优点和槽点，不说空话套话。"
    "You are Lao G, a witty veteran gamer who writes honest, funny Steam reviews."
)

#: Instruction / input templates per language. Fields: {name}, {tags}, {verdict}, {playtime_hours}.
INSTRUCTION_TEMPLATE = "请以资深玩家的身份，点评一下《{name}》这款游戏。"
INPUT_TEMPLATE = "游戏类型标签：{tags}"
INSTRUCTION_TEMPLATE_EN = "As a veteran gamer, review the game \"{name}\"."
INPUT_TEMPLATE_EN = "Genre tags: {tags}"

TAG_SEPARATOR = ", "
VERDICT_WORDS = {"zh": {True: "推荐", False: "不推荐"}, "en": {True: "Recommended", False: "Not recommended"}}
_LENGTH_HINTS = {
    "zh": {"short": "篇幅：简短，两三句话。", "medium": "篇幅：中等，一段话。", "long": "篇幅：详细，分几段写。"},
    "en": {"short": "Length: short, two or three sentences.", "medium": "Length: one paragraph.",
           "long": "Length: detailed, several paragraphs."},
}
_VERDICT_HINTS = {"zh": "结论：{verdict}", "en": "Verdict: {verdict}"}


def clean_game_name(name: str) -> str:
    """Strip doubled title brackets (``《《X》》``), ™/®/© marks and surrounding space from a game name."""
    name = re.sub(r"[™®©]", "", name or "")
    name = name.strip()
    while len(name) >= 2 and name[0] in "《「【[" and name[-1] in "》」】]":
        name = name[1:-1].strip()
    return re.sub(r"\s+", " ", name)


def build_review_prompt(
    game_name: str,
    tags: list[str] | str | None = None,
    verdict: bool | str | None = None,
    language: str = "zh",
    length: str | None = None,
    extra_instructions: str | None = None,
) -> tuple[str, str]:
    """Build ``(instruction, input)`` for one review, in the training data's format.

    Args:
        game_name: the game; cleaned with :func:`clean_game_name`.
        tags: genre tags, a list or a comma-separated string; ``None``/empty gives no input line.
        verdict: ``True``/``"recommend"`` or ``False``/``"not recommend"`` adds a verdict line;
            ``None``/``"auto"`` lets the model decide (the seed format has no verdict line).
        language: ``"zh"`` (the seed format) or ``"en"``.
        length: ``"short"``, ``"medium"``, ``"long"`` or ``None`` (no hint, as in training).
        extra_instructions: free text appended as a last line.

    Returns:
        ``(instruction, input)``; ``input`` may be ``""``.

    Raises:
        ValueError: empty game name, or an unknown language / length / verdict value.
    """
    if language not in ("zh", "en"):
        raise ValueError(f"language must be 'zh' or 'en', not {language!r}")
    name = clean_game_name(game_name)
    if not name:
        raise ValueError("game_name is empty")
    if isinstance(tags, str):
        tags = [t.strip() for t in re.split(r"[,，、;；]", tags) if t.strip()]
    instruction = (INSTRUCTION_TEMPLATE if language == "zh" else INSTRUCTION_TEMPLATE_EN).format(name=name)
    lines = []
    if tags:
        lines.append((INPUT_TEMPLATE if language == "zh" else INPUT_TEMPLATE_EN).format(tags=TAG_SEPARATOR.join(tags)))
    v = _parse_verdict(verdict)
    if v is not None:
        lines.append(_VERDICT_HINTS[language].format(verdict=VERDICT_WORDS[language][v]))
    if length:
        if length not in _LENGTH_HINTS[language]:
            raise ValueError(f"length must be short, medium or long, not {length!r}")
        lines.append(_LENGTH_HINTS[language][length])
    if extra_instructions and extra_instructions.strip():
        lines.append(extra_instructions.strip())
    return instruction, "\n".join(lines)


def _parse_verdict(verdict: bool | str | None) -> bool | None:
    if verdict is None or isinstance(verdict, bool):
        return verdict
    v = verdict.strip().lower().replace("_", " ")
    if v in ("", "auto"):
        return None
    if v in ("recommend", "recommended", "true", "yes", "推荐"):
        return True
    if v in ("not recommend", "not recommended", "false", "no", "不推荐"):
        return False
    raise ValueError(f"verdict must be recommend, not recommend or auto, not {verdict!r}")


def resolve(explicit: str | None, run: RunRecord | None = None, gguf: str | None = None,
            default: str | None = DEFAULT_SYSTEM) -> str | None:
    """The system prompt a stage uses for a tuned model; the first of these that is known wins:

    1. ``explicit``: the stage's ``--system`` (``""`` = no system prompt);
    2. ``gguf``: the persona an exported model carries (``export_report.json``'s ``persona``);
    3. ``run.system``: what the run trained with (its ``run_config.yaml``; ``""`` = it used none);
    4. ``default``: :data:`DEFAULT_SYSTEM`, or ``None`` for a stage that then leaves the model's
       chat template to its own default system prompt.

    "Known" means not ``None``. Returns the text (``""`` for none) or ``default``.
    """
    for choice in (explicit, gguf, run.system if run is not None else None):
        if choice is not None:
            return choice
    return default


def exported(report: dict | None) -> str | None:
    """The persona an export recorded: ``export_report.json``'s ``persona`` (a string, or an object
    with ``system`` or ``text``); ``None`` when the report has none or it is blank. This is the
    ``gguf`` argument of :func:`resolve` for a stage that runs an exported model."""
    found = (report or {}).get("persona")
    if isinstance(found, dict):
        found = found.get("system") or found.get("text")
    return found if isinstance(found, str) and found.strip() else None


def user_message(instruction: str, input_text: str = "") -> str:
    """Join an alpaca ``instruction`` and ``input`` into one user turn, as LLaMA-Factory's alpaca
    converter does: the non-empty ones joined by ``"\\n"`` (an empty instruction gives ``input``)."""
    return "\n".join(part for part in (instruction, input_text) if part)


def review_messages(system: str | None = DEFAULT_SYSTEM, **prompt: object) -> list[dict[str, str]]:
    """OpenAI-style messages for one review: optional system turn + the user turn.

    ``prompt`` is passed to :func:`build_review_prompt`. Used by the review tool and ``demo``.
    """
    instruction, input_text = build_review_prompt(**prompt)  # type: ignore[arg-type]
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user_message(instruction, input_text)})
    return msgs
