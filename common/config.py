"""Stage configs: one dataclass per stage whose fields are the CLI flags and the YAML keys.

Why our own glue and not ``HfArgumentParser``: the CLI is click (one tool for every stage, lazy
sub-commands, clean exit-2 errors), and HfArgumentParser is argparse-only. The glue is small: a
field declares its default, help text (with units) and optional choices, and :func:`command`
turns the dataclass into a click command where

* every field is a ``--field_name`` flag (LLaMA-Factory spelling, underscores kept);
* booleans accept both ``--fp16`` and ``--fp16 True`` (LLaMA-Factory / HfArgumentParser style);
* a YAML file (positional ``CONFIG_FILE`` or ``--config``) gives the same keys; flags override it; a YAML
  value is read as its flag's text would be (``0``/``1`` for a bool; a list or mapping only for a list key,
  or a mapping for a ``pairs`` key);
* precedence is: dataclass default < YAML < environment variable (if declared) < flag.

Example::

    @dataclass
    class TrainConfig:
        model_name_or_path: str = arg("smollm2", "HF hub id, local folder or .gguf file.")
        cutoff_len: int = arg(1024, "Max tokens per sample (prompt + reply).")

    command = config.command(TrainConfig, run, name="train", help="...")
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import click
import yaml

from steam_persona.common.errors import UserError, started
from steam_persona.resources import packaged_copy_hint

def arg(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    envvar: str | None = None,
    positional: bool = False,
    flags: tuple[str, ...] = (),
    secret: bool = False,
    check: Callable[[Any], Any] | None = None,
    unset: str | None = None,
    text: bool = False,
    pairs: bool = False,
) -> Any:
    """Declare one config field (= one CLI flag = one YAML key).

    Args:
        default: the default value; lists are copied per instance. Omit for a required field.
        help: help text shown by ``--help``; state units (tokens, seconds, GiB) where they apply.
        choices: allowed string values (a ``click.Choice``, any case: ``JSONL`` is ``jsonl``).
        envvar: an environment variable that overrides YAML (flags still win).
        positional: the field is a positional argument instead of a flag (lists take ``nargs=-1``).
        flags: for a positional field, flags that give it too (other tools' spelling: ``("--model", "-m")``);
            the positional and a flag with different values is an error.
        secret: never echo the value (API keys): hidden in saved configs and in logs.
        check: validates a given value (YAML, environment or flag) and returns it, normalised;
            raises ``ValueError`` with the fix, which :func:`build` reports as one line naming the
            source, the flag and the value.
        unset: what an unset value means, for a field that a stage may leave ``None`` (taken from
            the run or the model); ``--help`` shows "Unset: ..." only where the default is ``None``.
        text: read the value as text (a flag's word, a YAML value of any type) and let ``check`` turn it into
            the field's type: a bool that also takes other tools' words (``--flash_attn fa2``); a bool field
            still works as a bare flag (``--flash_attn``).
        pairs: a text of ``KEY=VALUE,…`` pairs, which a YAML file may also give as a mapping (``{review: 评论}``).
    """
    meta = {"help": help, "choices": choices, "envvar": envvar, "positional": positional, "flags": flags,
            "secret": secret,
            "check": check, "unset": unset, "text": text, "pairs": pairs}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=default: list(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_KEEP = object()


class Arguments:
    """Base of a settings group (``steam_persona.common.arguments``): a dataclass of :func:`arg`
    fields that several stages share, as LLaMA-Factory's ``ModelArguments`` / ``DataArguments``.

    A stage's config takes a group's field with :meth:`use`, keeping its own field order (= the
    order of its ``--help``); the field's help text, choices and ``check`` stay the group's.
    """

    @classmethod
    def use(cls, name: str, default: Any = _KEEP, *, note: str | None = None, unset: str | None = None) -> Any:
        """The group's field ``name`` for a stage config, with the stage's own ``default`` if given.

        ``note`` adds a sentence about what this stage does with the value to the group's help text;
        ``unset`` replaces the group's account of what an unset value means here (stages resolve a
        ``None`` from different sources). Name, type, base help and check stay the group's.

        Example: ``cutoff_len: int = DataArguments.use("cutoff_len", 384)``.

        Raises:
            KeyError: the group has no such field (a programming error).
        """
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        if default is _KEEP:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        meta = {**f.metadata, "group": cls.__name__}
        if note:
            meta["help"] = f"{meta['help']} {note}"
        if unset:
            meta["unset"] = unset
        if isinstance(default, list):
            return dataclasses.field(default_factory=lambda d=default: list(d), metadata=meta)
        return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, is_optional) for ``X | None`` / ``Optional[X]`` annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0], True
    return tp, False


def _click_type(f: dataclasses.Field, tp: Any) -> tuple[click.ParamType, bool]:
    """Map a field annotation to (click type, is_list)."""
    base, _ = _base_type(tp)
    is_list = typing.get_origin(base) in (list, tuple)
    if is_list:
        base = typing.get_args(base)[0]
    if f.metadata.get("choices"):
        return click.Choice(list(f.metadata["choices"]), case_sensitive=False), is_list
    if f.metadata.get("text"):
        return click.STRING, is_list
    if typing.get_origin(base) is Literal:
        return click.Choice([str(a) for a in typing.get_args(base)], case_sensitive=False), is_list
    mapping = {bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}
    return mapping.get(base, click.STRING), is_list


def _fields(cls: type) -> list[dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out.append(f)
    return out


def _convert(f: dataclasses.Field, value: Any, where: str) -> Any:
    """Coerce one YAML / env value with the field's click type; raise UserError naming ``where``."""
    ctype, is_list = _click_type(f, f.type)
    _, optional = _base_type(f.type)
    if value is None:
        if optional:
            return None
        raise UserError(f"{where}: '{f.name}' must not be empty")
    try:
        if is_list:
            if isinstance(value, dict):
                raise UserError(f"{where}: '{f.name}' must be a list or one value, not a mapping")
            # one value of a list key (``appid: 570`` in YAML is an int) is a list of one
            items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) \
                else [value]
            for v in items:
                _one_value(f, ctype, v, where, "each item of ")
            return [_typed(ctype, v.strip() if isinstance(v, str) else v) for v in items]
        if f.metadata.get("pairs") and isinstance(value, dict):
            return ",".join(f"{k}={v}" for k, v in value.items())
        _one_value(f, ctype, value, where)
        if ctype is click.STRING and not isinstance(value, str):
            return str(value)
        return _typed(ctype, value)
    except click.BadParameter as e:
        raise UserError(f"{where}: '{f.name}': {e.message}") from None
    except (TypeError, ValueError):
        raise UserError(f"{where}: '{f.name}': '{value}' is not a valid {ctype.name}.") from None


def _one_value(f: dataclasses.Field, ctype: click.ParamType, value: Any, where: str, part: str = "") -> None:
    """Refuse a YAML list or mapping where ``f`` takes one value (a text key would get its Python repr).

    Raises:
        UserError: ``value`` is a list or a mapping.
    """
    if isinstance(value, (list, tuple, set, dict)):
        kind = "text" if isinstance(ctype, click.Choice) else ctype.name
        shape = "mapping" if isinstance(value, dict) else "list"
        raise UserError(f"{where}: {part}'{f.name}' must be one {kind} value, not a {shape}")


def _typed(ctype: click.ParamType, value: Any) -> Any:
    """``value`` converted by ``ctype`` as a flag's text would be: a YAML ``true`` is not a number and a
    fraction is not an integer (click's own convert would cast them to ``1.0`` and ``2``); ``2.0`` is 2.

    Raises:
        click.BadParameter: the value is not of the field's type.
    """
    number = ctype in (click.INT, click.FLOAT)
    if number and isinstance(value, bool):
        ctype.fail(f"'{str(value).lower()}' is not a valid {ctype.name}.")
    if number and not isinstance(value, (int, float, str)):
        ctype.fail(f"'{value}' is not a valid {ctype.name}.")
    if ctype is click.BOOL and not _bool_like(value):
        ctype.fail(f"'{value}' is not a valid {ctype.name}; give true or false.")
    if ctype is click.BOOL and type(value) is int:
        return bool(value)
    if ctype is click.INT and isinstance(value, float) and not value.is_integer():
        ctype.fail(f"'{value}' is not a valid {ctype.name}.")
    return ctype.convert(value, None, None)


def _bool_like(value: Any) -> bool:
    """Whether ``value`` may stand for a bool: a bool, text (click's words: true/false, yes/no, on/off, 1/0) or
    the number 0 or 1. LLaMA-Factory's ``HfArgumentParser.parse_dict`` passes a YAML value on unconverted, so any
    truthy number turns a bool on there; this is stricter: 2 or 1.0 is refused as a likely typo."""
    return isinstance(value, (bool, str)) or (type(value) is int and value in (0, 1))


def _check(f: dataclasses.Field, value: Any, source: str) -> Any:
    """Run the field's ``check`` (see :func:`arg`) on a given value; raise UserError naming ``source``."""
    check = f.metadata.get("check")
    if check is None:
        return value
    try:
        return check(value)
    except ValueError as e:
        raise UserError(f"{source}: --{f.name} {value}: {e}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict.

    Raises:
        UserError: the file is missing, is not valid YAML, or is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found; check the path{packaged_copy_hint(p)}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise UserError(f"{p}:{where} invalid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8; save the config as UTF-8") from None
    except RecursionError:
        raise UserError(f"{p}: invalid YAML (lists or mappings nested too deep for the parser); "
                        "a config holds flag names and plain values") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: the config must be a mapping of flag names to values")
    return data


#: How alike (difflib's ratio) an unknown name and a known one must be for "did you mean" to name it: 0.75
#: keeps typos (lora_rnak → lora_rank, num_epochs → num_train_epochs) and drops far guesses (deepspeed →
#: seed, double_quantization → quantization_bit).
CLOSE_NAME = 0.75
#: How alike two words must be to count as one word mistyped (trian → train, rat → rate, but not save → eval).
CLOSE_WORD = 0.6


def close_name(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name`` when it is close (:data:`CLOSE_NAME`) and a typo of it
    (:func:`_one_word_apart`), else ``None``: ``save_strategy`` is not a typo of ``eval_strategy``, another setting."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=CLOSE_NAME)
    return next((c for c in close if _one_word_apart(name, c)), None)


def _one_word_apart(a: str, b: str) -> bool:
    """Whether names ``a`` and ``b`` (words joined by ``_`` or ``-``) differ by at most one word left out, added or
    mistyped (:data:`CLOSE_WORD`), or only in their separators (learningrate → learning_rate)."""
    def words(x: str) -> list[str]:
        return [w for w in re.split(r"[_-]+", x.lower()) if w]

    wa, wb = words(a), words(b)
    if "".join(wa) == "".join(wb):
        return True
    edits = [op for op in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes() if op[0] != "equal"]
    if len(edits) != 1:
        return False
    tag, i1, i2, j1, j2 = edits[0]
    if tag != "replace":
        return (i2 - i1) + (j2 - j1) == 1
    if (i2 - i1, j2 - j1) != (1, 1):
        return False
    x, y = wa[i1], wb[j1]
    return x.startswith(y) or y.startswith(x) or difflib.SequenceMatcher(None, x, y).ratio() >= CLOSE_WORD


def _no_unknown_keys(yaml_values: dict[str, Any], known: dict[str, Any], source: str) -> None:
    """Raise one UserError naming every unknown key of ``yaml_values`` (each with its closest known key)."""
    unknown = [str(k) for k in yaml_values if k not in known]
    if not unknown:
        return
    named = []
    for key in unknown:
        close = close_name(key, known)
        named.append(f"'{key}'" + (f" (did you mean '{close}'?)" if close else ""))
    keys = "key " + named[0] if len(named) == 1 else f"keys {', '.join(named)}"
    raise UserError(f"{source}: unknown {keys}; see --help for the known keys, or delete "
                    f"{'it' if len(named) == 1 else 'them'}")


def build(cls: type, yaml_values: dict[str, Any] | None = None, flags: dict[str, Any] | None = None,
          source: str = "config") -> Any:
    """Build a config instance: defaults < ``yaml_values`` < env vars < ``flags``.

    Args:
        cls: the stage's config dataclass.
        yaml_values: keys from a YAML file (or a dict made in code); unknown keys are an error.
        flags: values given on the command line (``None`` means not given).
        source: name of the YAML file, used in error messages.

    Raises:
        UserError: unknown key, wrong type, a value its field's ``check`` rejects, or a required
            field left unset.
    """
    import os

    known = {f.name: f for f in _fields(cls)}
    _no_unknown_keys(yaml_values or {}, known, source)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # where each given value came from: the YAML file, an env variable, the flags
    for key, value in (yaml_values or {}).items():
        values[key], sources[key] = _convert(known[key], value, source), source
    for name, f in known.items():
        env = f.metadata.get("envvar")
        if env and os.environ.get(env) not in (None, ""):
            where = f"environment variable {env}"
            values[name], sources[name] = _convert(f, os.environ[env], where), where
    for key, value in (flags or {}).items():
        if value is None or value == ():
            continue
        values[key] = list(value) if isinstance(value, tuple) else value
        sources[key] = COMMAND_LINE
    for key, value in values.items():
        values[key] = _check(known[key], value, sources[key])
    missing = [n for n, f in known.items()
               if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{source}: missing required setting --{missing[0]}; give it as a flag or a YAML key")
    cfg = cls(**values)
    cfg.__dict__[_SOURCES] = (source, sources)
    return cfg


#: How an error names the command line as the source of a flag's value.
COMMAND_LINE = "command line"
_SOURCES = "_config_sources"


def source_of(cfg: Any, name: str) -> str | None:
    """Where ``cfg``'s setting ``name`` came from, as error lines name it: the YAML file, ``command line`` or
    ``environment variable X``; for a setting left at its default, the source the config was built from (the
    YAML file, else the command line). ``None`` for a config not made by :func:`build`."""
    default, sources = cfg.__dict__.get(_SOURCES, (None, {}))
    return sources.get(name, default)


def given(cfg: Any, name: str) -> bool:
    """Whether ``cfg``'s setting ``name`` was given (YAML, environment or flag) rather than left at its default."""
    return name in cfg.__dict__.get(_SOURCES, (None, {}))[1]


def with_source(e: UserError, cfg: Any) -> UserError:
    """``e`` with its source in front when its message is about one of ``cfg``'s flags (starts with
    ``--name``): the checks that run after :func:`build` (flags that depend on each other, on the data or on
    the hardware) then name the YAML file or ``command line`` as the checks of single values do."""
    m = re.match(r"--(\w+)", e.message)
    where = source_of(cfg, m.group(1)) if m and m.group(1) in {f.name for f in dataclasses.fields(cfg)} else None
    if where:
        e.message = f"{where}: {e.message}"
    return e


def to_dict(cfg: Any, *, hide_secrets: bool = True) -> dict[str, Any]:
    """Return the config as a plain dict (YAML-safe); secret fields become ``"***"`` when set."""
    out = {}
    for f in _fields(type(cfg)):
        v = getattr(cfg, f.name)
        if hide_secrets and f.metadata.get("secret") and v:
            v = "***"
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _shown_default(default: Any) -> str:
    """``--help``'s ``[default: ...]`` written as a user types it (a list comma-separated, a string bare);
    nothing for an unset, empty-string or empty-list default."""
    if default is None or default == "" or default == []:
        return ""
    text = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    return f" [default: {text}]"


def _as_flag(f: dataclasses.Field) -> str:
    """The click name of the flags that also give the positional field ``f`` (:func:`arg`'s ``flags``)."""
    return f"{f.name}_as_flag"


def _positional_or_flag(f: dataclasses.Field, positional: Any, flag: Any) -> Any:
    """The value of the positional field ``f`` given as itself or as one of its ``flags``.

    Raises:
        UserError: both given, with different values.
    """
    if positional not in (None, ()) and flag is not None and positional != flag:
        raise UserError(f"{COMMAND_LINE}: {f.name.upper()} {positional} and {f.metadata['flags'][0]} {flag} differ; "
                        f"give one of them")
    return flag if positional in (None, ()) else positional


def command(cls: type, run: Callable[[Any], Any], *, name: str, help: str,
            config_option: Literal["positional", "option", "none"] = "positional") -> click.Command:
    """Make a click command whose flags are the fields of ``cls``; it calls ``run(cfg)``.

    ``config_option`` picks how a YAML file is given: a positional ``CONFIG_FILE`` (``steam-train
    train config.yaml``), a ``--config FILE`` option, or not at all.
    """
    params: list[click.Parameter] = []
    for f in _fields(cls):
        ctype, is_list = _click_type(f, f.type)
        base, _ = _base_type(f.type)
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if default is None and f.metadata.get("unset"):
            help_text += f" Unset: {f.metadata['unset']}."
        if f.metadata.get("positional"):
            params.append(click.Argument([f.name], type=ctype, nargs=-1 if is_list else 1,
                                         required=False))
            if f.metadata.get("flags"):
                params.append(click.Option([*f.metadata["flags"], _as_flag(f)], type=ctype, default=None,
                                           help=f"Same as {f.name.upper()}: {help_text}"))
            continue
        shown = "" if f.metadata.get("secret") else _shown_default(default)
        if f.metadata.get("envvar"):
            shown += f" [env: {f.metadata['envvar']}]"
        kwargs: dict[str, Any] = dict(type=ctype, default=None, help=help_text + shown)
        if base is bool:
            # `--do_train` alone means True; `--fp16 True|False` also works (LLaMA-Factory style).
            kwargs.update(is_flag=False, flag_value="true")
        elif is_list:
            # Comma-separated or repeated: `--quantization q4_k_m,q8_0` or `--appid 1 --appid 2`.
            kwargs.update(multiple=True, type=click.STRING)
        params.append(click.Option([f"--{f.name}"], **kwargs))
    if config_option == "positional":
        params.insert(0, click.Argument(["config_file"], required=False, type=str))
    elif config_option == "option":
        params.append(click.Option(["--config", "config_file"], type=str, default=None,
                                   help="YAML file with the same keys as the flags; flags override it."))

    def callback(config_file: str | None = None, **flags: Any) -> Any:
        yaml_values = load_yaml(config_file) if config_file else {}
        for f in _fields(cls):
            if f.metadata.get("flags"):
                flags[f.name] = _positional_or_flag(f, flags.get(f.name), flags.pop(_as_flag(f)))
            v = flags.get(f.name)
            if v and _click_type(f, f.type)[1] and not f.metadata.get("positional"):
                # flatten "a,b" given on the command line, then type-check each item
                items = [x.strip() for item in v for x in str(item).split(",") if x.strip()]
                flags[f.name] = _convert(f, items, "command line")
        cfg = build(cls, yaml_values, flags, source=config_file or COMMAND_LINE)
        started()  # a signal from here on is the command's to handle
        try:
            return run(cfg)
        except UserError as e:
            raise with_source(e, cfg) from e.__cause__

    return click.Command(name=name, params=params, callback=callback, help=help)
