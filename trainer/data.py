"""SFT datasets: read alpaca / sharegpt / OpenAI-messages files into chat conversations.

Accepted input (LLaMA-Factory ``data/README.md`` formats):

* **alpaca** records ``{"instruction", "input", "output", "system", "history"}`` (column names can
  be remapped by a ``dataset_info.json`` entry's ``columns``: prompt / query / response / system /
  history). One record becomes ``[system?] + history turns + user(instruction + "\\n" + input) +
  assistant(output)``, as LLaMA-Factory's alpaca converter (``src/llamafactory/data/converter.py``)
  and :func:`steam_persona.common.persona.user_message` do.
* **sharegpt** records ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}``
  (tags remappable through ``tags``) and **OpenAI messages** ``{"messages": [{"role", "content"}]}``.

A registered dataset reads a record's ``system`` and ``history`` only when its ``columns`` map them,
as LLaMA-Factory's parser does (``DatasetAttr.system``/``history`` default to none); records that
carry such an unmapped key get one warning per file. A file passed directly (no registry entry) reads
them under their own names.

Files are a JSON array or JSON Lines (``.jsonl``, or a ``.json`` whose content is JSON Lines), UTF-8
with or without BOM (``--encoding`` for anything else).

Why our own reader and not ``datasets``: we need one-line errors that name the file, line/column or
record and the fix, the GBK hint, and no cache directory; the files are small (SFT sets).

Public API: :func:`resolve` (``--dataset`` → file + format), :func:`read_dataset` (all records and
every problem), :func:`load_conversations` (strict: raises on the first problem), and
:func:`load_messages` (OpenAI-style message lists with the persona system prompt, for eval/demo);
:func:`steam_persona.common.textfile.decode` (bytes → text with the ``--encoding`` hint, shared with prepare).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from steam_persona.common import registry
from steam_persona.common.registry import ALPACA_COLUMNS
from steam_persona.common.errors import UserError
from steam_persona.common.textfile import decode, json_msg, load_json
from steam_persona.common.persona import user_message

#: One conversation: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
Conversation = list[dict[str, str]]

#: The columns of a file passed directly, without a ``dataset_info.json`` entry.
FILE_COLUMNS = {"system": "system", "history": "history"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"}


@dataclass
class DatasetSpec:
    """Where a dataset lives and how to read it (a resolved ``--dataset``)."""

    path: Path
    formatting: str = "auto"  # alpaca | sharegpt | auto (decided per file from the first record)
    columns: dict[str, str] = field(default_factory=dict)  # the entry's, or FILE_COLUMNS for a direct file
    tags: dict[str, str] = field(default_factory=dict)
    name: str = ""
    arg: str = "--dataset"  # how the command took it, for messages (validate: the positional DATASET)


@dataclass
class ReadResult:
    """Every record of a file: ``conversations[i]`` is ``None`` when record ``i`` is unusable.

    ``problems`` holds one line per problem (``"<file>: record N: what; fix"``), in file order.
    """

    spec: DatasetSpec
    conversations: list[Conversation | None]
    problems: list[str]

    @property
    def usable(self) -> list[Conversation]:
        return [c for c in self.conversations if c is not None]


def resolve(dataset: str, dataset_dir: str | Path = "data", arg: str = "--dataset") -> DatasetSpec:
    """Resolve one ``--dataset`` value: a ``.json``/``.jsonl`` path, or a name in ``DIR/dataset_info.json``.

    A value ending in ``.json``/``.jsonl`` (or naming an existing file) is read directly, its format
    detected from the first record. Anything else is looked up in the registry. ``arg`` names the
    argument in error messages (``--dataset``; ``DATASET`` for validate's positional one).

    Raises:
        UserError: unknown name, missing registry, or an unsupported ``formatting``.
    """
    p = Path(dataset).expanduser()
    if p.suffix.lower() in (".json", ".jsonl") or p.is_file():
        return DatasetSpec(path=p, columns=dict(FILE_COLUMNS), name=p.stem, arg=arg)
    path, entry = registry.lookup(dataset_dir, dataset, arg)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise UserError(f"{Path(dataset_dir) / registry.REGISTRY_FILE}: dataset '{dataset}' has formatting "
                        f"'{formatting}'; use alpaca or sharegpt")
    return DatasetSpec(path=path, formatting=formatting, columns=dict(entry.get("columns") or {}),
                       tags=dict(entry.get("tags") or {}), name=dataset, arg=arg)


def require_file(spec: DatasetSpec) -> DatasetSpec:
    """``spec`` when its file exists.

    Raises:
        UserError: the file is missing.
    """
    if not spec.path.is_file():
        raise UserError(f"{spec.path}: dataset file not found; check {spec.arg} / --dataset_dir")
    return spec


def _decode(spec: DatasetSpec, encoding: str) -> str:
    path = require_file(spec).path
    return decode(path, path.read_bytes(), encoding)


def _parse(path: Path, text: str, arg: str) -> list[Any]:
    """Parse a JSON array or JSON Lines text into a list of records (raises with line and column)."""
    stripped = text.strip()
    if not stripped:
        raise UserError(f"{path}: the file is empty; add records or pick another {arg}")
    jsonl = path.suffix.lower() == ".jsonl" or not stripped.startswith("[")
    if not jsonl:
        try:
            data = load_json(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({json_msg(e)}); fix the syntax") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON array of records or JSON Lines; wrap the records in [ ]")
        return data
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(load_json(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {n}: invalid JSON at column {e.colno} ({json_msg(e)}); "
                            "fix or delete that line (JSON Lines: one object per line)") from None
    return records


#: review tables that ``steam-train prepare`` reads and training does not.
_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def _review_key(record: Any, prompt: str) -> str | None:
    """The key that makes ``record`` a raw review rather than an SFT record: a review-text column
    (:data:`steam_persona.reviews.columns.ALIASES`: ``review``, ``text``, ``评论`` …) or an appreviews page's
    ``reviews``, in a record without the ``prompt`` column; else ``None``."""
    from steam_persona.reviews.columns import field_of

    if not isinstance(record, dict) or prompt in record:
        return None
    if isinstance(record.get("reviews"), (list, dict)):
        return "reviews"
    return next((k for k in record if isinstance(k, str) and field_of(k) == "review"), None)


def _raw_reviews(path: Path, why: str) -> NoReturn:
    """Raise ``UserError``: ``path`` holds raw reviews (``why``), which ``prepare`` turns into an SFT set."""
    raise UserError(f"{path}: this looks like raw reviews ({why}), not an SFT set; run `steam-train prepare {path}` "
                    "first and train on the train.json it writes")


def _detect(record: Any, columns: dict[str, str]) -> str:
    if isinstance(record, dict) and ("messages" in record or "conversations" in record or "messages" in columns):
        return "sharegpt"
    return "alpaca"


def _str_field(rec: dict, key: str, where: str, required: bool) -> str | None:
    if key not in rec or rec[key] is None:
        if required:
            have = ", ".join(sorted(map(str, rec))) or "none"
            raise ValueError(f"{where}: missing column '{key}' (record has: {have}); rename the key or map it "
                             "in dataset_info.json 'columns'")
        return None
    v = rec[key]
    if not isinstance(v, str):
        raise ValueError(f"{where}: '{key}' must be a string, not {type(v).__name__} ({json.dumps(v, ensure_ascii=False)[:40]}); "
                         "quote the value")
    return v


def _alpaca(rec: Any, cols: dict[str, str], system: str | None, where: str) -> Conversation:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object with instruction/input/output, got {type(rec).__name__}; fix the record")
    c = {**ALPACA_COLUMNS, **cols}
    prompt = _str_field(rec, c["prompt"], where, required=True)
    query = _str_field(rec, c["query"], where, required=False) or ""
    response = _str_field(rec, c["response"], where, required=True)
    rec_system = _str_field(rec, c["system"], where, required=False) if "system" in c else None
    if not response.strip():
        raise ValueError(f"{where}: '{c['response']}' is empty; fill it or drop the record")
    if not (prompt.strip() or query.strip()):
        raise ValueError(f"{where}: '{c['prompt']}' and '{c['query']}' are both empty; fill one or drop the record")
    msgs: Conversation = []
    sys_text = rec_system if rec_system else system
    if sys_text:
        msgs.append({"role": "system", "content": sys_text})
    history = rec.get(c["history"]) if "history" in c else None
    if history:
        if not isinstance(history, list):
            raise ValueError(f"{where}: '{c['history']}' must be a list of [question, answer] pairs; fix the record")
        for k, pair in enumerate(history):
            if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                    or not all(isinstance(x, str) and x.strip() for x in pair)):
                raise ValueError(f"{where}: '{c['history']}'[{k}] must be a [question, answer] pair of non-empty strings; fix it")
            msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    msgs += [{"role": "user", "content": user_message(prompt, query)}, {"role": "assistant", "content": response}]
    return msgs


def _sharegpt(rec: Any, cols: dict[str, str], tags: dict[str, str], system: str | None, where: str) -> Conversation:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object with a messages list, got {type(rec).__name__}; fix the record")
    key = cols.get("messages") or ("messages" if "messages" in rec else "conversations")
    turns = rec.get(key)
    if not isinstance(turns, list) or not turns:
        have = ", ".join(sorted(map(str, rec))) or "none"
        raise ValueError(f"{where}: missing or empty '{key}' list (record has: {have}); fix the record or map "
                         "'messages' in dataset_info.json 'columns'")
    openai = isinstance(turns[0], dict) and "role" in turns[0] and not tags
    t = ({"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
          "system_tag": "system"} if openai else {**SHAREGPT_TAGS, **tags})
    roles = {t["user_tag"]: "user", t["assistant_tag"]: "assistant", t["system_tag"]: "system"}
    msgs: Conversation = []
    rec_system = _str_field(rec, cols["system"], where, required=False) if "system" in cols else None
    for k, turn in enumerate(turns):
        w = f"{where}: {key}[{k}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{w}: expected an object with '{t['role_tag']}' and '{t['content_tag']}'; fix it")
        role = roles.get(turn.get(t["role_tag"]))
        if role is None:
            raise ValueError(f"{w}: unknown role {turn.get(t['role_tag'])!r} (expected {', '.join(map(repr, roles))}); "
                             "fix it or set 'tags' in dataset_info.json")
        content = _str_field(turn, t["content_tag"], w, required=True)
        if role == "system":
            if k != 0:
                raise ValueError(f"{w}: a system turn may only come first; move or drop it")
            rec_system = content
            continue
        want = "user" if (len(msgs) % 2 == 0) else "assistant"
        if role != want:
            raise ValueError(f"{w}: expected a {want} turn (turns must alternate user/assistant); fix the order")
        if not content.strip():
            raise ValueError(f"{w}: empty {role} turn; fill it or drop the record")
        msgs.append({"role": role, "content": content})
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the conversation must end with an assistant turn; add the reply or drop the record")
    sys_text = rec_system if rec_system else system
    return ([{"role": "system", "content": sys_text}] if sys_text else []) + msgs


def _warn_unmapped(spec: DatasetSpec, fmt: str, records: list[Any]) -> None:
    """One warning per file naming the record keys ``system``/``history`` that ``spec.columns`` leaves
    unmapped (they are ignored)."""
    from steam_persona.common.console import console

    keys = ("system", "history") if fmt == "alpaca" else ("system",)
    unmapped = [k for k in keys if k not in spec.columns and k not in spec.columns.values()
                and any(isinstance(r, dict) and r.get(k) for r in records)]
    if unmapped:
        names = " and ".join(f"'{k}'" for k in unmapped)
        fix = ", ".join(f'"{k}": "{k}"' for k in unmapped)
        console.print(f"[yellow]warning: {spec.path}: records have {names}, which the 'columns' of '{spec.name}' in "
                      f"dataset_info.json do not map, so they are ignored (as LLaMA-Factory does); add {fix} to "
                      "its columns to use them[/yellow]", soft_wrap=True)


def record_where(spec: DatasetSpec, i: int) -> str:
    """How a problem line names record ``i`` (1-based) of ``spec``'s file: ``"FILE: line i"`` for JSON Lines, else
    ``"FILE: record i"``."""
    return f"{spec.path}: {'line' if spec.path.suffix.lower() == '.jsonl' else 'record'} {i}"


def read_dataset(spec: DatasetSpec, *, system: str | None = None, encoding: str = "utf-8") -> ReadResult:
    """Read every record of ``spec`` into conversations, collecting per-record problems.

    Args:
        spec: from :func:`resolve`.
        system: system prompt for records that carry none (the persona); ``None``/``""`` adds none.
        encoding: text encoding of the file (``utf-8`` also accepts a BOM).

    Returns:
        A :class:`ReadResult`; unusable records are ``None`` with a line in ``problems``.

    Raises:
        UserError: file-level problems (missing, undecodable, invalid JSON, not a list, empty).
    """
    if spec.path.suffix.lower() in _TABLE_SUFFIXES:
        _raw_reviews(spec.path, f"a {spec.path.suffix.lower()[1:].upper()} file")
    text = _decode(spec, encoding)
    records = _parse(spec.path, text, spec.arg)
    if not records:
        raise UserError(f"{spec.path}: no records; add records or pick another {spec.arg}")
    fmt = spec.formatting if spec.formatting != "auto" else _detect(records[0], spec.columns)
    prompt = {**ALPACA_COLUMNS, **spec.columns}["prompt"]
    if fmt == "alpaca" and (key := _review_key(records[0], prompt)):
        _raw_reviews(spec.path, f"a '{key}' field and no '{prompt}'")
    convs: list[Conversation | None] = []
    problems: list[str] = []
    for i, rec in enumerate(records, start=1):
        where = record_where(spec, i)
        try:
            conv = (_alpaca(rec, spec.columns, system, where) if fmt == "alpaca"
                    else _sharegpt(rec, spec.columns, spec.tags, system, where))
        except ValueError as e:
            convs.append(None)
            problems.append(str(e))
            continue
        convs.append(conv)
    _warn_unmapped(spec, fmt, records)
    return ReadResult(spec=spec, conversations=convs, problems=problems)


def load_conversations(datasets: str | list[str], dataset_dir: str | Path = "data", *, system: str | None = None,
                       encoding: str = "utf-8", max_samples: int | None = None) -> list[Conversation]:
    """Strictly load one or more datasets (``--dataset a,b``) into conversations.

    Raises:
        UserError: on the first problem (file or record); the message counts the others and points
            to ``steam-train validate`` for the full list.
    """
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    if not names:
        raise UserError("--dataset: none given; pass --dataset NAME (with --dataset_dir) or --dataset path/to/file.json")
    out: list[Conversation] = []
    for name in names:
        res = read_dataset(resolve(name, dataset_dir), system=system, encoding=encoding)
        if res.problems:
            more = len(res.problems) - 1
            tail = f" ({more} more problem{'s' if more > 1 else ''}: run `steam-train validate {name}`)" if more else ""
            raise UserError(res.problems[0] + tail)
        convs = res.usable
        out += convs[:max_samples] if max_samples else convs
    return out


def load_messages(dataset: str, dataset_dir: str | Path = "data", *, system: str | None = None,
                  encoding: str = "utf-8") -> list[Conversation]:
    """OpenAI-style message lists for every record of a dataset file or registered name.

    Each list is ``[system] + turns`` and ends with the reference assistant reply; drop the last
    message to get a prompt (``msgs[:-1]``) and keep ``msgs[-1]["content"]`` as the reference.
    ``system`` is chosen by :func:`steam_persona.common.persona.resolve` (``None``: the built-in
    persona; ``""``: none).

    Raises:
        UserError: as :func:`load_conversations`.
    """
    from steam_persona.common import persona

    return load_conversations(dataset, dataset_dir, system=persona.resolve(system), encoding=encoding)
