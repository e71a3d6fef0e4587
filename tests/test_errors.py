"""common.errors: the stop signals a stage turns into KeyboardInterrupt."""

from __future__ import annotations


def test_a_signal_ignored_before_a_stage_stays_ignored_in_it():
    """Trial 27: train's stop handlers replaced nohup's ignored SIGHUP and a background job's ignored SIGINT, so
    a nohup'd run died when its terminal closed and a script's `train &` stopped on a Ctrl-C meant for the shell."""
    import signal

    from steam_persona.common.errors import stop_signals_interrupt

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_an_error_a_library_makes_of_the_interrupt_is_the_interrupt():
    """A SIGTERM in train's first second landed in transformers' lazy import, which raised ModuleNotFoundError
    ("Could not import module 'LlamaConfig'"): a traceback and exit 1 instead of the interrupt line and 130."""
    import os
    import signal
    import time

    import pytest

    from steam_persona.common.errors import stop_signals_interrupt

    with pytest.raises(KeyboardInterrupt):
        with stop_signals_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler's KeyboardInterrupt ends it at once
            except KeyboardInterrupt as e:
                raise ModuleNotFoundError("Could not import module 'LlamaConfig'") from e
    with pytest.raises(ModuleNotFoundError):  # without a signal an error stays itself
        with stop_signals_interrupt():
            raise ModuleNotFoundError("x")


def test_a_stage_stopped_by_the_interrupt_quits_on_another_signal_once_its_block_ends(monkeypatch):
    """CI, 2026-12-07: a Ctrl-C between the end of train's stop block and the CLI's own stop handling raised a
    second KeyboardInterrupt there: click's "Aborted!", then Python's teardown killed the process by SIGINT (-2)
    without a line. A block that ends by the interrupt leaves quit_at_once in place; one that ends otherwise gives
    the handlers before it back, an inner block's included. Outside a command's process (a stage called as a
    function) the handlers before it always come back."""
    import signal

    import pytest

    from steam_persona.common import errors

    monkeypatch.setattr(errors, "_a_command", [])
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT,) + errors.STOP_SIGNALS}
    with pytest.raises(KeyboardInterrupt):
        with errors.stop_signals_interrupt((signal.SIGINT,) + errors.STOP_SIGNALS):
            raise KeyboardInterrupt
    assert {sig: signal.getsignal(sig) for sig in before} == before
    monkeypatch.setattr(errors, "_a_command", [True])
    with errors.stop_signals_interrupt((signal.SIGINT,) + errors.STOP_SIGNALS) as outer:
        with errors.stop_signals_interrupt():
            pass
        assert signal.getsignal(signal.SIGTERM) == outer.handler
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with pytest.raises(ValueError):
        with errors.stop_signals_interrupt():
            raise ValueError("not a stop")
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with pytest.raises(KeyboardInterrupt):
        with errors.stop_signals_interrupt((signal.SIGINT,) + errors.STOP_SIGNALS):
            with errors.stop_signals_interrupt():
                raise KeyboardInterrupt
    assert {sig: signal.getsignal(sig) for sig in before} == dict.fromkeys(before, errors.quit_at_once)
