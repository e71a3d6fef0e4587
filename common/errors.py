"""The one user-error type of steam-persona.

Every stage raises :class:`UserError` for problems the user can fix (a missing file, a bad record,
an unknown flag value). The CLI edge turns it into exit code 2 and a single line on stderr, with no
traceback. Library code never calls ``sys.exit``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator, NoReturn

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


class Interrupts:
    """The stop signals received inside a :func:`stop_signals_interrupt` block. Each raises ``KeyboardInterrupt``
    where it lands, but Python drops an exception raised inside a finalizer (``__del__``: "Exception ignored in
    …"), and the stage would go on as if nothing had been sent; long work calls :meth:`check` at safe points
    (between steps) to stop there instead."""

    def __init__(self) -> None:
        self.received: int | None = None  # the last signal's number
        self.held = False  # inside held_until_done: the first signal waits for the block's end

    def handler(self, signum: int, frame: object) -> None:
        """The first stop signal raises ``KeyboardInterrupt`` (at the end of a :meth:`held_until_done` block when
        it lands inside one); another one while the stage stops quits at once."""
        if self.received is not None:
            quit_at_once(signum, frame)
        self.received = signum
        stopped_by(signum)
        if not self.held:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held_until_done(self) -> Iterator[None]:
        """A short piece of work (a checkpoint's write) that a first stop signal lets finish, then stops the stage
        at its end (``KeyboardInterrupt``); a second signal still quits at once."""
        self.held = True
        try:
            yield
        finally:
            self.held = False
        self.check()

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a signal came in the block (whether or not its own raise got through)."""
        if self.received is not None:
            raise KeyboardInterrupt


#: The signal that stopped the stage (the first one handled; :func:`stop_status`); empty before.
_stop_signal: list[int] = []


def stopped_by(signum: int | None) -> None:
    """Record the signal that stops the stage, unless one already did; ``None`` forgets it (a command begins)."""
    if signum is None:
        _stop_signal.clear()
    elif not _stop_signal:
        _stop_signal.append(signum)


def stop_status() -> int:
    """The exit status of a stage stopped by ``KeyboardInterrupt``: 128 + the number of the signal that stopped it
    (:func:`stopped_by`; 143 for SIGTERM, 129 for SIGHUP), as a shell reports a process that signal ended; 130 for
    Ctrl-C, also when Python's own handler raised it."""
    return 128 + (_stop_signal[0] if _stop_signal else signal.SIGINT)


def quit_at_once(signum: int, frame: object = None) -> NoReturn:
    """A signal handler for a stage that is already stopping (a second Ctrl-C): one line, then exit 128 + the
    signal's number at once, whatever runs (no clean-up, no traceback), as serve's second Ctrl-C. Atomic
    writes leave nothing half-written under a final name, and the rerun removes their temp files."""
    what = _what(signum)
    _flush_std()
    os.write(2, f"forced quit ({what} while stopping); rerun the same command to go on\n".encode())
    os._exit(128 + signum)


def _what(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 -- quitting whatever happens
            pass


#: The handlers that :func:`until_started` replaced, by signal; :func:`started` puts them back.
_before_start: dict[int, Any] = {}
#: True once :func:`until_started` ran: the process is a command, which ends when its stage stops on a signal.
_a_command: list[bool] = []


def until_started(stage: str) -> None:
    """Until :func:`started`, Ctrl-C or a stop signal (one not ignored) prints one line, ``stopped (Ctrl-C) before
    {stage} started; nothing was written``, and ends the process with 128 + the signal's number at once: the
    command has written nothing yet (Python's own ``KeyboardInterrupt`` there ended it without a word). In the
    main thread only."""
    _a_command[:] = [True]

    def handler(signum: int, frame: object) -> NoReturn:
        _flush_std()
        os.write(2, f"stopped ({_what(signum)}) before {stage} started; nothing was written\n".encode())
        os._exit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT,) + STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                _before_start[sig] = signal.signal(sig, handler)


def started() -> None:
    """The command's own work begins (it says where it stopped): the handlers before :func:`until_started` are
    back."""
    if threading.current_thread() is threading.main_thread():
        while _before_start:
            signal.signal(*_before_start.popitem())


#: The exit status of a process whose stage is stopping (:func:`stopping`); empty before.
_stopping_status: list[int] = []


def stopping(status: int) -> None:
    """The stage has stopped on a signal and the process ends with `status`: from now until it has ended, another
    Ctrl-C or stop signal (one not ignored) quits at once (:func:`quit_at_once`), its very end included
    (:func:`end_if_stopping`)."""
    _quit_on_another_signal()
    _stopping_status[:] = [status]


def _quit_on_another_signal() -> None:
    """From now on Ctrl-C or a stop signal (one not ignored) quits at once (:func:`quit_at_once`); only in the
    main thread (elsewhere Python refuses to set a handler)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT,) + STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, quit_at_once)


def end_if_stopping() -> None:
    """For ``atexit``, registered before any other exit handler so that it runs last: a process whose stage is
    stopping ends here, with its status, once its threads are joined and the other exit handlers have run. After
    them Python's own end gives every signal its default action back while it frees the modules (seconds with
    torch), so a Ctrl-C there killed the process without a line."""
    if _stopping_status:
        _flush_std()
        os._exit(_stopping_status[0])


def while_loading(before: str) -> str:
    """A stop line's when for a stop before a stage's work began: ``while loading, before the first step``."""
    return f"while loading, before {before}"


def nothing_written(out: object | None) -> str:
    """A stop line's how for a stage that has written nothing yet (to ``out``, where it writes)."""
    return f"nothing was written{'' if out is None else f' to {out}'}; rerun the same command to start"


def interrupted_before_writing(when: str, out: object | None) -> str:
    """The stop line of a stage stopped ``when`` (:func:`while_loading`) that has written nothing to ``out``."""
    return f"interrupted {when}: {nothing_written(out)}"


@contextlib.contextmanager
def said_if_stopped_before_writing(out: object | None, when: Callable[[], str], say: bool = True) -> Iterator[None]:
    """The block writes nothing (it loads, reads, computes): Ctrl-C or a stop signal in it prints one line,
    ``interrupted {when()}: nothing was written to {out}; rerun the same command to start`` (unless ``say`` is
    False: a caller prints its own), and ends the stage as Ctrl-C does (:func:`stop_signals_interrupt`)."""
    try:
        with stop_signals_interrupt(STOP_SIGNALS + (signal.SIGINT,)):
            yield
    except KeyboardInterrupt:
        from steam_persona.common.console import console

        if say:
            console.print(interrupted_before_writing(when(), out), markup=False, soft_wrap=True)
        raise


@contextlib.contextmanager
def stop_signals_interrupt(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[Interrupts]:
    """Inside the block a signal of `signals` (default :data:`STOP_SIGNALS`) raises ``KeyboardInterrupt``, so the
    stage ends as on Ctrl-C (its own message, exit 128 + the signal's number: :func:`stop_status`) instead of dying
    without a word; the handlers before it come back after, unless the block ends by the interrupt in a command's
    process (:func:`until_started`): then its stage is stopping, and from there another Ctrl-C or stop signal quits
    at once (:func:`quit_at_once`, as :func:`stopping`); a signal ignored when the block starts (``nohup``'s SIGHUP,
    SIGINT in a script's background job) stays ignored. Yields the block's :class:`Interrupts`. An error raised in
    the block after a signal came is raised as ``KeyboardInterrupt``: a library may turn the interrupt into its own
    error (transformers' lazy import, interrupted, raises ``ModuleNotFoundError``). Only in the main thread (Python
    delivers signals there); elsewhere the handlers are left alone."""
    interrupts = Interrupts()
    # a signal ignored when the block starts stays ignored: nohup (SIGHUP), a script's background job (SIGINT)
    old = {sig: signal.signal(sig, interrupts.handler) for sig in signals
           if signal.getsignal(sig) is not signal.SIG_IGN} \
        if threading.current_thread() is threading.main_thread() else {}
    hook = sys.unraisablehook

    def quiet(unraisable: Any) -> None:  # a dropped stop: Interrupts.check ends the stage, no traceback
        if not (unraisable.exc_type is KeyboardInterrupt and interrupts.received is not None):
            hook(unraisable)

    sys.unraisablehook = quiet
    try:
        yield interrupts
    except KeyboardInterrupt:
        if _a_command:
            _quit_on_another_signal()
        raise
    except Exception:
        if interrupts.received is None:
            raise
        if _a_command:
            _quit_on_another_signal()
        raise KeyboardInterrupt from None
    finally:
        sys.unraisablehook = hook
        for sig, handler in old.items():
            if signal.getsignal(sig) == interrupts.handler:  # not a stopping stage's quit_at_once
                signal.signal(sig, handler)
