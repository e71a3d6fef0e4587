"""The one user-error type of steam-persona.

Every stage raises :class:`UserError` for problems the user can fix (a missing file, a bad record,
an unknown flag value). The CLI edge turns it into exit code 2 and a single line on stderr, with no
traceback. Library code never calls ``sys.exit``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import click


class UserError(click.ClickException):
    """A problem with the user's input or environment that the user can fix.

    The message must be one line naming the file (and record, when there is one) and the fix,
    e.g. ``"data/x.json: record 12: 'output' is empty; fill it or drop the record"``.

    Raised anywhere below the CLI; click prints ``Error: <message>`` and exits with code 2.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")))


#: Signals that end a stage as Ctrl-C does: SIGTERM (``timeout``, ``docker stop``, systemd) and
#: SIGHUP (the terminal closed, an ssh session dropped).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Inside the block a :data:`STOP_SIGNALS` signal raises ``KeyboardInterrupt``, so the stage ends as on Ctrl-C
    (its own message, exit 130) instead of dying without a word; the handlers before it come back after. Only in
    the main thread (Python delivers signals there); elsewhere a no-op."""
    old = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
