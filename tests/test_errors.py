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
