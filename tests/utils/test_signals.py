"""The stop flag: SIGTERM, SIGINT and SIGUSR2 are trapped; an interruption by USR2 hands the
signal on to the handler the run displaced (submitit's requeue handler), TERM does not."""

from __future__ import annotations

import os
import signal

import pytest

from sdclr.utils.signals import Interrupted, StopSignal, requeue_signals


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_a_signal_becomes_the_flag(sig, restore_handlers):
    with StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signum == sig
    assert signal.getsignal(sig) is not stop._handle  # put back


def test_usr2_is_passed_on_to_the_displaced_handler_after_the_checkpoint(restore_handlers):
    calls = []
    signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))  # "submitit"
    with pytest.raises(Interrupted) as caught:
        with StopSignal() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert calls == []  # trapped: the run writes its checkpoint first
            raise Interrupted("stopped", stop.signum)
    caught.value.pass_on()
    assert calls == [signal.SIGUSR2]


def test_term_is_not_passed_on_and_usr2_without_a_python_handler_does_nothing(restore_handlers):
    signal.signal(signal.SIGTERM, lambda signum, frame: pytest.fail("TERM passed on"))
    with pytest.raises(Interrupted) as caught:
        with StopSignal():
            raise Interrupted("stopped", signal.SIGTERM)
    caught.value.pass_on()
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    with pytest.raises(Interrupted) as caught:
        with StopSignal():
            raise Interrupted("stopped", signal.SIGUSR2)
    caught.value.pass_on()  # the default action (terminate) is not taken: nothing happens


def test_submitits_preempt_signal_setting_is_trapped_too(monkeypatch, restore_handlers):
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert requeue_signals() == (signal.SIGUSR2, signal.SIGUSR1)
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signum == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "KILL")
    assert requeue_signals() == (signal.SIGUSR2,)
