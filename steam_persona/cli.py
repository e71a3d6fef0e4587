"""The ``steam-train`` command: one sub-command per pipeline stage.

collect → prepare → (validate) → train → chat / eval → export → serve → plugin package; ``demo`` runs
them all on the embedded default. Sub-commands are imported lazily so that ``steam-train --help``
and light commands (collect, prepare, serve) do not pay for importing torch.
"""

from __future__ import annotations

import atexit
import importlib
import sys

import click

from steam_persona import __version__
from steam_persona.common import errors

# name -> (module, attribute, one-line help). Order = pipeline order in --help.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "collect": ("steam_persona.reviews.collect", "command", "Download Steam reviews (appreviews API) to JSON Lines."),
    "prepare": ("steam_persona.reviews.prepare", "command", "Clean raw reviews into an alpaca SFT dataset."),
    "validate": ("steam_persona.trainer.validate", "command", "Check a dataset: counts, token lengths, problems."),
    "train": ("steam_persona.trainer.train", "command", "QLoRA/LoRA SFT with LLaMA-Factory's flags."),
    "chat": ("steam_persona.chat", "command", "Chat in the terminal with a GGUF or base + adapter."),
    "eval": ("steam_persona.trainer.evaluate", "command", "Held-out loss and generation checks, tuned vs base."),
    "export": ("steam_persona.export.cli", "command", "Merge the adapter, convert to GGUF, quantize, verify."),
    "serve": ("steam_persona.serve.cli", "command", "Serve a GGUF as an OpenAI-compatible API for Dify."),
    "plugin": ("steam_persona.plugin.package", "group", "Build, sign and verify the two Dify plugins (.difypkg)."),
    "demo": ("steam_persona.demo", "command", "Run the whole pipeline on the embedded default."),
}


#: ``[errors.end_if_stopping]`` once :meth:`LazyGroup.__call__` has registered it (once, so that it stays first).
_ENDING: list = []


class OneLineUsageError(click.UsageError):
    """A usage error (unknown flag, a value of the wrong type) shown as one line naming the flag, the value and
    where the flags are listed: the form of every other user mistake (click's own shows three)."""

    def show(self, file=None) -> None:
        where = f" (flags: '{self.ctx.command_path} --help')" if self.ctx else ""
        click.echo(f"Error: {self.format_message()}{where}", file=file, err=True)


def _one_line(e: click.UsageError) -> click.UsageError:
    """``e`` as a :class:`OneLineUsageError`; a group run without a command keeps showing its help."""
    if isinstance(e, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return e
    if isinstance(e, click.NoSuchOption):  # click names any flag 0.6 alike (--deepspeed: "--seed?")
        from steam_persona.common import config

        close = config.close_name(e.option_name, e.possibilities or [])
        e = click.NoSuchOption(e.option_name, possibilities=[close] if close else None, ctx=e.ctx)
    return OneLineUsageError(e.format_message(), e.ctx)


def _stage(argv: list[str]) -> str:
    """What the command line runs, as a stop line names it: ``training``, ``steam-train prepare``."""
    name = next((a for a in argv if not a.startswith("-")), "")
    return "training" if name == "train" else f"steam-train {name}" if name in COMMANDS else "steam-train"


class LazyGroup(click.Group):
    """A click group that imports a sub-command's module only when it is run; a usage error, its own or a
    sub-command's, is a :class:`OneLineUsageError`."""

    def __call__(self, args: list[str] | None = None, **kwargs):
        """The process's entry (``steam-train``, ``python -m steam_persona``; ``CliRunner`` calls :meth:`main`).
        A signal before the command starts its work (its module imported, its flags read) says that nothing was
        written (:func:`~steam_persona.common.errors.until_started`); a process whose stage stopped on a signal
        ends at the end of its exit handlers (:func:`~steam_persona.common.errors.end_if_stopping`, registered
        first so that it runs last)."""
        errors.until_started(_stage(sys.argv[1:] if args is None else args))
        if not _ENDING:
            _ENDING.append(atexit.register(errors.end_if_stopping))
        return super().__call__(args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _one_line(e) from None

    def invoke(self, ctx: click.Context):
        errors.stopped_by(None)
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _one_line(e) from None
        except KeyboardInterrupt:
            # Ctrl-C or a stop signal: the stage has said where it stopped; exit 128 + the signal's number, the
            # shell's code for it (130 for Ctrl-C, 143 for SIGTERM), instead of click's "Aborted!" and exit 1.
            # Another signal while the process ends (its threads joined, its exit handlers run) quits at once,
            # with one line and no traceback.
            status = errors.stop_status()
            errors.stopping(status)
            raise click.exceptions.Exit(status) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        cmd = getattr(importlib.import_module(module), attr)
        cmd.name = name
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_, _, h) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="steam-train", message="%(prog)s %(version)s")
def main() -> None:
    """steam-train: Steam reviews → a witty veteran-gamer persona model → Dify.

    Run `steam-train COMMAND --help` for a stage's flags. Every stage also takes a YAML file with the
    same keys as its flags.
    """


if __name__ == "__main__":
    main()
