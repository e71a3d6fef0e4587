"""Ctrl-C around llama.cpp calls: held while the native call runs, raised as soon as it returns.

llama.cpp calls back into Python while it loads, quantizes or frees a model (llama-cpp-python's
log callback, one call per log line, made even when nothing is printed). CPython runs a Python
signal handler at the next bytecode, which is then inside that ctypes callback; the
``KeyboardInterrupt`` it raises cannot cross the C frames, so ctypes prints it as "Exception ignored
on calling ctypes callback function" (invisible while llama-cpp-python silences stderr) and drops
it, and the load carries on as if the user had never pressed Ctrl-C. :func:`held_interrupt` keeps
the signal out of those callbacks and delivers it once the call is back in Python.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def held_interrupt() -> Iterator[None]:
    """Run the block with SIGINT recorded instead of handled; on leaving it, deliver a recorded one.

    The handler in place before the block gets the signal (``signal.raise_signal``), so Python's
    default raises ``KeyboardInterrupt`` there; a caller's own handler, or ``SIG_IGN``, keeps its
    meaning. Outside the main thread (where Python handles no signals), or under a handler that was
    not set from Python (``signal.getsignal`` gives ``None``: it could not be put back), the block runs
    unchanged.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            signal.raise_signal(signal.SIGINT)
